//! The dead-letter queue, for operators: list, show, replay, purge.
//!
//! Reading is non-destructive and does not erode: messages are fetched without
//! acknowledgement, and those neither replayed nor purged are put back by publishing a copy
//! to the dead-letter queue (confirmed) and acknowledging the one read. Closing the channel
//! over unacknowledged messages would return them instead, and every return counts as a
//! delivery: past the queue's delivery limit (20 by default on RabbitMQ 4.x) the broker
//! drops them. A replayed message is acknowledged only after the broker confirmed its copy
//! in the checkout queue.

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
    /// Per message: acknowledged already (replayed or purged).
    settled: Vec<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker error")]
    Broker(#[from] lapin::Error),
    #[error("no dead letter with id {0:?}")]
    NotFound(String),
    #[error("the broker did not confirm the replayed copy of {0}")]
    NotConfirmed(String),
    #[error("the broker did not confirm the copy of {0} put back in the dead-letter queue")]
    NotRestored(String),
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
        let settled = vec![false; messages.len()];
        Ok(Self {
            connection,
            channel,
            topology,
            messages,
            settled,
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
        for (m, settled) in self.messages.iter().zip(self.settled.iter_mut()) {
            let letter = describe(m);
            if *settled || id.is_some_and(|wanted| wanted != letter.id) {
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
            *settled = true;
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
        for (m, settled) in self.messages.iter().zip(self.settled.iter_mut()) {
            if *settled {
                continue;
            }
            let letter = describe(m);
            tracing::warn!(id = %letter.id, kind = ?letter.kind, reason = ?letter.reason, "purging dead letter");
            m.delivery.acker.ack(BasicAckOptions::default()).await?;
            *settled = true;
            dropped.push(letter);
        }
        Ok(dropped)
    }

    /// Puts back what was neither replayed nor purged (a confirmed copy, then the ack, so
    /// a crash in between leaves a duplicate, never a loss) and disconnects. On a failure
    /// the channel closes over the rest, which the broker returns (one delivery counted).
    pub async fn close(self) -> Result<(), DlqError> {
        let restored = self.restore().await;
        let _ = self.channel.close(200, ShortString::from("done")).await;
        let _ = self.connection.close(200, ShortString::from("done")).await;
        restored
    }

    async fn restore(&self) -> Result<(), DlqError> {
        if self.settled.iter().all(|s| *s) {
            return Ok(());
        }
        let publish = self.connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for (m, _) in self
            .messages
            .iter()
            .zip(&self.settled)
            .filter(|(_, s)| !**s)
        {
            let confirm = publish
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(self.topology.dead_letter_queue()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.delivery.data,
                    shared::topology::migrate::moved_properties(&m.delivery.properties),
                )
                .await?
                .await?;
            if !matches!(confirm, lapin::Confirmation::Ack(None)) {
                return Err(DlqError::NotRestored(describe(m).id));
            }
            m.delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        let _ = publish.close(200, ShortString::from("done")).await;
        Ok(())
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
