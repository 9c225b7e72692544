//! The append-only credit ledger and the balances it sums to.
//!
//! An entry and its balance change are written together, in the caller's transaction;
//! the unique `idempotency_key` makes a second write of the same entry a no-op, which is
//! what makes crediting exactly-once across redeliveries, restarts and processes.

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, Queryable, Selectable,
    SelectableHelper, upsert::excluded,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{balances, ledger_entries};
use crate::domain::target::{Component, Components};

#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub user_id: &'a str,
    pub delta: i64,
    pub reason: &'a str,
    pub idempotency_key: &'a str,
    pub stripe_session_id: Option<&'a str>,
    pub stripe_event_id: Option<&'a str>,
    pub stripe_object_id: Option<&'a str>,
    /// The part of a session's credits the entry moves (entries of a session only).
    pub component: Option<Component>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq, Eq)]
#[diesel(table_name = ledger_entries)]
pub struct Entry {
    pub id: i64,
    #[serde(skip)]
    pub user_id: String,
    pub delta: i64,
    pub reason: String,
    #[serde(skip)]
    pub idempotency_key: String,
    pub stripe_session_id: Option<String>,
    pub stripe_event_id: Option<String>,
    pub stripe_object_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Appends `entry` and moves the user's balance by its delta, unless an entry with the
/// same idempotency key exists. Returns whether it was applied.
pub async fn append(conn: &mut AsyncPgConnection, entry: &NewEntry<'_>) -> QueryResult<bool> {
    let inserted = diesel::insert_into(ledger_entries::table)
        .values((
            ledger_entries::user_id.eq(entry.user_id),
            ledger_entries::delta.eq(entry.delta),
            ledger_entries::reason.eq(entry.reason),
            ledger_entries::idempotency_key.eq(entry.idempotency_key),
            ledger_entries::stripe_session_id.eq(entry.stripe_session_id),
            ledger_entries::stripe_event_id.eq(entry.stripe_event_id),
            ledger_entries::stripe_object_id.eq(entry.stripe_object_id),
            ledger_entries::component.eq(entry.component.map(Component::as_str)),
        ))
        .on_conflict(ledger_entries::idempotency_key)
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    diesel::insert_into(balances::table)
        .values((
            balances::user_id.eq(entry.user_id),
            balances::credits.eq(entry.delta),
        ))
        .on_conflict(balances::user_id)
        .do_update()
        .set((
            balances::credits.eq(balances::credits + excluded(balances::credits)),
            balances::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(true)
}

/// The entry with this idempotency key, if written.
pub async fn find(
    conn: &mut AsyncPgConnection,
    idempotency_key: &str,
) -> QueryResult<Option<Entry>> {
    ledger_entries::table
        .filter(ledger_entries::idempotency_key.eq(idempotency_key))
        .select(Entry::as_select())
        .first(conn)
        .await
        .optional()
}

/// The user's balance; 0 for a user never credited.
pub async fn balance(conn: &mut AsyncPgConnection, user_id: &str) -> QueryResult<i64> {
    balances::table
        .select(balances::credits)
        .filter(balances::user_id.eq(user_id))
        .first::<i64>(conn)
        .await
        .optional()
        .map(Option::unwrap_or_default)
}

/// The user's entries, oldest first, after entry id `after` (0 for the start).
pub async fn entries(
    conn: &mut AsyncPgConnection,
    user_id: &str,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<Entry>> {
    ledger_entries::table
        .filter(ledger_entries::user_id.eq(user_id))
        .filter(ledger_entries::id.gt(after))
        .order(ledger_entries::id.asc())
        .limit(limit)
        .select(Entry::as_select())
        .load(conn)
        .await
}

/// What a session's entries hold, per component, and how many entries each has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub components: Components,
    pub purchase_entries: i64,
    pub refund_entries: i64,
    pub dispute_entries: i64,
}

impl Applied {
    pub fn entries(&self, component: Component) -> i64 {
        match component {
            Component::Purchase => self.purchase_entries,
            Component::Refund => self.refund_entries,
            Component::Dispute => self.dispute_entries,
        }
    }
}

#[derive(diesel::QueryableByName)]
struct ComponentTotal {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    component: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    entries: i64,
}

/// Sums a session's entries by component. Entries from before components were recorded
/// (or from an older release during a rollout) are filed by their reason.
pub async fn applied(conn: &mut AsyncPgConnection, session_id: &str) -> QueryResult<Applied> {
    let rows: Vec<ComponentTotal> = diesel::sql_query(
        "SELECT COALESCE(component, CASE reason \
                WHEN 'purchase' THEN 'purchase' WHEN 'refund' THEN 'refund' \
                WHEN 'dispute' THEN 'dispute' WHEN 'dispute_won' THEN 'dispute' END) AS component, \
            COALESCE(SUM(delta), 0)::BIGINT AS total, COUNT(*)::BIGINT AS entries \
         FROM ledger_entries WHERE stripe_session_id = $1 GROUP BY 1",
    )
    .bind::<diesel::sql_types::Text, _>(session_id)
    .load(conn)
    .await?;
    let mut applied = Applied::default();
    for row in rows {
        let Some(component) = row.component.as_deref().and_then(Component::parse) else {
            continue;
        };
        match component {
            Component::Purchase => {
                applied.components.purchase = row.total;
                applied.purchase_entries = row.entries;
            }
            // Takebacks are stored as negative deltas.
            Component::Refund => {
                applied.components.refunded = -row.total;
                applied.refund_entries = row.entries;
            }
            Component::Dispute => {
                applied.components.disputed = -row.total;
                applied.dispute_entries = row.entries;
            }
        }
    }
    Ok(applied)
}
