//! `devstack events [pattern]`: tails the credit events fulfill announces, as a website
//! would receive them — a queue of its own bound to the `credits.events` topic exchange
//! (here exclusive and server-named, so it disappears when this command stops).

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use shared::topology::Topology;

use crate::stack::Settings;

pub async fn tail(settings: &Settings, pattern: &str) -> anyhow::Result<()> {
    let prefix = std::env::var("AMQP_TOPOLOGY_PREFIX").unwrap_or_default();
    let topology = Topology::new(prefix);
    let connection = Connection::connect(&settings.amqp_url, ConnectionProperties::default())
        .await
        .context("cannot reach RabbitMQ (AMQP_URL)")?;
    let channel = connection.create_channel().await?;
    // Idempotent: the same declaration fulfill makes, so tailing works before it starts.
    topology.declare(&channel).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let exchange = topology.credit_events_exchange();
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!("tailing {exchange} ({pattern}); Ctrl-C to stop");
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "devstack-events".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = consumer.next() => {
                let Some(delivery) = next else { break };
                let delivery = delivery?;
                println!(
                    "{}\t{}",
                    delivery.routing_key,
                    String::from_utf8_lossy(&delivery.data)
                );
                delivery.ack(BasicAckOptions::default()).await?;
            }
        }
    }
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}
