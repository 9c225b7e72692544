//! The gauges of what is waiting: messages in fulfill's queues (dead letters among them),
//! sessions needing attention, when reconciliation last went through, and whether
//! PostgreSQL answers. They are read
//! from RabbitMQ and PostgreSQL every [`EVERY`], so every replica reports the same fleet-wide
//! values (alert on `max`, not `sum`).
//!
//! Queue depths come from a passive `queue.declare`, which answers with the ready-message
//! count without creating anything; this task keeps its own connection, so the consumer's
//! channels never see its errors. <https://www.rabbitmq.com/amqp-0-9-1-reference#queue.declare>

use std::{sync::Arc, time::Duration};

use lapin::{Channel, Connection, options::QueueDeclareOptions, types::FieldTable};
use shared::{config::AmqpConfig, topology::Topology};
use tokio_util::sync::CancellationToken;

use crate::{
    db::{Pool, cursors, sessions},
    metrics::{Metrics, QueueLabels},
};

/// How often the gauges are refreshed: about one scrape interval.
pub const EVERY: Duration = Duration::from_secs(15);

/// Refreshes the gauges until `stop` is cancelled. Failures leave the last values in
/// place (and are logged at debug: `/readyz` already says when a dependency is down).
pub async fn run(amqp: AmqpConfig, pool: Pool, metrics: Arc<Metrics>, stop: CancellationToken) {
    let topology = Topology::new(amqp.topology_prefix.clone());
    let mut broker: Option<(Connection, Channel)> = None;
    loop {
        refresh_database(&pool, &metrics).await;
        broker = refresh_broker(&amqp, &topology, broker, &metrics).await;
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
    if let Some((connection, _)) = broker {
        let _ = connection.close(200, "bye".into()).await;
    }
}

async fn refresh_database(pool: &Pool, metrics: &Metrics) {
    let Ok(mut conn) = pool.get().await else {
        metrics.database_up.set(0);
        return;
    };
    // The pool tests each connection on checkout.
    metrics.database_up.set(1);
    // The same sessions as GET /attention.
    match sessions::count_needing_attention(&mut conn).await {
        Ok(n) => {
            metrics.sessions_needing_attention.set(n);
        }
        Err(e) => tracing::debug!(error = %e, "cannot count the sessions needing attention"),
    }
    // The reconcile cursor moves only when a run went through without errors.
    match cursors::last_advanced(&mut conn).await {
        Ok(at) => {
            metrics.reconcile_last_success.set(at);
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the reconcile cursor"),
    }
}

async fn refresh_broker(
    amqp: &AmqpConfig,
    topology: &Topology,
    broker: Option<(Connection, Channel)>,
    metrics: &Metrics,
) -> Option<(Connection, Channel)> {
    let (connection, channel) = match broker {
        Some((connection, channel)) if channel.status().connected() => (connection, channel),
        // The broker closes a channel on a passive declare of a missing queue.
        Some((connection, _)) if connection.status().connected() => {
            let channel = connection.create_channel().await.ok()?;
            (connection, channel)
        }
        _ => {
            let connection = shared::amqp::connect(amqp, "fulfill-gauges").await.ok()?;
            let channel = connection.create_channel().await.ok()?;
            (connection, channel)
        }
    };
    let queues = [
        ("fulfill.checkout", topology.checkout_queue()),
        ("fulfill.retry", topology.retry_queue()),
        ("fulfill.dead", topology.dead_letter_queue()),
    ];
    for (label, name) in queues {
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(queue) => {
                let count = i64::from(queue.message_count());
                metrics
                    .queue_messages
                    .get_or_create(&QueueLabels { queue: label })
                    .set(count);
                if label == "fulfill.dead" {
                    metrics.dead_letters_queued.set(count);
                }
            }
            Err(e) => {
                // Not declared yet (the consumer has not connected): the channel is closed
                // by the broker; a new one is opened next time.
                tracing::debug!(queue = %name, error = %e, "cannot read the queue depth");
                return Some((connection, channel));
            }
        }
    }
    Some((connection, channel))
}
