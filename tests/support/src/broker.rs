//! A private corner of the real RabbitMQ: a random topology prefix, helpers to read what
//! landed in a queue, and removal of every queue and exchange on `Drop`.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::BasicGetMessage,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        ExchangeDeleteOptions, QueueDeleteOptions,
    },
    types::ShortString,
};
use secrecy::SecretString;
use shared::{config::AmqpConfig, topology::Topology};

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| shared::config::DEFAULT_AMQP_URL.to_owned())
}

pub struct TestBroker {
    pub prefix: String,
    pub topology: Topology,
    pub url: String,
    connection: Connection,
    channel: Channel,
}

/// A message read back from a queue.
#[derive(Debug)]
pub struct Received {
    pub routing_key: String,
    pub exchange: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl TestBroker {
    /// A fresh prefix with the shared topology declared under it.
    pub async fn new() -> Self {
        let prefix = crate::unique_name("t") + ".";
        let url = amqp_url();
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running for the tests (see README)");
        let channel = connection.create_channel().await.expect("channel");
        let topology = Topology::new(prefix.clone());
        topology.declare(&channel).await.expect("declare topology");
        Self {
            prefix,
            topology,
            url,
            connection,
            channel,
        }
    }

    /// Config for a service under test, pointed at this broker slice.
    pub fn amqp_config(&self) -> AmqpConfig {
        AmqpConfig {
            url: SecretString::from(self.url.clone()),
            topology_prefix: self.prefix.clone(),
        }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Takes (and acks) one message from `queue`, waiting up to `timeout` for it.
    pub async fn take(&self, queue: &str, timeout: Duration) -> Option<Received> {
        crate::wait_for(timeout, || async {
            self.get(queue).await.map(|m| {
                let d = m.delivery;
                Received {
                    routing_key: d.routing_key.to_string(),
                    exchange: d.exchange.to_string(),
                    body: d.data,
                    properties: d.properties,
                }
            })
        })
        .await
    }

    async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        let message = self
            .channel
            .basic_get(ShortString::from(queue), BasicGetOptions::default())
            .await
            .expect("basic.get")?;
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        Some(message)
    }

    /// Takes every message `queue` holds now (none arriving within `settle` ends it).
    pub async fn drain(&self, queue: &str, settle: Duration) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(m) = self.take(queue, settle).await {
            out.push(m);
        }
        out
    }

    /// Publishes raw bytes to the events exchange as ingest would (persistent, confirmed).
    pub async fn publish_event(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        self.publish(
            &self.topology.events_exchange(),
            routing_key,
            body,
            properties,
        )
        .await;
    }

    /// Publishes straight into `queue` through the default exchange (persistent, confirmed).
    pub async fn publish_to_queue(&self, queue: &str, body: &[u8]) {
        self.publish("", queue, body, BasicProperties::default())
            .await;
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions::default(),
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker did not ack the test publish");
        let _ = channel.close(200, ShortString::from("done")).await;
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let url = self.url.clone();
        crate::block_on_side(async move {
            let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
                return;
            };
            // Twice: a service under test that was still shutting down may have
            // re-declared its topology in between.
            for round in 0..2 {
                if round > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                let Ok(channel) = conn.create_channel().await else {
                    return;
                };
                for queue in topology.queues() {
                    let _ = channel
                        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in topology.exchanges() {
                    let _ = channel
                        .exchange_delete(
                            ShortString::from(exchange),
                            ExchangeDeleteOptions::default(),
                        )
                        .await;
                }
                let _ = channel.close(200, ShortString::from("cleanup")).await;
            }
            let _ = conn.close(200, ShortString::from("cleanup")).await;
        });
    }
}
