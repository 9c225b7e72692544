//! The receive loop: connect, declare the topology, consume the checkout queue with a
//! bounded prefetch, run each delivery as its own task (at most `concurrency` at once),
//! and reconnect with backoff when the broker goes away.
//!
//! Shutdown: stop consuming (basic.cancel) → wait for in-flight deliveries to be acked
//! (a `TaskTracker`) → close the connection. Deliveries prefetched but not started are
//! returned to the queue by the broker when the channel closes.

mod delivery;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, ConfirmSelectOptions,
    },
    types::{FieldTable, ShortString},
};
use shared::{amqp, config::AmqpConfig, topology::Topology};
use tokio::{sync::Semaphore, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::ConsumerConfig,
    domain::ack_window::{AckAction, AckWindow},
    fulfillment::Fulfiller,
    metrics::Metrics,
    services::Services,
    stripe::{KeyHealth, StripeClient},
};

const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Longest wait between two probes of a rejected Stripe key.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(60);

/// The shared context of every delivery task.
pub(crate) struct Context {
    pub fulfiller: Arc<Fulfiller>,
    pub metrics: Arc<Metrics>,
    pub topology: Topology,
    pub config: ConsumerConfig,
    pub key: Arc<KeyHealth>,
    pub stripe: StripeClient,
}

/// The confirm channel retry and dead-letter copies go through, and the signal that it
/// can no longer be trusted: a copy the broker refused or never confirmed ends consuming
/// on this connection, and the supervisor opens fresh channels (from the node list
/// again). On RabbitMQ 3.10 a channel that first publishes to a quorum queue just after
/// its leader died keeps asking the dead node, refused on every publish, until that node
/// is back; only a new channel reads the queue's new leader.
pub(crate) struct Publish {
    channel: Channel,
    retired: CancellationToken,
}

impl Publish {
    fn new(channel: Channel) -> Self {
        Self {
            channel,
            retired: CancellationToken::new(),
        }
    }

    /// Ends consuming on this connection (see the type's doc).
    pub(crate) fn retire(&self) {
        self.retired.cancel();
    }
}

/// The acks of the consume channel, batched by an [`AckWindow`]: a done delivery behind
/// an unfinished one is held (a few at most) and goes out with it as one `multiple` ack.
/// Each ack still follows its delivery's commit (or confirmed copy). Acks are sent under
/// the window's lock, so they leave in the order the window decided them.
pub(crate) struct Acks {
    channel: Channel,
    window: tokio::sync::Mutex<AckWindow>,
}

impl Acks {
    fn new(channel: Channel, prefetch: u16) -> Self {
        Self {
            channel,
            // A quarter of the prefetch window at most waits behind a slow delivery.
            window: tokio::sync::Mutex::new(AckWindow::new(usize::from(prefetch / 4))),
        }
    }

    async fn delivered(&self, tag: u64) {
        self.window.lock().await.delivered(tag);
    }

    /// The delivery is done: ack it (now, or with the ones it is held behind).
    pub(crate) async fn ack(&self, tag: u64) -> Result<(), lapin::Error> {
        let mut window = self.window.lock().await;
        let action = window.done(tag);
        self.send(action).await
    }

    /// Requeues the delivery (on its own), then acks what it held back.
    pub(crate) async fn requeue(
        &self,
        delivery: &lapin::message::Delivery,
    ) -> Result<(), lapin::Error> {
        let mut window = self.window.lock().await;
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await?;
        let action = window.settled_elsewhere(delivery.delivery_tag);
        self.send(action).await
    }

    async fn send(&self, action: AckAction) -> Result<(), lapin::Error> {
        let (tag, multiple) = match action {
            AckAction::None => return Ok(()),
            AckAction::Single(tag) => (tag, false),
            AckAction::Multiple(tag) => (tag, true),
        };
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await
    }
}

/// Why consuming ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// On purpose (shutdown).
    Stopped,
    /// The broker connection or channel went away.
    Lost,
    /// Stripe rejects the key: stop until a probe says it is accepted again.
    KeyRejected,
}

pub struct Consumer {
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Consumer {
    pub fn start(amqp_config: AmqpConfig, config: ConsumerConfig, services: &Services) -> Self {
        let connected = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let context = Arc::new(Context {
            fulfiller: Arc::clone(&services.fulfiller),
            metrics: Arc::clone(&services.metrics),
            topology: Topology::new(amqp_config.topology_prefix.clone()),
            config,
            key: Arc::clone(&services.key),
            stripe: services.stripe.clone(),
        });
        let task = tokio::spawn(supervise(
            amqp_config,
            context,
            Arc::clone(&connected),
            stop.clone(),
        ));
        Self {
            connected,
            stop,
            task,
        }
    }

    /// True while consuming.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// A flag that reads true while consuming, for readiness checks.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.connected)
    }

    /// Stops consuming, waits for in-flight deliveries, closes the connection.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn supervise(
    amqp_config: AmqpConfig,
    context: Arc<Context>,
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut attempt: u32 = 0;
    while !stop.is_cancelled() {
        if context.key.is_rejected() && !wait_for_key(&context, &stop).await {
            return;
        }
        match open(&amqp_config, &context).await {
            Ok((connection, consume, publish)) => {
                attempt = 0;
                connected.store(true, Ordering::SeqCst);
                context.metrics.broker_connected.set(1);
                tracing::info!(queue = %context.topology.checkout_queue(), "consuming");
                let publish = Arc::new(Publish::new(publish));
                let ended =
                    consume_until_lost(&context, &consume, Arc::clone(&publish), &stop).await;
                connected.store(false, Ordering::SeqCst);
                context.metrics.broker_connected.set(0);
                for channel in [&consume, &publish.channel] {
                    if channel.status().connected() {
                        let _ = channel.close(200, ShortString::from("bye")).await;
                    }
                }
                if connection.status().connected() {
                    let _ = connection.close(200, ShortString::from("bye")).await;
                }
                match ended {
                    Ended::Stopped => {
                        tracing::info!("consumer stopped");
                        return;
                    }
                    Ended::KeyRejected => {
                        // The channel is closed: unacked deliveries are back in the queue.
                        tracing::warn!("stopped consuming: Stripe rejects the API key");
                        continue;
                    }
                    Ended::Lost => tracing::warn!("lost the broker connection; reconnecting"),
                }
            }
            Err(e) => tracing::warn!(error = %e, attempt, "cannot connect to the broker"),
        }
        let delay = amqp::backoff(attempt, MAX_RECONNECT_DELAY);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Probes Stripe with backoff (at most [`MAX_PROBE_DELAY`] apart) until it accepts the
/// key again. False when stopped meanwhile.
async fn wait_for_key(context: &Context, stop: &CancellationToken) -> bool {
    context.metrics.stripe_key_rejected.set(1);
    let mut attempt: u32 = 0;
    loop {
        let delay = amqp::backoff_from(Duration::from_secs(1), attempt, MAX_PROBE_DELAY);
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        if context.stripe.probe_key().await {
            context.metrics.stripe_key_rejected.set(0);
            tracing::info!("Stripe accepts the API key again; consuming");
            return true;
        }
        attempt = attempt.saturating_add(1);
        tracing::warn!(attempt, "Stripe still rejects the API key");
    }
}

fn retired() -> Ended {
    tracing::warn!("a copy was not confirmed; opening fresh channels");
    Ended::Lost
}

async fn open(
    amqp_config: &AmqpConfig,
    context: &Context,
) -> Result<(Connection, Channel, Channel), lapin::Error> {
    let connection = amqp::connect(amqp_config, "fulfill").await?;
    let consume = connection.create_channel().await?;
    context.topology.declare(&consume).await?;
    // Prefetch bounds unacked deliveries per consumer; concurrency bounds the work.
    // <https://www.rabbitmq.com/docs/consumer-prefetch>
    consume
        .basic_qos(context.config.prefetch, BasicQosOptions::default())
        .await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, consume, publish))
}

async fn consume_until_lost(
    context: &Arc<Context>,
    consume: &Channel,
    publish: Arc<Publish>,
    stop: &CancellationToken,
) -> Ended {
    let tag = format!(
        "fulfill-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut deliveries = match consume
        .basic_consume(
            ShortString::from(context.topology.checkout_queue()),
            ShortString::from(tag.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(consumer) => consumer,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start consuming");
            return Ended::Lost;
        }
    };
    let mut key = context.key.watch();
    let acks = Arc::new(Acks::new(consume.clone(), context.config.prefetch));
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(context.config.concurrency));
    let ended = loop {
        if *key.borrow_and_update() {
            break Ended::KeyRejected;
        }
        let permit = tokio::select! {
            () = stop.cancelled() => break Ended::Stopped,
            () = publish.retired.cancelled() => break retired(),
            _ = key.changed() => continue,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Ended::Stopped,
            },
        };
        let next = tokio::select! {
            () = stop.cancelled() => break Ended::Stopped,
            () = publish.retired.cancelled() => break retired(),
            _ = key.changed() => continue,
            next = deliveries.next() => next,
        };
        match next {
            Some(Ok(d)) => {
                acks.delivered(d.delivery_tag).await;
                let context = Arc::clone(context);
                let publish = Arc::clone(&publish);
                let acks = Arc::clone(&acks);
                // Boxed here: the delivery's future is large, and the spawn would
                // otherwise copy it through each layer (tracker, runtime, task cell).
                tracker.spawn(Box::pin(async move {
                    delivery::process(&context, &publish, &acks, d).await;
                    drop(permit);
                }));
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "delivery stream failed");
                break Ended::Lost;
            }
            None => break Ended::Lost,
        }
    };
    if ended != Ended::Lost {
        let _ = consume
            .basic_cancel(
                ShortString::from(tag.as_str()),
                BasicCancelOptions::default(),
            )
            .await;
    }
    tracker.close();
    tracker.wait().await;
    ended
}
