//! Moving a broker from topology version 1 to [`super::TOPOLOGY_VERSION`].
//!
//! A queue's arguments cannot change in place (the broker answers PRECONDITION_FAILED), so
//! each queue whose arguments are stale is emptied into a holding queue, deleted, declared
//! anew and refilled. Every move is get → publish (persistent, mandatory, confirmed) → ack,
//! one message at a time, so nothing is lost; a crash between a confirm and its ack leaves
//! one copy too many, which fulfill's event-id dedupe absorbs, and running the command
//! again resumes from the holding queues.
//!
//! ```text
//! {p}fulfill.checkout.migrating  bound to the events exchange while checkout is rebuilt
//!   ◄── fulfill.retry (v1)    waiting retries: sent on now rather than after their delay
//!   ◄── fulfill.checkout (v1)
//! {p}fulfill.dead.migrating ◄── fulfill.dead (v1)
//! declare v2 → drain both holding queues into the new queues → delete them
//! ```
//!
//! Run it with fulfill stopped (its consumers would hold messages unacknowledged on the old
//! queues); ingest may keep publishing: the holding queue is bound before the old queue is
//! unbound, so an event published during those milliseconds may arrive twice, never not.

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ErrorKind,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, ShortString},
};

use super::{DEAD_DELIVERY_LIMIT, TOPOLOGY_VERSION, Topology, consumed_event_types, table};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("broker error while migrating the topology")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm a message moved from {from} to {to}")]
    NotConfirmed { from: String, to: String },
}

/// What a run did, for the operator.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Queues that were rebuilt with the current arguments.
    pub rebuilt: Vec<String>,
    /// Messages moved into each queue, in the order moved.
    pub moved: Vec<(String, u64)>,
}

impl std::fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rebuilt.is_empty() && self.moved.is_empty() {
            return write!(
                f,
                "topology v{TOPOLOGY_VERSION}: already current, nothing moved"
            );
        }
        write!(
            f,
            "topology v{TOPOLOGY_VERSION}: rebuilt [{}]",
            self.rebuilt.join(", ")
        )?;
        for (to, n) in &self.moved {
            write!(f, "; {n} moved into {to}")?;
        }
        Ok(())
    }
}

/// Whether `error` is the broker refusing a redeclaration with other arguments.
pub fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}

/// The owed queues whose arguments differ from the current version's (a missing queue is
/// created with them, so it never counts).
pub async fn stale_queues(
    connection: &Connection,
    topology: &Topology,
) -> Result<Vec<String>, lapin::Error> {
    let mut stale = Vec::new();
    for (queue, arguments) in owed_queues(topology) {
        // A refused declaration closes its channel: one channel per probe.
        let probe = connection.create_channel().await?;
        match probe
            .queue_declare(queue.as_str().into(), durable(), arguments)
            .await
        {
            Ok(_) => {
                let _ = probe.close(200, "probed".into()).await;
            }
            Err(e) if is_precondition_failed(&e) => stale.push(queue),
            Err(e) => return Err(e),
        }
    }
    Ok(stale)
}

/// Brings the broker to the current topology, moving every queued message along.
/// Idempotent: on a current broker it changes nothing.
pub async fn migrate(
    connection: &Connection,
    topology: &Topology,
) -> Result<MigrationReport, MigrateError> {
    let stale = stale_queues(connection, topology).await?;
    let is_stale = |q: &str| stale.iter().any(|s| s == q);
    let (checkout, retry, dead) = (
        topology.checkout_queue(),
        topology.retry_queue(),
        topology.dead_letter_queue(),
    );
    let (hold_checkout, hold_dead) = (format!("{checkout}.migrating"), format!("{dead}.migrating"));
    let channel = connection.create_channel().await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut report = MigrationReport::default();
    topology.declare_exchanges(&channel).await?;

    let checkout_moves = is_stale(&checkout) || is_stale(&retry);
    if checkout_moves {
        declare_holding(&channel, &hold_checkout).await?;
        // Bound before the old queue is unbound: no event finds no queue.
        for event_type in consumed_event_types() {
            channel
                .queue_bind(
                    hold_checkout.as_str().into(),
                    topology.events_exchange().into(),
                    event_type.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    if is_stale(&checkout) {
        for event_type in consumed_event_types() {
            channel
                .queue_unbind(
                    checkout.as_str().into(),
                    topology.events_exchange().into(),
                    event_type.into(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    for (queue, holding) in [
        (&retry, &hold_checkout),
        (&checkout, &hold_checkout),
        (&dead, &hold_dead),
    ] {
        if !is_stale(queue) {
            continue;
        }
        declare_holding(&channel, holding).await?;
        let n = drain_and_delete(&channel, &publish, queue, holding).await?;
        report.moved.push((holding.clone(), n));
        report.rebuilt.push(queue.clone());
    }

    topology.declare(&channel).await?;

    // Drain what the holding queues hold, also those left by an interrupted earlier run.
    for (holding, target) in [(&hold_dead, &dead), (&hold_checkout, &checkout)] {
        if !exists(connection, holding).await? {
            continue;
        }
        if holding == &hold_checkout {
            for event_type in consumed_event_types() {
                channel
                    .queue_unbind(
                        holding.as_str().into(),
                        topology.events_exchange().into(),
                        event_type.into(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        let n = drain_and_delete(&channel, &publish, holding, target).await?;
        report.moved.push((target.clone(), n));
    }
    let _ = publish.close(200, "migrated".into()).await;
    let _ = channel.close(200, "migrated".into()).await;
    Ok(report)
}

fn owed_queues(topology: &Topology) -> [(String, FieldTable); 3] {
    [
        (topology.retry_queue(), topology.retry_arguments()),
        (topology.checkout_queue(), topology.checkout_arguments()),
        (
            topology.dead_letter_queue(),
            topology.dead_letter_arguments(),
        ),
    ]
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Replicated like the queues it stands in for; no TTL, no dead-lettering.
async fn declare_holding(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            durable(),
            table([
                ("x-queue-type", super::long_string("quorum")),
                (
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT),
                ),
            ]),
        )
        .await
        .map(drop)
}

async fn exists(connection: &Connection, queue: &str) -> Result<bool, lapin::Error> {
    let probe = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = probe.close(200, "probed".into()).await;
            Ok(true)
        }
        Err(e)
            if matches!(e.kind(), ErrorKind::ProtocolError(a)
            if *a.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Moves everything from `from` to `to`, then deletes `from` once the broker counts it
/// empty. Quorum queues refuse `if-empty` deletes, hence the count first; nothing is
/// routed to `from` any more by then (unbound, and fulfill is stopped).
async fn drain_and_delete(
    channel: &Channel,
    publish: &Channel,
    from: &str,
    to: &str,
) -> Result<u64, MigrateError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut moved = 0;
    loop {
        moved += move_all(channel, publish, from, to).await?;
        let left = channel
            .queue_declare(from.into(), passive, FieldTable::default())
            .await?
            .message_count();
        if left == 0 {
            break;
        }
    }
    channel
        .queue_delete(from.into(), QueueDeleteOptions::default())
        .await?;
    Ok(moved)
}

/// get → publish (confirmed) → ack until `from` is empty; returns how many moved.
pub(crate) async fn move_all(
    get: &Channel,
    publish: &Channel,
    from: &str,
    to: &str,
) -> Result<u64, MigrateError> {
    let mut moved = 0;
    while let Some(m) = get
        .basic_get(ShortString::from(from), BasicGetOptions::default())
        .await?
    {
        let confirm = publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(to),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &m.delivery.data,
                moved_properties(&m.delivery.properties),
            )
            .await?
            .await?;
        if !matches!(confirm, Confirmation::Ack(None)) {
            return Err(MigrateError::NotConfirmed {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        }
        m.delivery.acker.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    Ok(moved)
}

/// The same message, persistent, without an expiration (a retry delay would make it
/// vanish from a holding queue with no dead-letter exchange) and without the count of its
/// deliveries from the old queue.
pub fn moved_properties(original: &BasicProperties) -> BasicProperties {
    let mut p = BasicProperties::default().with_delivery_mode(2);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(h) = original.headers() {
        let mut kept = FieldTable::default();
        for (k, v) in h.inner() {
            if k.as_str() != "x-delivery-count" {
                kept.insert(k.clone(), v.clone());
            }
        }
        p = p.with_headers(kept);
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_message_keeps_its_identity_but_not_its_delay_or_delivery_count() {
        let mut h = FieldTable::default();
        h.insert("x-delivery-count".into(), AMQPValue::LongInt(3));
        h.insert("x-fulfill-attempts".into(), AMQPValue::LongInt(2));
        let original = BasicProperties::default()
            .with_message_id("evt_1".into())
            .with_expiration("60000".into())
            .with_headers(h);
        let moved = moved_properties(&original);
        assert_eq!(
            moved.message_id().as_ref().map(|s| s.as_str()),
            Some("evt_1")
        );
        assert!(moved.expiration().is_none());
        assert_eq!(moved.delivery_mode(), &Some(2));
        let headers = moved.headers().as_ref().expect("headers");
        assert!(!headers.contains_key("x-delivery-count"));
        assert!(headers.contains_key("x-fulfill-attempts"));
    }

    #[test]
    fn every_owed_queue_is_quorum_with_an_explicit_delivery_limit() {
        for (queue, args) in owed_queues(&Topology::new("")) {
            let args = args.inner();
            assert!(args.contains_key("x-delivery-limit"), "{queue}");
            assert_eq!(
                args.get("x-queue-type"),
                Some(&AMQPValue::LongString("quorum".into())),
                "{queue}"
            );
            if args.contains_key("x-dead-letter-exchange") {
                assert_eq!(
                    args.get("x-dead-letter-strategy"),
                    Some(&AMQPValue::LongString("at-least-once".into())),
                    "{queue}"
                );
                assert_eq!(
                    args.get("x-overflow"),
                    Some(&AMQPValue::LongString("reject-publish".into())),
                    "{queue}"
                );
            }
        }
    }
}
