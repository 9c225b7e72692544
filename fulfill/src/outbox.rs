//! The outbox relay: publishes committed credit events ([`crate::db::outbox`]) to the
//! `credits.events` topic exchange with publisher confirms, oldest first, and marks them
//! sent in the same transaction that claimed them, only after the broker confirmed.
//!
//! - At least once: a crash or broker outage between publish and commit leaves the rows
//!   unsent; they are published again (same `message_id`) by whichever relay runs next.
//! - Per-user order across processes: a relay claims its batch with `FOR UPDATE` (not
//!   `SKIP LOCKED`), so a second relay waits for the first to commit and then skips what
//!   it sent; batches are published one after the other, in id order, which is each
//!   user's `sequence` order (both are allocated under the user's balance row lock).
//! - Persistent messages, not `mandatory`: a topic exchange with no queue bound yet
//!   drops the message, as for any subscriber that is not listening; websites bind a
//!   durable queue first (README, "Credit events").

use std::time::Duration;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use shared::{amqp, config::AmqpConfig, topology::Topology};
use tokio_util::sync::CancellationToken;

use crate::db::{Pool, PoolError, outbox};

/// Rows published per transaction.
pub const BATCH: i64 = 500;
/// How long the relay sleeps when there was nothing to send.
pub const IDLE: Duration = Duration::from_millis(100);
/// How long the broker has to confirm a batch.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent rows are kept this long (for inspection), then removed.
const KEEP_SENT: chrono::Duration = chrono::Duration::days(1);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database error")]
    Database(#[from] diesel::result::Error),
    #[error("no database connection")]
    Pool(#[from] PoolError),
    #[error("broker error")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nacked) a credit event")]
    Nacked,
    #[error("the broker did not confirm in time")]
    ConfirmTimeout,
    #[error("cannot encode a credit event")]
    Encode(#[from] serde_json::Error),
}

impl RelayError {
    /// The broker connection is unusable: reconnect.
    fn is_broker(&self) -> bool {
        matches!(self, Self::Broker(_) | Self::Nacked | Self::ConfirmTimeout)
    }
}

/// Relays until `stop`, reconnecting to the broker with backoff.
pub async fn run(pool: Pool, config: AmqpConfig, stop: CancellationToken) {
    let topology = Topology::new(config.topology_prefix.clone());
    let exchange = topology.credit_events_exchange();
    let mut attempt = 0;
    while !stop.is_cancelled() {
        match connect(&config, &topology).await {
            Ok((connection, channel)) => {
                attempt = 0;
                let result = relay_until_broken(&pool, &channel, &exchange, &stop).await;
                let _ = connection
                    .close(200, ShortString::from("relay stopping"))
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %crate::error::error_chain(&e), "credit events relay lost the broker; reconnecting");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "credit events relay cannot reach the broker");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(amqp::backoff(attempt, MAX_RECONNECT_DELAY)) => {}
        }
        attempt += 1;
    }
}

async fn connect(
    config: &AmqpConfig,
    topology: &Topology,
) -> Result<(Connection, Channel), lapin::Error> {
    let connection = amqp::connect(config, "fulfill-relay").await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

async fn relay_until_broken(
    pool: &Pool,
    channel: &Channel,
    exchange: &str,
    stop: &CancellationToken,
) -> Result<(), RelayError> {
    let mut last_purge = tokio::time::Instant::now();
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let pause = match relay_batch(pool, channel, exchange).await {
            Ok(n) if n == usize::try_from(BATCH).unwrap_or(usize::MAX) => Duration::ZERO,
            Ok(_) => IDLE,
            Err(e) if e.is_broker() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %crate::error::error_chain(&e), "credit events relay: database unavailable");
                Duration::from_secs(1)
            }
        };
        if last_purge.elapsed() > Duration::from_secs(600) {
            last_purge = tokio::time::Instant::now();
            if let Ok(mut conn) = pool.get().await {
                let _ = outbox::purge_sent(&mut conn, Utc::now() - KEEP_SENT).await;
            }
        }
        if !pause.is_zero() {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Publishes one batch of the oldest unsent events and marks them sent once confirmed;
/// returns how many. Any failure rolls back: the rows stay unsent.
pub async fn relay_batch(
    pool: &Pool,
    channel: &Channel,
    exchange: &str,
) -> Result<usize, RelayError> {
    let mut conn = pool.get().await?;
    let conn: &mut AsyncPgConnection = &mut conn;
    conn.transaction(async |conn: &mut AsyncPgConnection| {
        let rows = outbox::claim(conn, BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let body = serde_json::to_vec(&row.payload)?;
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json"))
                .with_message_id(ShortString::from(row.event_id.as_str()))
                .with_type(ShortString::from(row.routing_key.as_str()));
            confirms.push(
                channel
                    .basic_publish(
                        ShortString::from(exchange),
                        ShortString::from(row.routing_key.as_str()),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?,
            );
        }
        let all = futures_util::future::join_all(confirms);
        let confirmations = tokio::time::timeout(CONFIRM_TIMEOUT, all)
            .await
            .map_err(|_| RelayError::ConfirmTimeout)?;
        for confirmation in confirmations {
            if !confirmation?.is_ack() {
                return Err(RelayError::Nacked);
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        outbox::mark_sent(conn, &ids).await?;
        Ok(rows.len())
    })
    .await
}
