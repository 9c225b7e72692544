//! The dead-letter queue, for operators: list, show, replay, purge.
//!
//! Reading is non-destructive: messages are fetched without acknowledgement and go back
//! to the queue when the channel closes; only replayed (after the broker confirmed the
//! copy in the checkout queue) and purged messages are acknowledged.

use lapin::{
    BasicProperties, Channel, Connection,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::Serialize;
use shared::{
    amqp::{self, header_int, header_str, headers},
    config::AmqpConfig,
    topology::Topology,
};

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The event id (`message_id`), or `body-<hash>` for messages without one.
    pub id: String,
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub attempts: Option<i64>,
    pub routing_key: Option<String>,
    pub dead_at: Option<i64>,
    pub body: String,
}

pub struct DeadLetters {
    connection: Connection,
    channel: Channel,
    topology: Topology,
    messages: Vec<BasicGetMessage>,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker error")]
    Broker(#[from] lapin::Error),
    #[error("no dead letter with id {0:?}")]
    NotFound(String),
    #[error("the broker did not confirm the replayed copy of {0}")]
    NotConfirmed(String),
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn describe(m: &BasicGetMessage) -> DeadLetter {
    let props = &m.delivery.properties;
    let h = props.headers().as_ref();
    DeadLetter {
        id: props.message_id().as_ref().map_or_else(
            || format!("body-{:016x}", fnv1a(&m.delivery.data)),
            |id| id.to_string(),
        ),
        kind: header_str(h, headers::DEAD_KIND).map(str::to_owned),
        reason: header_str(h, headers::DEAD_REASON)
            .map(str::to_owned)
            .or_else(|| header_str(h, "x-first-death-reason").map(|r| format!("broker: {r}"))),
        attempts: header_int(h, headers::ATTEMPTS),
        routing_key: header_str(h, headers::ORIGINAL_ROUTING_KEY).map(str::to_owned),
        dead_at: header_int(h, headers::DEAD_AT),
        body: String::from_utf8_lossy(&m.delivery.data).into_owned(),
    }
}

impl DeadLetters {
    /// Connects and takes every dead letter (unacknowledged) for inspection.
    pub async fn open(config: &AmqpConfig) -> Result<Self, DlqError> {
        let connection = amqp::connect(config, "fulfill-dlq").await?;
        let channel = connection.create_channel().await?;
        let topology = Topology::new(config.topology_prefix.clone());
        topology.declare(&channel).await?;
        let mut messages = Vec::new();
        while let Some(m) = channel
            .basic_get(
                ShortString::from(topology.dead_letter_queue()),
                BasicGetOptions::default(),
            )
            .await?
        {
            messages.push(m);
        }
        Ok(Self {
            connection,
            channel,
            topology,
            messages,
        })
    }

    pub fn list(&self) -> Vec<DeadLetter> {
        self.messages.iter().map(describe).collect()
    }

    /// Puts matching messages (all when `id` is `None`) back into the checkout queue with a
    /// fresh attempt count; returns their ids.
    pub async fn replay(&mut self, id: Option<&str>) -> Result<Vec<String>, DlqError> {
        let publish = self.connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut replayed = Vec::new();
        for m in &self.messages {
            let letter = describe(m);
            if id.is_some_and(|wanted| wanted != letter.id) {
                continue;
            }
            let props = fresh_properties(&m.delivery.properties);
            let confirm = publish
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(self.topology.checkout_queue()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.delivery.data,
                    props,
                )
                .await?
                .await?;
            if !matches!(confirm, lapin::Confirmation::Ack(None)) {
                return Err(DlqError::NotConfirmed(letter.id));
            }
            m.delivery.acker.ack(BasicAckOptions::default()).await?;
            replayed.push(letter.id);
        }
        if let (Some(wanted), true) = (id, replayed.is_empty()) {
            return Err(DlqError::NotFound(wanted.to_owned()));
        }
        Ok(replayed)
    }

    /// Drops every dead letter, logging each; returns what was dropped.
    pub async fn purge(&mut self) -> Result<Vec<DeadLetter>, DlqError> {
        let mut dropped = Vec::new();
        for m in &self.messages {
            let letter = describe(m);
            tracing::warn!(id = %letter.id, kind = ?letter.kind, reason = ?letter.reason, "purging dead letter");
            m.delivery.acker.ack(BasicAckOptions::default()).await?;
            dropped.push(letter);
        }
        Ok(dropped)
    }

    /// Returns what was not acknowledged to the queue.
    pub async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("done")).await;
        let _ = self.connection.close(200, ShortString::from("done")).await;
    }
}

/// The original properties without the dead-letter headers, attempts back to zero.
fn fresh_properties(original: &BasicProperties) -> BasicProperties {
    let mut kept = FieldTable::default();
    if let Some(h) = original.headers() {
        for (k, v) in h.inner() {
            let name = k.as_str();
            if !(name.starts_with("x-fulfill-")
                || name.starts_with("x-death")
                || name.starts_with("x-first-death")
                || name.starts_with("x-last-death"))
            {
                kept.insert(k.clone(), v.clone());
            }
        }
    }
    kept.insert(
        ShortString::from(headers::ATTEMPTS),
        AMQPValue::LongLongInt(0),
    );
    original.clone().with_headers(kept).with_delivery_mode(2)
}
