//! The transactional outbox of credit events: one row per ledger entry (written by
//! [`super::ledger::append_entry`] in the entry's transaction) and per session newly
//! needing attention; [`crate::outbox`] relays them to the `credits.events` exchange.
//!
//! A row exists only if its transaction committed, so nothing is announced before its
//! commit; it stays unsent until the broker confirmed it, so nothing committed is lost.

use chrono::{DateTime, Utc};
use diesel::{ExpressionMethods, QueryDsl, QueryResult, Queryable, Selectable, SelectableHelper};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};

use crate::domain::account;

use super::{
    ledger::{Appended, NewEntry},
    schema::credit_events,
};

/// The routing key and `type` of attention events.
pub const NEEDS_ATTENTION: &str = "session.needs_attention";

/// The routing key (and `type`) of an entry's event: `credits.<reason>`.
pub fn routing_key(reason: &str) -> String {
    format!("credits.{reason}")
}

/// The event of a ledger entry, as CONTRACT.md "Credit events" spells it.
pub fn entry_event(
    event_id: &str,
    entry: &NewEntry<'_>,
    appended: &Appended,
    created: DateTime<Utc>,
) -> Value {
    json!({
        "id": event_id,
        "type": routing_key(entry.reason),
        "user_id": entry.user_id,
        "account": account::shown(entry.account),
        "delta": entry.delta,
        "credits_after": appended.credits_after,
        "sequence": appended.sequence,
        "entry_id": appended.entry_id,
        "session_id": entry.stripe_session_id,
        "debit_id": entry.debit_id,
        "hold_id": entry.hold_id,
        "grant_id": entry.grant_id,
        "created": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// An entry's outbox row: event id, routing key and payload.
pub(super) struct EntryRow {
    pub event_id: String,
    pub routing_key: String,
    pub sequence: i64,
    pub payload: Value,
}

pub(super) fn entry_row(
    entry: &NewEntry<'_>,
    appended: &Appended,
    created: DateTime<Utc>,
) -> EntryRow {
    // Stable: a re-announcement after a crash carries the same id, for consumers' dedupe.
    let event_id = format!("ce_{}", appended.entry_id);
    EntryRow {
        payload: entry_event(&event_id, entry, appended, created),
        event_id,
        routing_key: routing_key(entry.reason),
        sequence: appended.sequence,
    }
}

/// Announces that a session now needs attention (call it in the transaction that moves
/// the session into that state, only when it was not in it before).
pub async fn announce_attention(
    conn: &mut AsyncPgConnection,
    account: &str,
    session_id: &str,
    user_id: Option<&str>,
    reason: &str,
) -> QueryResult<()> {
    let event_id = format!("ce_{:024x}", rand::random::<u128>() >> 32);
    let payload = json!({
        "id": event_id,
        "type": NEEDS_ATTENTION,
        "user_id": user_id,
        "account": account::shown(account),
        "delta": Value::Null,
        "credits_after": Value::Null,
        "sequence": Value::Null,
        "session_id": session_id,
        "debit_id": Value::Null,
        "hold_id": Value::Null,
        "grant_id": Value::Null,
        "reason": reason,
        "created": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    diesel::insert_into(credit_events::table)
        .values((
            credit_events::event_id.eq(&event_id),
            credit_events::routing_key.eq(NEEDS_ATTENTION),
            credit_events::account.eq(account),
            credit_events::user_id.eq(user_id),
            credit_events::payload.eq(payload),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = credit_events)]
pub struct Outgoing {
    pub id: i64,
    pub event_id: String,
    pub routing_key: String,
    pub payload: Value,
}

/// Locks the oldest unsent rows for the caller's transaction. Not `SKIP LOCKED`: a second
/// relay waits for the first to commit and then sees its rows sent, so one user's events
/// are never published out of order by two relays, nor twice in the normal case.
pub async fn claim(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<Outgoing>> {
    credit_events::table
        .filter(credit_events::sent_at.is_null())
        .order(credit_events::id.asc())
        .limit(limit)
        .select(Outgoing::as_select())
        .for_update()
        .load(conn)
        .await
}

pub async fn mark_sent(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<usize> {
    diesel::update(credit_events::table.filter(credit_events::id.eq_any(ids)))
        .set(credit_events::sent_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
}

/// Forgets rows sent before `cutoff` (the broker has them; the ledger keeps the record).
pub async fn purge_sent(conn: &mut AsyncPgConnection, cutoff: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(credit_events::table.filter(credit_events::sent_at.lt(cutoff)))
        .execute(conn)
        .await
}

/// Rows not yet confirmed by the broker.
pub async fn unsent(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    credit_events::table
        .filter(credit_events::sent_at.is_null())
        .count()
        .get_result(conn)
        .await
}
