//! The append-only credit ledger and the balances it sums to.
//!
//! An entry and its balance change are written together, in the caller's transaction;
//! the unique `idempotency_key` makes a second write of the same entry a no-op, which is
//! what makes crediting exactly-once across redeliveries, restarts and processes.
//!
//! [`append`] is the one write path of entries: in the same transaction it moves the
//! balance (taking its row lock, which every spending decision also takes), numbers the
//! entry in the user's `sequence`, creates or consumes credit lots ([`super::lots`]) and
//! writes the credit event to the outbox ([`super::outbox`]).

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, Queryable, Selectable,
    SelectableHelper, upsert::excluded,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{balances, ledger_entries};
use crate::domain::target::{Component, Components};

#[derive(Debug, Clone, Default)]
pub struct NewEntry<'a> {
    /// The user's account (`''`: the platform's own users).
    pub account: &'a str,
    pub user_id: &'a str,
    pub delta: i64,
    pub reason: &'a str,
    pub idempotency_key: &'a str,
    pub stripe_session_id: Option<&'a str>,
    pub stripe_event_id: Option<&'a str>,
    pub stripe_object_id: Option<&'a str>,
    /// The part of a session's credits the entry moves (entries of a session only).
    pub component: Option<Component>,
    /// The debit, hold (capture) or grant behind the entry.
    pub debit_id: Option<&'a str>,
    pub hold_id: Option<&'a str>,
    pub grant_id: Option<&'a str>,
    /// The caller's words (a debit's or grant's `reason`) and metadata.
    pub memo: Option<&'a str>,
    pub metadata: Option<&'a serde_json::Value>,
    /// The lots a positive entry creates; empty: one non-expiring lot of the whole delta.
    pub lots: Vec<LotSpec>,
}

pub use crate::domain::expiry_rule::LotSpec;

/// What [`append_entry`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub entry_id: i64,
    pub credits_after: i64,
    pub sequence: i64,
}

/// One ledger entry as the API shows it.
#[derive(Debug, Clone, Queryable, Selectable, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[diesel(table_name = ledger_entries)]
pub struct Entry {
    pub id: i64,
    #[serde(skip)]
    pub user_id: String,
    pub delta: i64,
    /// purchase, refund, dispute, dispute_won, debit, grant, expiry or adjustment.
    pub reason: String,
    #[serde(skip)]
    pub idempotency_key: String,
    pub stripe_session_id: Option<String>,
    pub stripe_event_id: Option<String>,
    pub stripe_object_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub debit_id: Option<String>,
    pub hold_id: Option<String>,
    pub grant_id: Option<String>,
    /// The caller's own words (a debit's or grant's `reason`).
    pub memo: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// The entry's place in the user's sequence (as in its credit event).
    pub sequence: Option<i64>,
}

/// Appends `entry` and moves the user's balance by its delta, unless an entry with the
/// same idempotency key exists. Returns whether it was applied.
pub async fn append(conn: &mut AsyncPgConnection, entry: &NewEntry<'_>) -> QueryResult<bool> {
    append_entry(conn, entry).await.map(|a| a.is_some())
}

/// [`append`], returning what was written (`None`: the key existed, nothing changed).
pub async fn append_entry(
    conn: &mut AsyncPgConnection,
    entry: &NewEntry<'_>,
) -> QueryResult<Option<Appended>> {
    let inserted: Option<(i64, DateTime<Utc>)> = diesel::insert_into(ledger_entries::table)
        .values((
            ledger_entries::account.eq(entry.account),
            ledger_entries::user_id.eq(entry.user_id),
            ledger_entries::delta.eq(entry.delta),
            ledger_entries::reason.eq(entry.reason),
            ledger_entries::idempotency_key.eq(entry.idempotency_key),
            ledger_entries::stripe_session_id.eq(entry.stripe_session_id),
            ledger_entries::stripe_event_id.eq(entry.stripe_event_id),
            ledger_entries::stripe_object_id.eq(entry.stripe_object_id),
            ledger_entries::component.eq(entry.component.map(Component::as_str)),
            ledger_entries::debit_id.eq(entry.debit_id),
            ledger_entries::hold_id.eq(entry.hold_id),
            ledger_entries::grant_id.eq(entry.grant_id),
            ledger_entries::memo.eq(entry.memo),
            ledger_entries::metadata.eq(entry.metadata),
        ))
        .on_conflict(ledger_entries::idempotency_key)
        .do_nothing()
        .returning((ledger_entries::id, ledger_entries::created_at))
        .get_result(conn)
        .await
        .optional()?;
    let Some((entry_id, created_at)) = inserted else {
        return Ok(None);
    };
    let (credits_after, sequence): (i64, i64) = diesel::insert_into(balances::table)
        .values((
            balances::account.eq(entry.account),
            balances::user_id.eq(entry.user_id),
            balances::credits.eq(entry.delta),
            balances::sequence.eq(1),
        ))
        .on_conflict((balances::account, balances::user_id))
        .do_update()
        .set((
            balances::credits.eq(balances::credits + excluded(balances::credits)),
            balances::sequence.eq(balances::sequence + 1),
            balances::updated_at.eq(diesel::dsl::now),
        ))
        .returning((balances::credits, balances::sequence))
        .get_result(conn)
        .await?;
    diesel::update(ledger_entries::table.find(entry_id))
        .set(ledger_entries::sequence.eq(sequence))
        .execute(conn)
        .await?;
    if entry.delta > 0 {
        super::lots::create(conn, entry, entry_id, credits_after).await?;
    } else if entry.delta < 0 {
        super::lots::consume(
            conn,
            entry.account,
            entry.user_id,
            entry.stripe_session_id,
            -entry.delta,
        )
        .await?;
    }
    let appended = Appended {
        entry_id,
        credits_after,
        sequence,
    };
    super::outbox::announce_entry(conn, entry, &appended, created_at).await?;
    Ok(Some(appended))
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
pub async fn balance(
    conn: &mut AsyncPgConnection,
    account: &str,
    user_id: &str,
) -> QueryResult<i64> {
    balances::table
        .select(balances::credits)
        .filter(balances::account.eq(account))
        .filter(balances::user_id.eq(user_id))
        .first::<i64>(conn)
        .await
        .optional()
        .map(Option::unwrap_or_default)
}

/// The user's entries, oldest first, after entry id `after` (0 for the start).
pub async fn entries(
    conn: &mut AsyncPgConnection,
    account: &str,
    user_id: &str,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<Entry>> {
    ledger_entries::table
        .filter(ledger_entries::account.eq(account))
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
