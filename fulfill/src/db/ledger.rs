//! The append-only credit ledger and the balances it sums to.
//!
//! An entry and its balance change are written together, in the caller's transaction;
//! the unique `idempotency_key` makes a second write of the same entry a no-op, which is
//! what makes crediting exactly-once across redeliveries, restarts and processes.
//!
//! [`append`] is the write path of entries ([`write_entries`] with [`announce_all`] the
//! same for a group of sessions' entries, one statement each): in the same transaction
//! it moves the balance (taking its row lock, which every spending decision also takes),
//! numbers the entry in the user's `sequence`, creates or consumes credit lots
//! ([`super::lots`]) and writes the credit event to the outbox ([`super::outbox`]), in
//! two round trips.

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, Queryable, QueryableByName,
    Selectable, SelectableHelper,
    sql_types::{Array, BigInt, Jsonb, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::ledger_entries;
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
/// Call it in a transaction (every caller does): it takes the balance row lock first.
///
/// Two round trips in the normal case: one statement moves the balance and writes the
/// entry numbered with the balance's new `sequence`; then the lots and the credit event
/// (one statement). When the key exists already the balance move is undone under the
/// same lock (a third round trip, only then).
pub async fn append_entry(
    conn: &mut AsyncPgConnection,
    entry: &NewEntry<'_>,
) -> QueryResult<Option<Appended>> {
    let Some(pending) = write_entry(conn, entry).await? else {
        return Ok(None);
    };
    announce(conn, entry, &pending, None).await?;
    Ok(Some(pending.appended))
}

/// An entry [`write_entry`] wrote whose lots and credit event [`announce`] is still to
/// write, in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub appended: Appended,
    created_at: DateTime<Utc>,
}

/// The first half of [`append_entry`]: moves the balance and writes the entry (one round
/// trip), or nothing when the key exists. The caller must [`announce`] it in the same
/// transaction; until then the entry has no lots and no credit event.
pub async fn write_entry(
    conn: &mut AsyncPgConnection,
    entry: &NewEntry<'_>,
) -> QueryResult<Option<Pending>> {
    let written: Option<Written> = super::prepared::prepared(
        "WITH b AS ( \
            INSERT INTO balances (account, user_id, credits, sequence) VALUES ($1, $2, $3, 1) \
            ON CONFLICT (account, user_id) DO UPDATE \
               SET credits = balances.credits + excluded.credits, \
                   sequence = balances.sequence + 1, updated_at = now() \
            RETURNING credits, sequence) \
         INSERT INTO ledger_entries (account, user_id, delta, reason, idempotency_key, \
                stripe_session_id, stripe_event_id, stripe_object_id, component, debit_id, \
                hold_id, grant_id, memo, metadata, sequence) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, b.sequence FROM b \
         ON CONFLICT (idempotency_key) DO NOTHING \
         RETURNING id, created_at, sequence, (SELECT credits FROM b) AS credits_after",
    )
    .bind::<Text, _>(entry.account)
    .bind::<Text, _>(entry.user_id)
    .bind::<BigInt, _>(entry.delta)
    .bind::<Text, _>(entry.reason)
    .bind::<Text, _>(entry.idempotency_key)
    .bind::<Nullable<Text>, _>(entry.stripe_session_id)
    .bind::<Nullable<Text>, _>(entry.stripe_event_id)
    .bind::<Nullable<Text>, _>(entry.stripe_object_id)
    .bind::<Nullable<Text>, _>(entry.component.map(Component::as_str))
    .bind::<Nullable<Text>, _>(entry.debit_id)
    .bind::<Nullable<Text>, _>(entry.hold_id)
    .bind::<Nullable<Text>, _>(entry.grant_id)
    .bind::<Nullable<Text>, _>(entry.memo)
    .bind::<Nullable<Jsonb>, _>(entry.metadata)
    .get_result(conn)
    .await
    .optional()?;
    let Some(written) = written else {
        // The key exists: this entry was written before. Undo the balance move (the row
        // is locked by it, so nothing came in between).
        super::prepared::prepared(
            "UPDATE balances SET credits = credits - $3, sequence = sequence - 1 \
             WHERE account = $1 AND user_id = $2",
        )
        .bind::<Text, _>(entry.account)
        .bind::<Text, _>(entry.user_id)
        .bind::<BigInt, _>(entry.delta)
        .execute(conn)
        .await?;
        return Ok(None);
    };
    Ok(Some(Pending {
        appended: Appended {
            entry_id: written.id,
            credits_after: written.credits_after,
            sequence: written.sequence,
        },
        created_at: written.created_at,
    }))
}

/// [`write_entry`] for several sessions' entries in one statement: each balance moved
/// (its row locked in the order of `entries`) and each entry written, numbered with its
/// balance's new `sequence`. Returns what each entry got, in the order of `entries`; or
/// (`Err` inside) the key of an entry that existed already, in which case the caller
/// must roll back: the balances moved for those too.
///
/// For session entries only (no debit, hold, grant, memo or metadata), each (account,
/// user) at most once (a statement moves a row once), in (account, user) order: the
/// order every writer locks balances in.
pub async fn write_entries<'a>(
    conn: &mut AsyncPgConnection,
    entries: &[NewEntry<'a>],
) -> QueryResult<Result<Vec<Pending>, String>> {
    shareable(entries).map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
    let column =
        |f: fn(&NewEntry<'a>) -> Option<&'a str>| entries.iter().map(f).collect::<Vec<_>>();
    let written: Vec<WrittenKeyed> = super::prepared::prepared(
        "WITH i AS ( \
            SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], \
                                 $6::text[], $7::text[], $8::text[], $9::text[]) \
              WITH ORDINALITY AS i (account, user_id, delta, reason, idempotency_key, \
                   stripe_session_id, stripe_event_id, stripe_object_id, component, n)), \
         b AS ( \
            INSERT INTO balances (account, user_id, credits, sequence) \
            SELECT account, user_id, delta, 1 FROM i ORDER BY n \
            ON CONFLICT (account, user_id) DO UPDATE \
               SET credits = balances.credits + excluded.credits, \
                   sequence = balances.sequence + 1, updated_at = now() \
            RETURNING account, user_id, credits, sequence) \
         INSERT INTO ledger_entries (account, user_id, delta, reason, idempotency_key, \
                stripe_session_id, stripe_event_id, stripe_object_id, component, sequence) \
         SELECT i.account, i.user_id, i.delta, i.reason, i.idempotency_key, \
                i.stripe_session_id, i.stripe_event_id, i.stripe_object_id, i.component, b.sequence \
           FROM i JOIN b ON b.account = i.account AND b.user_id = i.user_id ORDER BY i.n \
         ON CONFLICT (idempotency_key) DO NOTHING \
         RETURNING id, created_at, sequence, idempotency_key, \
                   (SELECT credits FROM b WHERE b.account = ledger_entries.account \
                       AND b.user_id = ledger_entries.user_id) AS credits_after",
    )
    .bind::<Array<Text>, _>(entries.iter().map(|e| e.account).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(entries.iter().map(|e| e.user_id).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(entries.iter().map(|e| e.delta).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(entries.iter().map(|e| e.reason).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(entries.iter().map(|e| e.idempotency_key).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(column(|e| e.stripe_session_id))
    .bind::<Array<Nullable<Text>>, _>(column(|e| e.stripe_event_id))
    .bind::<Array<Nullable<Text>>, _>(column(|e| e.stripe_object_id))
    .bind::<Array<Nullable<Text>>, _>(column(|e| e.component.map(Component::as_str)))
    .load(conn)
    .await?;
    let mut by_key: std::collections::HashMap<String, WrittenKeyed> = written
        .into_iter()
        .map(|w| (w.idempotency_key.clone(), w))
        .collect();
    Ok(entries
        .iter()
        .map(|e| {
            by_key
                .remove(e.idempotency_key)
                .map(|w| Pending {
                    appended: Appended {
                        entry_id: w.id,
                        credits_after: w.credits_after,
                        sequence: w.sequence,
                    },
                    created_at: w.created_at,
                })
                .ok_or_else(|| e.idempotency_key.to_owned())
        })
        .collect())
}

/// [`announce`] for the entries [`write_entries`] wrote (positive, of distinct users), with
/// `records` (the Stripe events behind them and behind sessions without entries): one
/// statement.
pub async fn announce_all(
    conn: &AsyncPgConnection,
    written: &[(NewEntry<'_>, Pending)],
    records: &[super::events::Record<'_>],
) -> QueryResult<()> {
    let events: Vec<_> = written
        .iter()
        .map(|(entry, p)| super::outbox::entry_row(entry, &p.appended, p.created_at))
        .collect();
    let entries: Vec<_> = written
        .iter()
        .map(|(entry, p)| (entry, p.appended.entry_id, p.appended.credits_after))
        .collect();
    super::lots::create_and_announce_all(conn, &entries, &events, records).await
}

/// Whether [`write_entries`] can write `entries` in one statement: session entries
/// only, each (account, user) once.
fn shareable(entries: &[NewEntry<'_>]) -> Result<(), String> {
    if entries
        .windows(2)
        .any(|w| (w[0].account, w[0].user_id) > (w[1].account, w[1].user_id))
    {
        return Err("entries out of (account, user) order: the balances' lock order".into());
    }
    let mut users = std::collections::HashSet::new();
    for e in entries {
        if !users.insert((e.account, e.user_id)) {
            return Err(format!(
                "entry {} moves a balance another entry of the statement moves",
                e.idempotency_key
            ));
        }
        if e.debit_id.is_some()
            || e.hold_id.is_some()
            || e.grant_id.is_some()
            || e.memo.is_some()
            || e.metadata.is_some()
        {
            return Err(format!("entry {} is not a session's", e.idempotency_key));
        }
    }
    Ok(())
}

#[derive(QueryableByName)]
struct WrittenKeyed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    sequence: i64,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = BigInt)]
    credits_after: i64,
}

/// The second half of [`append_entry`]: the lots the entry creates or consumes, and its
/// credit event. Takes the connection shared so that it can be pipelined with other
/// writes of the transaction (statements on one connection still run in order, so the
/// lots of several entries are consumed one after the other).
///
/// `record`, when given, is the record of the Stripe event behind the entry, written by
/// the same statement ([`super::events::record`] without a round trip of its own).
pub async fn announce(
    conn: &AsyncPgConnection,
    entry: &NewEntry<'_>,
    pending: &Pending,
    record: Option<&super::events::Record<'_>>,
) -> QueryResult<()> {
    let appended = &pending.appended;
    let event = super::outbox::entry_row(entry, appended, pending.created_at);
    if entry.delta > 0 {
        super::lots::create_and_announce(
            conn,
            entry,
            appended.entry_id,
            appended.credits_after,
            &event,
            record,
        )
        .await?;
    } else {
        // A zero delta consumes nothing; the statement still writes the event.
        super::lots::consume_and_announce(conn, entry, -entry.delta, &event, record).await?;
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Written {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    sequence: i64,
    #[diesel(sql_type = BigInt)]
    credits_after: i64,
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
    #[diesel(sql_type = diesel::sql_types::Text)]
    session_id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    component: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    entries: i64,
}

/// The sums by session and component. Entries from before components were recorded (or
/// from an older release during a rollout) are filed by their reason.
const APPLIED: &str = "SELECT stripe_session_id AS session_id, COALESCE(component, CASE reason \
        WHEN 'purchase' THEN 'purchase' WHEN 'refund' THEN 'refund' \
        WHEN 'dispute' THEN 'dispute' WHEN 'dispute_won' THEN 'dispute' END) AS component, \
    COALESCE(SUM(delta), 0)::BIGINT AS total, COUNT(*)::BIGINT AS entries \
 FROM ledger_entries WHERE stripe_session_id = ANY($1) GROUP BY 1, 2";

/// Sums a session's entries by component.
pub async fn applied(conn: &AsyncPgConnection, session_id: &str) -> QueryResult<Applied> {
    let mut all = applied_all(conn, &[session_id]).await?;
    Ok(all.remove(session_id).unwrap_or_default())
}

/// [`applied`] for several sessions in one statement; a session without entries is
/// absent from the map.
pub async fn applied_all(
    conn: &AsyncPgConnection,
    session_ids: &[&str],
) -> QueryResult<std::collections::HashMap<String, Applied>> {
    let rows: Vec<ComponentTotal> = super::prepared::prepared(APPLIED)
        .bind::<diesel::sql_types::Array<Text>, _>(session_ids)
        .load(&mut { conn })
        .await?;
    let mut all = std::collections::HashMap::<String, Applied>::new();
    for row in rows {
        let Some(component) = row.component.as_deref().and_then(Component::parse) else {
            continue;
        };
        let applied = all.entry(row.session_id).or_default();
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
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(account: &'a str, user_id: &'a str, key: &'a str) -> NewEntry<'a> {
        NewEntry {
            account,
            user_id,
            delta: 1,
            reason: "purchase",
            idempotency_key: key,
            stripe_session_id: Some("cs_1"),
            ..NewEntry::default()
        }
    }

    #[test]
    fn entries_of_distinct_balances_share_a_statement() {
        let entries = [
            entry("", "ann", "k1"),
            entry("", "bob", "k2"),
            // Another account's user of the same name is another balance.
            entry("acct_1", "ann", "k3"),
        ];
        assert_eq!(shareable(&entries), Ok(()));
        assert_eq!(shareable(&[]), Ok(()));
    }

    #[test]
    fn entries_out_of_lock_order_do_not_share_a_statement() {
        let entries = [entry("", "bob", "k1"), entry("", "ann", "k2")];
        assert!(shareable(&entries).unwrap_err().contains("order"));
        let entries = [entry("acct_1", "ann", "k1"), entry("", "bob", "k2")];
        assert!(shareable(&entries).is_err());
    }

    #[test]
    fn two_entries_of_one_balance_do_not_share_a_statement() {
        let entries = [entry("", "ann", "k1"), entry("", "ann", "k2")];
        let refused = shareable(&entries).unwrap_err();
        assert!(refused.contains("k2"), "{refused}");
    }

    #[test]
    fn an_entry_that_is_not_a_sessions_does_not_share_a_statement() {
        let metadata = serde_json::json!({"order": 1});
        let cases = [
            NewEntry {
                debit_id: Some("d1"),
                ..entry("", "ann", "k1")
            },
            NewEntry {
                hold_id: Some("h1"),
                ..entry("", "ann", "k1")
            },
            NewEntry {
                grant_id: Some("g1"),
                ..entry("", "ann", "k1")
            },
            NewEntry {
                memo: Some("why"),
                ..entry("", "ann", "k1")
            },
            NewEntry {
                metadata: Some(&metadata),
                ..entry("", "ann", "k1")
            },
        ];
        for case in cases {
            assert!(shareable(&[case]).is_err());
        }
    }
}
