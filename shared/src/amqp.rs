//! Connecting to RabbitMQ, and the message properties both services agree on.

use std::time::Duration;

use lapin::{
    Connection, ConnectionProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use secrecy::ExposeSecret;

use crate::config::AmqpConfig;

pub mod failover;

/// Headers fulfill writes when it retries or dead-letters a message.
pub mod headers {
    /// How many times fulfill has tried this message (retry queue round-trips + 1).
    pub const ATTEMPTS: &str = "x-fulfill-attempts";
    /// Why a message was dead-lettered, in words.
    pub const DEAD_REASON: &str = "x-fulfill-dead-reason";
    /// `permanent`, `exhausted` (transient failures beyond the attempt limit) or `poison`.
    pub const DEAD_KIND: &str = "x-fulfill-dead-kind";
    /// The routing key (event type) the message first had.
    pub const ORIGINAL_ROUTING_KEY: &str = "x-fulfill-original-routing-key";
    /// When the message was dead-lettered, Unix seconds.
    pub const DEAD_AT: &str = "x-fulfill-dead-at";
}

/// Opens a connection named after the service (visible in the management UI) to the
/// first live node `AMQP_URL` names ([`failover`]), and logs which node that is.
pub async fn connect(
    config: &AmqpConfig,
    connection_name: &str,
) -> Result<Connection, lapin::Error> {
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(connection_name));
    let (connection, node) = failover::connect_any(config.url.expose_secret(), props).await?;
    tracing::info!(%node, connection = connection_name, "connected to RabbitMQ");
    Ok(connection)
}

/// Exponential backoff with jitter, for reconnect loops: 100 ms doubling up to `cap`.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    backoff_from(Duration::from_millis(100), attempt, cap)
}

/// `base` doubled `attempt` times, capped at `cap`, then a random value in its upper half
/// ("equal jitter"), so that many waiters do not retry in lockstep.
pub fn backoff_from(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::random_range(millis / 2..=millis))
}

/// A header's value as text, whichever string type the broker used.
pub fn header_str<'a>(table: Option<&'a FieldTable>, key: &str) -> Option<&'a str> {
    let value = table?.inner().get(&ShortString::from(key))?;
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A header's value as a whole number, whichever integer type the broker used.
pub fn header_int(table: Option<&FieldTable>, key: &str) -> Option<i64> {
    let value = table?.inner().get(&ShortString::from(key))?;
    match *value {
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::LongInt(n) => Some(i64::from(n)),
        AMQPValue::LongUInt(n) => Some(i64::from(n)),
        AMQPValue::ShortInt(n) => Some(i64::from(n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(n)),
        AMQPValue::Timestamp(n) => i64::try_from(n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let cap = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff(attempt, cap);
            assert!(
                d <= cap && d >= Duration::from_millis(1),
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff(0, cap) <= Duration::from_millis(100));
    }

    #[test]
    fn reads_headers_of_either_string_type_and_any_integer() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongString("x".into()));
        t.insert("b".into(), AMQPValue::ShortString("y".into()));
        t.insert("n".into(), AMQPValue::LongInt(3));
        assert_eq!(header_str(Some(&t), "a"), Some("x"));
        assert_eq!(header_str(Some(&t), "b"), Some("y"));
        assert_eq!(header_int(Some(&t), "n"), Some(3));
        assert_eq!(header_int(None, "n"), None);
    }
}
