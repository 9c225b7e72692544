//! What fulfill knows of each Checkout Session: its state, and why it needs attention.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl,
    QueryResult, Queryable, QueryableByName, Selectable, SelectableHelper,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::checkout_sessions;
pub use crate::domain::session::SessionState;

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Serialize)]
#[diesel(table_name = checkout_sessions)]
pub struct SessionRow {
    pub session_id: String,
    /// The Connect account the session belongs to (stored `''`, shown `null`: the platform).
    #[serde(serialize_with = "account_or_null")]
    pub account: String,
    pub state: SessionState,
    pub user_id: Option<String>,
    pub credits: Option<i64>,
    pub reason: Option<String>,
    pub stripe_status: Option<String>,
    pub payment_status: Option<String>,
    pub payment_intent_id: Option<String>,
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
    pub livemode: Option<bool>,
    pub last_event_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub reversed_credits: i64,
    pub attention: Option<String>,
    #[serde(skip)]
    pub fetch_lease_until: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub view_started_at: Option<DateTime<Utc>>,
}

fn account_or_null<S: serde::Serializer>(account: &str, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&crate::domain::account::shown(account), s)
}

/// The fields a fulfillment run writes. `None` leaves a column as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = checkout_sessions)]
pub struct SessionUpdate<'a> {
    pub state: Option<SessionState>,
    pub user_id: Option<Option<&'a str>>,
    pub credits: Option<Option<i64>>,
    pub reason: Option<Option<&'a str>>,
    pub stripe_status: Option<&'a str>,
    pub payment_status: Option<&'a str>,
    pub payment_intent_id: Option<&'a str>,
    pub amount_total: Option<i64>,
    pub currency: Option<&'a str>,
    pub livemode: Option<bool>,
    pub last_event_id: Option<&'a str>,
    pub reversed_credits: Option<i64>,
    pub attention: Option<Option<&'a str>>,
    pub view_started_at: Option<DateTime<Utc>>,
}

pub async fn find(conn: &AsyncPgConnection, session_id: &str) -> QueryResult<Option<SessionRow>> {
    checkout_sessions::table
        .find(session_id)
        .select(SessionRow::as_select())
        .first(&mut { conn })
        .await
        .optional()
}

/// [`first_look`]'s statement. Lateral lookups with LIMIT: one index probe per
/// question, whatever the planner guesses of the arrays' length. As a plain join and
/// EXISTS, the generic plan (guessing 100 questions) hashed the whole of `stripe_events`
/// for every batch.
pub const FIRST_LOOK: &str = "SELECT q.n, (e.seen IS NOT NULL) AS seen, s.* \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q (event_id, session_id, n) \
     LEFT JOIN LATERAL (SELECT true AS seen FROM stripe_events \
                        WHERE event_id = q.event_id LIMIT 1) e ON true \
     LEFT JOIN LATERAL (SELECT * FROM checkout_sessions \
                        WHERE session_id = q.session_id LIMIT 1) s ON true";

/// For each `(event id, session id)`: whether the event was processed before, and the
/// session's row (none asked for, or none yet), in one statement for all of them, in
/// their order. What every delivery asks first; a redelivery is answered by it alone.
pub async fn first_look(
    conn: &mut AsyncPgConnection,
    asks: &[(&str, Option<&str>)],
) -> QueryResult<Vec<(bool, Option<SessionRow>)>> {
    #[derive(QueryableByName)]
    struct Look {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        seen: bool,
        #[diesel(embed)]
        session: Option<SessionRow>,
    }
    use diesel::sql_types::{Array, Nullable, Text};
    let event_ids: Vec<&str> = asks.iter().map(|(e, _)| *e).collect();
    let session_ids: Vec<Option<&str>> = asks.iter().map(|(_, s)| *s).collect();
    let mut looks: Vec<Look> = super::prepared::prepared(FIRST_LOOK)
        .bind::<Array<Text>, _>(event_ids)
        .bind::<Array<Nullable<Text>>, _>(session_ids)
        .load(conn)
        .await?;
    looks.sort_unstable_by_key(|l| l.n);
    if looks.len() != asks.len() || looks.iter().enumerate().any(|(i, l)| l.n != i as i64 + 1) {
        return Err(diesel::result::Error::DeserializationError(
            format!("{} answers to {} questions", looks.len(), asks.len()).into(),
        ));
    }
    Ok(looks.into_iter().map(|l| (l.seen, l.session)).collect())
}

/// Locks the session's row until the caller's transaction ends, if it exists. Takes the
/// connection shared so that the next read can be pipelined behind it (statements on one
/// connection run in order, so that read still sees everything committed before the lock
/// was granted).
pub async fn lock(conn: &AsyncPgConnection, session_id: &str) -> QueryResult<Option<SessionRow>> {
    checkout_sessions::table
        .find(session_id)
        .select(SessionRow::as_select())
        .for_update()
        .first(&mut { conn })
        .await
        .optional()
}

/// Locks the rows of `session_ids` (sorted, no duplicates) in that order, until the
/// caller's transaction ends; returns those that exist.
/// Takes the connection shared so that the entries' read can be pipelined after it.
pub async fn lock_all(
    conn: &AsyncPgConnection,
    session_ids: &[&str],
) -> QueryResult<Vec<SessionRow>> {
    // Rows are locked as the sorted scan returns them: every group locks in one order.
    checkout_sessions::table
        .filter(checkout_sessions::session_id.eq_any(session_ids))
        .order(checkout_sessions::session_id.asc())
        .select(SessionRow::as_select())
        .for_update()
        .load(&mut { conn })
        .await
}

/// Creates the row (when [`lock`] found none: the fetch lease's row is gone) and locks it
/// until the caller's transaction ends.
pub async fn create_and_lock(
    conn: &mut AsyncPgConnection,
    account: &str,
    session_id: &str,
) -> QueryResult<SessionRow> {
    diesel::insert_into(checkout_sessions::table)
        .values((
            checkout_sessions::session_id.eq(session_id),
            checkout_sessions::account.eq(account),
            checkout_sessions::state.eq(SessionState::Pending),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    lock(conn, session_id)
        .await?
        .ok_or(diesel::result::Error::NotFound)
}

/// Writes `changes` and gives back the fetch lease taken at `held_since` (as
/// [`release_fetch`] does), in one statement.
/// Takes the connection shared so that it can be pipelined with the event's record.
pub async fn update_and_release(
    conn: &AsyncPgConnection,
    session_id: &str,
    changes: &SessionUpdate<'_>,
    held_since: DateTime<Utc>,
) -> QueryResult<SessionRow> {
    let lease_end = held_since + FETCH_LEASE;
    diesel::update(checkout_sessions::table.find(session_id))
        .set((
            changes,
            checkout_sessions::updated_at.eq(diesel::dsl::now),
            // Only the holder's own lease (as in `release_fetch`).
            checkout_sessions::fetch_lease_until.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >("CASE WHEN fetch_lease_until = ")
            .bind::<diesel::sql_types::Timestamptz, _>(lease_end)
            .sql(" THEN NULL ELSE fetch_lease_until END")),
        ))
        .returning(SessionRow::as_returning())
        .get_result(&mut { conn })
        .await
}

impl SessionUpdate<'_> {
    /// `row` with this update's columns written (`updated_at` and the lease are the
    /// database's to set).
    pub fn applied_to(&self, row: &SessionRow) -> SessionRow {
        // Every field named: a column added to the update must be added here too.
        let Self {
            state,
            user_id,
            credits,
            reason,
            stripe_status,
            payment_status,
            payment_intent_id,
            amount_total,
            currency,
            livemode,
            last_event_id,
            reversed_credits,
            attention,
            view_started_at,
        } = *self;
        let owned = |v: Option<&str>| v.map(str::to_owned);
        let or_kept = |v: Option<&str>, kept: &Option<String>| owned(v).or_else(|| kept.clone());
        SessionRow {
            session_id: row.session_id.clone(),
            account: row.account.clone(),
            state: state.unwrap_or(row.state),
            user_id: user_id.map_or_else(|| row.user_id.clone(), owned),
            credits: credits.unwrap_or(row.credits),
            reason: reason.map_or_else(|| row.reason.clone(), owned),
            stripe_status: or_kept(stripe_status, &row.stripe_status),
            payment_status: or_kept(payment_status, &row.payment_status),
            payment_intent_id: or_kept(payment_intent_id, &row.payment_intent_id),
            amount_total: amount_total.or(row.amount_total),
            currency: or_kept(currency, &row.currency),
            livemode: livemode.or(row.livemode),
            last_event_id: or_kept(last_event_id, &row.last_event_id),
            created_at: row.created_at,
            updated_at: row.updated_at,
            reversed_credits: reversed_credits.unwrap_or(row.reversed_credits),
            attention: attention.map_or_else(|| row.attention.clone(), owned),
            fetch_lease_until: row.fetch_lease_until,
            view_started_at: view_started_at.or(row.view_started_at),
        }
    }
}

/// [`update_and_release`] for several locked sessions in one statement: each row written
/// as `rows` give it (from [`SessionUpdate::applied_to`]) and the fetch lease taken at its
/// `held_since` given back. Returns the rows as written, in no particular order.
pub async fn update_all(
    conn: &AsyncPgConnection,
    rows: &[(SessionRow, DateTime<Utc>)],
) -> QueryResult<Vec<SessionRow>> {
    use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz};
    let text = |f: fn(&SessionRow) -> &Option<String>| {
        rows.iter()
            .map(|(r, _)| f(r).as_deref())
            .collect::<Vec<_>>()
    };
    super::prepared::prepared(
        "UPDATE checkout_sessions s \
            SET state = u.state, user_id = u.user_id, credits = u.credits, reason = u.reason, \
                stripe_status = u.stripe_status, payment_status = u.payment_status, \
                payment_intent_id = u.payment_intent_id, amount_total = u.amount_total, \
                currency = u.currency, livemode = u.livemode, last_event_id = u.last_event_id, \
                reversed_credits = u.reversed_credits, attention = u.attention, \
                view_started_at = u.view_started_at, updated_at = now(), \
                fetch_lease_until = CASE WHEN s.fetch_lease_until = u.lease_end THEN NULL \
                                         ELSE s.fetch_lease_until END \
           FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
                       $7::text[], $8::text[], $9::int8[], $10::text[], $11::bool[], \
                       $12::text[], $13::int8[], $14::text[], $15::timestamptz[], \
                       $16::timestamptz[]) \
                AS u (session_id, state, user_id, credits, reason, stripe_status, \
                      payment_status, payment_intent_id, amount_total, currency, livemode, \
                      last_event_id, reversed_credits, attention, view_started_at, lease_end) \
          WHERE s.session_id = u.session_id \
         RETURNING s.session_id, s.account, s.state, s.user_id, s.credits, s.reason, \
                   s.stripe_status, s.payment_status, s.payment_intent_id, s.amount_total, \
                   s.currency, s.livemode, s.last_event_id, s.created_at, s.updated_at, \
                   s.reversed_credits, s.attention, s.fetch_lease_until, s.view_started_at",
    )
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|(r, _)| r.session_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(rows.iter().map(|(r, _)| r.state).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(text(|r| &r.user_id))
    .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|(r, _)| r.credits).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(text(|r| &r.reason))
    .bind::<Array<Nullable<Text>>, _>(text(|r| &r.stripe_status))
    .bind::<Array<Nullable<Text>>, _>(text(|r| &r.payment_status))
    .bind::<Array<Nullable<Text>>, _>(text(|r| &r.payment_intent_id))
    .bind::<Array<Nullable<BigInt>>, _>(
        rows.iter().map(|(r, _)| r.amount_total).collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(text(|r| &r.currency))
    .bind::<Array<Nullable<Bool>>, _>(rows.iter().map(|(r, _)| r.livemode).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(text(|r| &r.last_event_id))
    .bind::<Array<BigInt>, _>(
        rows.iter()
            .map(|(r, _)| r.reversed_credits)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(text(|r| &r.attention))
    .bind::<Array<Nullable<Timestamptz>>, _>(
        rows.iter()
            .map(|(r, _)| r.view_started_at)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Timestamptz>, _>(
        rows.iter()
            .map(|(_, held_since)| *held_since + FETCH_LEASE)
            .collect::<Vec<_>>(),
    )
    .load(&mut { conn })
    .await
}

#[derive(QueryableByName)]
struct ClaimRow {
    #[diesel(embed)]
    session: SessionRow,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    now: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    inserted: bool,
}

/// What [`claim_fetch`] found.
#[derive(Debug)]
pub struct Claim {
    /// Whether this caller now holds the lease.
    pub claimed: bool,
    /// The session's row as it is now (with the lease when claimed); `None` only when
    /// another fulfillment removed it in between.
    pub row: Option<SessionRow>,
    /// Whether the row was created by this claim (nothing was recorded for it before).
    pub inserted: bool,
    /// The database's clock at the claim: when a fetch starting now started, and (when
    /// claimed) the lease's identity ([`release_fetch`]).
    pub now: DateTime<Utc>,
}

/// Takes the fetch lease of a session (creating its row if needed) unless another
/// fulfillment holds an unexpired one, and returns the row as it is after that: one
/// statement when the lease is free (an upsert returns the latest committed row, even
/// after waiting for another transaction's lock), two when it is held.
///
/// The claim is its own transaction and commits without waiting for its WAL flush
/// (`synchronous_commit = off` for that transaction alone): a lease and a pending row are
/// coordination, never money. Other processes see the lease at once, as with any commit;
/// a later synchronous commit (the ledger's) flushes it along, WAL being written in
/// order; only a server crash in between can lose it, which is a lease never taken —
/// at worst a second fetch, which single flight allows (the later view wins). Hence
/// refused inside a transaction, whose commit it would make asynchronous too.
pub async fn claim_fetch(
    conn: &mut AsyncPgConnection,
    account: &str,
    session_id: &str,
    lease: std::time::Duration,
) -> QueryResult<Claim> {
    let mut claims = claim_fetches(conn, &[(account, session_id)], lease).await?;
    claims.pop().ok_or(diesel::result::Error::NotFound)
}

/// [`claim_fetch`] for several sessions (`(account, session_id)`) in one statement (two
/// when some leases are held); the claims come back in the order asked. A session asked
/// for twice is claimed once: the first asking holds the lease, the others find it held.
pub async fn claim_fetches(
    conn: &mut AsyncPgConnection,
    asked: &[(&str, &str)],
    lease: std::time::Duration,
) -> QueryResult<Vec<Claim>> {
    refuse_in_transaction(conn, "claim_fetches")?;
    let mut unique: Vec<(&str, &str)> = Vec::with_capacity(asked.len());
    for &(account, session_id) in asked {
        if !unique.iter().any(|&(_, id)| id == session_id) {
            unique.push((account, session_id));
        }
    }
    let (accounts, ids): (Vec<&str>, Vec<&str>) = unique.iter().copied().unzip();
    // One clock reading per row for its lease and its `now`: `now` identifies the holder.
    // Rows are taken in session-id order, the order every group's transaction locks in.
    let claimed: Vec<ClaimRow> = super::prepared::prepared(
        "INSERT INTO checkout_sessions AS s (session_id, account, state, fetch_lease_until) \
         SELECT q.session_id, q.account, $3, clock_timestamp() + make_interval(secs => $4) \
         FROM unnest($1::text[], $2::text[]) AS q (session_id, account), \
              (SELECT set_config('synchronous_commit', 'off', true)) AS lease_commits_async \
         ORDER BY q.session_id \
         ON CONFLICT (session_id) DO UPDATE SET fetch_lease_until = EXCLUDED.fetch_lease_until \
         WHERE s.fetch_lease_until IS NULL OR s.fetch_lease_until < clock_timestamp() \
         RETURNING s.*, s.fetch_lease_until - make_interval(secs => $4) AS now, \
                   (s.xmax = 0) AS inserted",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&accounts)
    .bind::<diesel::sql_types::Text, _>(SessionState::Pending.as_str())
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .load(conn)
    .await?;
    let by_id = |rows: Vec<ClaimRow>| -> HashMap<String, ClaimRow> {
        rows.into_iter()
            .map(|c| (c.session.session_id.clone(), c))
            .collect()
    };
    let claimed = by_id(claimed);
    // Read again: the sessions whose lease is held, and those asked more than once (a
    // later asking finds the first's lease, and gets a clock reading of its own: `now` is
    // the first's lease identity, never to be shared).
    let mut askings: HashMap<&str, usize> = HashMap::new();
    for &(_, id) in asked {
        *askings.entry(id).or_default() += 1;
    }
    let again: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !claimed.contains_key(*id) || askings[id] > 1)
        .collect();
    let reread = if again.is_empty() {
        HashMap::new()
    } else {
        by_id(
            super::prepared::prepared(
                "SELECT s.*, clock_timestamp() AS now, false AS inserted \
                 FROM checkout_sessions s WHERE session_id = ANY($1)",
            )
            .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&again)
            .load(conn)
            .await?,
        )
    };
    // Every asking neither read answers (its row removed in between) shares one clock
    // reading.
    let unanswered =
        |id: &&str| !reread.contains_key(*id) && (!claimed.contains_key(*id) || askings[id] > 1);
    let absent_now = if ids.iter().any(unanswered) {
        Some(clock(conn).await?)
    } else {
        None
    };
    let mut first = HashSet::new();
    Ok(asked
        .iter()
        .map(|&(_, session_id)| {
            // Only the first asking holds a lease it claimed; the others find it held.
            let holder = first.insert(session_id).then(|| claimed.get(session_id));
            match holder
                .flatten()
                .map(|c| (c, true))
                .or_else(|| reread.get(session_id).map(|c| (c, false)))
            {
                Some((c, held_by_this)) => Claim {
                    claimed: held_by_this,
                    row: Some(c.session.clone()),
                    inserted: held_by_this && c.inserted,
                    now: c.now,
                },
                None => Claim {
                    claimed: false,
                    row: None,
                    inserted: false,
                    // Read above whenever a session is absent.
                    now: absent_now.unwrap_or_else(Utc::now),
                },
            }
        })
        .collect())
}

/// An error when `conn` is inside a transaction: for statements that set a parameter of
/// their own (implicit) transaction.
fn refuse_in_transaction(conn: &mut AsyncPgConnection, what: &str) -> QueryResult<()> {
    use diesel_async::{AsyncConnection, TransactionManager};
    let depth =
        <AsyncPgConnection as AsyncConnection>::TransactionManager::transaction_manager_status_mut(
            conn,
        )
        .transaction_depth()?;
    match depth {
        None => Ok(()),
        Some(_) => Err(diesel::result::Error::QueryBuilderError(
            format!("{what} runs as a transaction of its own, not inside one").into(),
        )),
    }
}

async fn clock(conn: &mut AsyncPgConnection) -> QueryResult<DateTime<Utc>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
        "clock_timestamp()",
    ))
    .get_result(conn)
    .await
}

/// How long a fetch lease lasts unless given back (a crashed holder's runs out).
pub const FETCH_LEASE: std::time::Duration = std::time::Duration::from_secs(20);

/// Gives the fetch lease back (in the caller's transaction, or on its own after a failure).
pub async fn release_fetch(
    conn: &mut AsyncPgConnection,
    session_id: &str,
    held_since: DateTime<Utc>,
) -> QueryResult<()> {
    // Only the holder's own lease: one that expired and was taken by another fulfillment
    // since carries another `now`, and stays.
    super::prepared::prepared(
        "UPDATE checkout_sessions SET fetch_lease_until = NULL \
         WHERE session_id = $1 AND fetch_lease_until = $2 + make_interval(secs => $3)",
    )
    .bind::<diesel::sql_types::Text, _>(session_id)
    .bind::<diesel::sql_types::Timestamptz, _>(held_since)
    .bind::<diesel::sql_types::Double, _>(FETCH_LEASE.as_secs_f64())
    .execute(conn)
    .await
    .map(|_| ())
}

/// Removes the placeholder row of a session Stripe does not know (never fetched).
pub async fn forget_unknown(conn: &mut AsyncPgConnection, session_id: &str) -> QueryResult<()> {
    diesel::delete(
        checkout_sessions::table
            .find(session_id)
            .filter(checkout_sessions::stripe_status.is_null())
            .filter(checkout_sessions::state.eq(SessionState::Pending)),
    )
    .execute(conn)
    .await
    .map(|_| ())
}

/// The session paid with `payment_intent_id`, if fulfill has seen it.
pub async fn find_by_payment_intent(
    conn: &mut AsyncPgConnection,
    account: &str,
    payment_intent_id: &str,
) -> QueryResult<Option<SessionRow>> {
    checkout_sessions::table
        .filter(checkout_sessions::account.eq(account))
        .filter(checkout_sessions::payment_intent_id.eq(payment_intent_id))
        .select(SessionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// An account's sessions recorded as pending (unpaid async payments), oldest first: reconciliation
/// looks at them again whatever their age, so a success whose webhook was lost is healed.
pub async fn pending(
    conn: &mut AsyncPgConnection,
    account: &str,
    limit: i64,
) -> QueryResult<Vec<String>> {
    checkout_sessions::table
        .filter(checkout_sessions::account.eq(account))
        .filter(checkout_sessions::state.eq(SessionState::Pending))
        .filter(checkout_sessions::stripe_status.is_not_null())
        .order(checkout_sessions::created_at.asc())
        .limit(limit)
        .select(checkout_sessions::session_id)
        .load(conn)
        .await
}

/// Sessions that need an operator (not credited, with the reason; or flagged after a
/// reversal), most recently changed first.
pub async fn needing_attention(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> QueryResult<Vec<SessionRow>> {
    checkout_sessions::table
        .filter(
            checkout_sessions::state
                .eq(SessionState::NeedsAttention)
                .or(checkout_sessions::attention.is_not_null()),
        )
        .order(checkout_sessions::updated_at.desc())
        .limit(limit)
        .select(SessionRow::as_select())
        .load(conn)
        .await
}

/// How many sessions [`needing_attention`] lists in all.
pub async fn count_needing_attention(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    checkout_sessions::table
        .filter(
            checkout_sessions::state
                .eq(SessionState::NeedsAttention)
                .or(checkout_sessions::attention.is_not_null()),
        )
        .count()
        .get_result(conn)
        .await
}

/// The connected accounts (stored form) fulfill has recorded sessions for.
pub async fn connected_accounts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<String>> {
    checkout_sessions::table
        .filter(checkout_sessions::account.ne(""))
        .select(checkout_sessions::account)
        .distinct()
        .load(conn)
        .await
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn row() -> SessionRow {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        SessionRow {
            session_id: "cs_1".into(),
            account: "acct_1".into(),
            state: SessionState::Pending,
            user_id: Some("ann".into()),
            credits: Some(3),
            reason: Some("before".into()),
            stripe_status: Some("open".into()),
            payment_status: Some("unpaid".into()),
            payment_intent_id: Some("pi_1".into()),
            amount_total: Some(100),
            currency: Some("eur".into()),
            livemode: Some(false),
            last_event_id: Some("evt_1".into()),
            created_at: at,
            updated_at: at,
            reversed_credits: 1,
            attention: Some("flagged".into()),
            fetch_lease_until: Some(at),
            view_started_at: Some(at),
        }
    }

    fn shown(row: &SessionRow) -> String {
        format!("{row:?}")
    }

    #[test]
    fn an_update_of_nothing_leaves_the_row_as_it_is() {
        let row = row();
        assert_eq!(
            shown(&SessionUpdate::default().applied_to(&row)),
            shown(&row)
        );
    }

    #[test]
    fn an_update_writes_each_of_its_columns_and_only_those() {
        let row = row();
        let later = row.view_started_at.unwrap() + chrono::Duration::seconds(5);
        let update = SessionUpdate {
            state: Some(SessionState::Credited),
            user_id: Some(None),
            credits: Some(Some(10)),
            reason: Some(None),
            stripe_status: Some("complete"),
            payment_status: Some("paid"),
            payment_intent_id: Some("pi_2"),
            amount_total: Some(900),
            currency: Some("usd"),
            livemode: Some(true),
            last_event_id: Some("evt_2"),
            reversed_credits: Some(0),
            attention: Some(None),
            view_started_at: Some(later),
        };
        let want = SessionRow {
            state: SessionState::Credited,
            user_id: None,
            credits: Some(10),
            reason: None,
            stripe_status: Some("complete".into()),
            payment_status: Some("paid".into()),
            payment_intent_id: Some("pi_2".into()),
            amount_total: Some(900),
            currency: Some("usd".into()),
            livemode: Some(true),
            last_event_id: Some("evt_2".into()),
            reversed_credits: 0,
            attention: None,
            view_started_at: Some(later),
            // The database's to set: as they were.
            ..row.clone()
        };
        assert_eq!(shown(&update.applied_to(&row)), shown(&want));
    }
}
