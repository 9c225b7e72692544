//! The RabbitMQ topology, declared idempotently by both services from this one place,
//! so ingest never publishes into an exchange with no queue behind it.
//!
//! ```text
//!                       routing key = event type
//! ingest ──► {p}stripe.events (topic, durable, alternate-exchange = {p}stripe.unrouted)
//!              ├─ checkout.session.* (4 types), charge.refunded,
//!              │  charge.refund.updated, charge.dispute.* (5 types) ─► {p}fulfill.checkout (quorum)
//!              └─ anything unbound ─► {p}stripe.unrouted (fanout) ─► {p}stripe.unrouted (bounded)
//!
//! fulfill ─ transient failure ─► {p}fulfill.retry (quorum, per-message TTL) ─► back to {p}fulfill.checkout
//!         ─ permanent failure ─► {p}fulfill.dead (quorum; reason in headers)
//!
//! fulfill's outbox relay ─► {p}credits.events (topic, durable)
//!              routing keys credits.<reason>, session.needs_attention; websites bind
//!              their own queues (e.g. `credits.#`)
//! ```
//!
//! Topology version 2 ([`TOPOLOGY_VERSION`]): every queue holding a message we owe
//! (checkout, retry, dead) is a quorum queue (replicated) with every argument explicit, so
//! RabbitMQ 3.10 and 4.x (whose default delivery limit is 20) behave alike; the two that
//! the broker dead-letters from move messages at least once
//! (`x-dead-letter-strategy=at-least-once`, which needs `x-overflow=reject-publish`):
//! <https://www.rabbitmq.com/docs/quorum-queues#dead-lettering>. Version 1 queues cannot
//! be changed in place (PRECONDITION_FAILED): [`migrate`] moves their messages.
//!
//! Verified events of types nobody consumes go to the alternate exchange and a queue capped
//! at [`UNROUTED_MAX_LENGTH`] messages (oldest dropped first): an operator can inspect them,
//! they never pile up without bound, and a `mandatory` publish is never returned for them
//! (<https://www.rabbitmq.com/docs/ae>).

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::event_type::EventType;

pub mod migrate;

/// Bumped whenever a queue's arguments change; [`migrate`] knows how to get here from 1.
pub const TOPOLOGY_VERSION: u32 = 2;

/// Every event type bound to the queue fulfill consumes.
pub fn consumed_event_types() -> impl Iterator<Item = &'static str> {
    EventType::ALL.iter().map(|t| t.as_str())
}

/// How many unrouted (unconsumed types of) events are kept for inspection.
pub const UNROUTED_MAX_LENGTH: i64 = 10_000;

/// After this many deliveries of one message (crash loops, requeues) the broker
/// dead-letters it instead of delivering it again.
/// <https://www.rabbitmq.com/docs/quorum-queues#poison-message-handling>
pub const CHECKOUT_DELIVERY_LIMIT: i64 = 50;

/// Nobody consumes the retry queue (messages leave it by TTL); explicit all the same.
pub const RETRY_DELIVERY_LIMIT: i64 = 50;

/// Inspecting dead letters does not count against this (`fulfill dlq` republishes what it
/// read, then acks; it never returns them); only inspections cut short by a crash do.
/// Without a dead-letter exchange of its own, a message past it would be dropped.
pub const DEAD_DELIVERY_LIMIT: i64 = 100_000;

/// Exchange and queue names. `prefix` is empty in production and unique per test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// The topic exchange ingest publishes every verified event to.
    pub fn events_exchange(&self) -> String {
        self.name("stripe.events")
    }

    /// The topic exchange fulfill announces credit events on (`credits.<reason>`,
    /// `session.needs_attention`); websites bind their own queues to it.
    pub fn credit_events_exchange(&self) -> String {
        self.name("credits.events")
    }

    /// Alternate exchange (and its queue) for event types no queue is bound to.
    pub fn unrouted_exchange(&self) -> String {
        self.name("stripe.unrouted")
    }

    pub fn unrouted_queue(&self) -> String {
        self.name("stripe.unrouted")
    }

    /// The queue fulfill consumes.
    pub fn checkout_queue(&self) -> String {
        self.name("fulfill.checkout")
    }

    /// Where fulfill parks a message for a while after a transient failure.
    pub fn retry_queue(&self) -> String {
        self.name("fulfill.retry")
    }

    /// Messages that could not be processed, with the reason in their headers.
    pub fn dead_letter_queue(&self) -> String {
        self.name("fulfill.dead")
    }

    /// Every queue, for tests that clean up after themselves.
    pub fn queues(&self) -> [String; 4] {
        [
            self.unrouted_queue(),
            self.checkout_queue(),
            self.retry_queue(),
            self.dead_letter_queue(),
        ]
    }

    /// Every exchange, for tests that clean up after themselves.
    pub fn exchanges(&self) -> [String; 3] {
        [
            self.events_exchange(),
            self.unrouted_exchange(),
            self.credit_events_exchange(),
        ]
    }

    /// `{p}fulfill.checkout`: poison messages (past the delivery limit) and fulfill's
    /// rejections go to the dead-letter queue, at least once.
    pub fn checkout_arguments(&self) -> FieldTable {
        table([
            ("x-queue-type", long_string("quorum")),
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(CHECKOUT_DELIVERY_LIMIT),
            ),
            ("x-dead-letter-exchange", long_string("")),
            (
                "x-dead-letter-routing-key",
                long_string(self.dead_letter_queue()),
            ),
            ("x-dead-letter-strategy", long_string("at-least-once")),
            ("x-overflow", long_string("reject-publish")),
        ])
    }

    /// `{p}fulfill.retry`: expired messages go back to the checkout queue, at least once.
    pub fn retry_arguments(&self) -> FieldTable {
        table([
            ("x-queue-type", long_string("quorum")),
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(RETRY_DELIVERY_LIMIT),
            ),
            ("x-dead-letter-exchange", long_string("")),
            (
                "x-dead-letter-routing-key",
                long_string(self.checkout_queue()),
            ),
            ("x-dead-letter-strategy", long_string("at-least-once")),
            ("x-overflow", long_string("reject-publish")),
        ])
    }

    /// `{p}fulfill.dead`: the end of the line; nothing moves messages out but `fulfill dlq`.
    pub fn dead_letter_arguments(&self) -> FieldTable {
        table([
            ("x-queue-type", long_string("quorum")),
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT),
            ),
        ])
    }

    /// Declares exchanges, queues and bindings. Idempotent: safe to run from every
    /// process at every (re)connect, as long as all run the same code.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        self.declare_exchanges(channel).await?;
        let declared = self.declare_queues(channel).await;
        if let Err(e) = &declared
            && migrate::is_precondition_failed(e)
        {
            tracing::error!(
                error = %e,
                version = TOPOLOGY_VERSION,
                "the broker holds queues of an older topology: run `fulfill topology migrate`"
            );
        }
        declared
    }

    /// The exchanges alone (the migration needs them before the queues can be declared).
    pub async fn declare_exchanges(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.unrouted_exchange().into(),
                ExchangeKind::Fanout,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable_exchange,
                table([("alternate-exchange", long_string(self.unrouted_exchange()))]),
            )
            .await?;
        channel
            .exchange_declare(
                self.credit_events_exchange().into(),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    async fn declare_queues(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                self.unrouted_queue().into(),
                durable_queue,
                table([
                    ("x-queue-type", long_string("quorum")),
                    ("x-max-length", AMQPValue::LongLongInt(UNROUTED_MAX_LENGTH)),
                    ("x-overflow", long_string("drop-head")),
                ]),
            )
            .await?;
        channel
            .queue_bind(
                self.unrouted_queue().into(),
                self.unrouted_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        channel
            .queue_declare(
                self.checkout_queue().into(),
                durable_queue,
                self.checkout_arguments(),
            )
            .await?;
        for event_type in consumed_event_types() {
            channel
                .queue_bind(
                    self.checkout_queue().into(),
                    self.events_exchange().into(),
                    event_type.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        // Per-message TTL (the retry delay) expires at the head; the delays fulfill sets
        // only grow, so a later message never waits on an earlier one for long. Expired
        // messages go back to the checkout queue through the default exchange.
        // <https://www.rabbitmq.com/docs/ttl#per-message-ttl-caveats>
        channel
            .queue_declare(
                self.retry_queue().into(),
                durable_queue,
                self.retry_arguments(),
            )
            .await?;

        channel
            .queue_declare(
                self.dead_letter_queue().into(),
                durable_queue,
                self.dead_letter_arguments(),
            )
            .await?;
        Ok(())
    }
}

pub(crate) fn long_string(s: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.into()))
}

pub(crate) fn table<const N: usize>(entries: [(&str, AMQPValue); N]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(k), v);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_every_name() {
        let t = Topology::new("t123.");
        for name in t.queues().iter().chain(t.exchanges().iter()) {
            assert!(name.starts_with("t123."), "{name}");
        }
        assert_eq!(t.checkout_queue(), "t123.fulfill.checkout");
        assert_eq!(t.credit_events_exchange(), "t123.credits.events");
    }
}
