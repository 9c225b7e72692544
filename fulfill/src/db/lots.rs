//! Credit lots: what is left of each positive ledger entry and when it expires.
//!
//! Written only by the ledger's entry writes ([`super::ledger::append_entry`],
//! [`super::ledger::announce_all`]), after they have moved (and so locked) the user's
//! balance row: every change to one user's lots is serialised by that lock.
//! The invariant kept is Σ remaining = max(credits, 0): a positive entry that only pays
//! back a negative balance (credits taken back after they were spent) creates less.

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods, QueryDsl, QueryResult, QueryableByName,
    dsl::sql,
    sql_types::{Array, BigInt, Jsonb, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{
    events::Record,
    ledger::{LotSpec, NewEntry},
    outbox::EntryRow,
    prepared::{Binds, Prepared},
    schema::credit_lots,
};

/// The lots a positive entry creates, given the balance after it: the whole delta split
/// as `specs` say (empty: one lot that never expires), less whatever paid back a negative
/// balance, taken from the soonest-expiring first.
pub fn lots_for(delta: i64, specs: &[LotSpec], credits_after: i64) -> Vec<LotSpec> {
    let mut lots: Vec<LotSpec> = if specs.is_empty() {
        vec![LotSpec {
            credits: delta,
            expires_at: None,
        }]
    } else {
        let mut lots = specs.to_vec();
        // Whatever the specs leave out of the delta never expires.
        let covered: i64 = lots.iter().map(|l| l.credits).sum();
        if covered < delta {
            lots.push(LotSpec {
                credits: delta - covered,
                expires_at: None,
            });
        }
        lots
    };
    lots.sort_by_key(|l| (l.expires_at.is_none(), l.expires_at));
    let mut deficit = delta - credits_after.clamp(0, delta);
    for lot in &mut lots {
        let paid = lot.credits.min(deficit);
        lot.credits -= paid;
        deficit -= paid;
    }
    lots.retain(|l| l.credits > 0);
    lots
}

/// The start of a statement that also records the Stripe event behind an entry: a
/// `recorded` CTE on placeholders `$1`–`$4` (nothing when `$1`, the event id, is NULL),
/// ending in a comma so that the statement's own CTEs follow.
macro_rules! recorded_cte {
    () => {
        "WITH recorded AS ( \
             INSERT INTO stripe_events (event_id, event_type, object_id, outcome) \
             SELECT $1, $2, $3, $4 WHERE $1 IS NOT NULL \
             ON CONFLICT DO NOTHING), "
    };
}

/// `sql` (which starts with `recorded_cte!()`) with `record` bound to `$1`–`$4`; the
/// statement's own binds follow from `$5`.
fn with_recorded<'r>(
    sql: &'static str,
    record: Option<&Record<'r>>,
) -> Prepared<impl Binds + Send + Sync + 'r> {
    super::prepared::prepared(sql)
        .bind::<Nullable<Text>, _>(record.map(|r| r.event_id))
        .bind::<Nullable<Text>, _>(record.map(|r| r.event_type))
        .bind::<Nullable<Text>, _>(record.and_then(|r| r.object_id))
        .bind::<Nullable<Text>, _>(record.map(|r| r.outcome))
}

/// The lots a positive entry creates, its credit event (`event`) and the record of the
/// Stripe event behind it when there is one, in one statement: one round trip, and one
/// statement for PostgreSQL to run instead of three.
pub(super) async fn create_and_announce(
    conn: &AsyncPgConnection,
    entry: &NewEntry<'_>,
    entry_id: i64,
    credits_after: i64,
    event: &EntryRow,
    record: Option<&Record<'_>>,
) -> QueryResult<()> {
    let (credits, expires_at): (Vec<i64>, Vec<Option<DateTime<Utc>>>) =
        lots_for(entry.delta, &entry.lots, credits_after)
            .into_iter()
            .map(|lot| (lot.credits, lot.expires_at))
            .unzip();
    // A data-modifying WITH runs whether or not the rest reads it; no lots (the whole
    // delta paid back a negative balance) is an empty unnest.
    with_recorded(
        concat!(
            recorded_cte!(),
            "created AS ( \
             INSERT INTO credit_lots (account, user_id, entry_id, stripe_session_id, \
                    credits, remaining, expires_at) \
             SELECT $5, $6, $7, $8, l.credits, l.credits, l.expires_at \
               FROM unnest($9::int8[], $10::timestamptz[]) WITH ORDINALITY \
                    AS l (credits, expires_at, n) \
              ORDER BY l.n) \
         INSERT INTO credit_events (event_id, routing_key, account, user_id, sequence, payload) \
         VALUES ($11, $12, $5, $6, $13, $14)",
        ),
        record,
    )
    .bind::<Text, _>(entry.account)
    .bind::<Text, _>(entry.user_id)
    .bind::<BigInt, _>(entry_id)
    .bind::<Nullable<Text>, _>(entry.stripe_session_id)
    .bind::<Array<BigInt>, _>(credits)
    .bind::<Array<Nullable<Timestamptz>>, _>(expires_at)
    .bind::<Text, _>(&event.event_id)
    .bind::<Text, _>(&event.routing_key)
    .bind::<BigInt, _>(event.sequence)
    .bind::<Jsonb, _>(&event.payload)
    .execute(&mut { conn })
    .await?;
    Ok(())
}

/// [`create_and_announce`] for several positive entries (of distinct users) and the
/// records of the Stripe events behind them and behind sessions without entries: one
/// statement.
pub(super) async fn create_and_announce_all(
    conn: &AsyncPgConnection,
    entries: &[(&NewEntry<'_>, i64, i64)],
    events: &[EntryRow],
    records: &[Record<'_>],
) -> QueryResult<()> {
    if let Some((entry, _, _)) = entries.iter().find(|(e, _, _)| e.delta <= 0) {
        return Err(diesel::result::Error::QueryBuilderError(
            format!(
                "create_and_announce_all takes positive entries ({})",
                entry.idempotency_key
            )
            .into(),
        ));
    }
    let lots: Vec<(&NewEntry<'_>, i64, LotSpec)> = entries
        .iter()
        .flat_map(|(entry, entry_id, credits_after)| {
            lots_for(entry.delta, &entry.lots, *credits_after)
                .into_iter()
                .map(move |lot| (*entry, *entry_id, lot))
        })
        .collect();
    let (account, user): (Vec<&str>, Vec<&str>) = entries
        .iter()
        .map(|(e, _, _)| (e.account, e.user_id))
        .unzip();
    super::prepared::prepared(
        "WITH recorded AS ( \
             INSERT INTO stripe_events (event_id, event_type, object_id, outcome) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
             ON CONFLICT DO NOTHING), \
         created AS ( \
             INSERT INTO credit_lots (account, user_id, entry_id, stripe_session_id, \
                    credits, remaining, expires_at) \
             SELECT l.account, l.user_id, l.entry_id, l.session_id, l.credits, l.credits, \
                    l.expires_at \
               FROM unnest($5::text[], $6::text[], $7::int8[], $8::text[], $9::int8[], \
                           $10::timestamptz[]) WITH ORDINALITY \
                    AS l (account, user_id, entry_id, session_id, credits, expires_at, n) \
              ORDER BY l.n) \
         INSERT INTO credit_events (event_id, routing_key, account, user_id, sequence, payload) \
         SELECT e.event_id, e.routing_key, e.account, e.user_id, e.sequence, e.payload \
           FROM unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::int8[], \
                       $16::jsonb[]) WITH ORDINALITY \
                AS e (event_id, routing_key, account, user_id, sequence, payload, n) \
          ORDER BY e.n",
    )
    .bind::<Array<Text>, _>(records.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(records.iter().map(|r| r.event_type).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(records.iter().map(|r| r.object_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(records.iter().map(|r| r.outcome).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(lots.iter().map(|(e, _, _)| e.account).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(lots.iter().map(|(e, _, _)| e.user_id).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(lots.iter().map(|(_, id, _)| *id).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        lots.iter()
            .map(|(e, _, _)| e.stripe_session_id)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(lots.iter().map(|(_, _, l)| l.credits).collect::<Vec<_>>())
    .bind::<Array<Nullable<Timestamptz>>, _>(
        lots.iter()
            .map(|(_, _, l)| l.expires_at)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(
        events
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(
        events
            .iter()
            .map(|e| e.routing_key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(account)
    .bind::<Array<Text>, _>(user)
    .bind::<Array<BigInt>, _>(events.iter().map(|e| e.sequence).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(events.iter().map(|e| &e.payload).collect::<Vec<_>>())
    .execute(&mut { conn })
    .await?;
    Ok(())
}

/// Takes `amount` from the user's lots: the session's own lot first (a reversal takes
/// back what that purchase gave), then the soonest-expiring, then those that never
/// expire. Takes what there is when there is less (a reversal of spent credits). The
/// same statement writes the entry's credit event (`event`) and the record of the Stripe
/// event behind it when there is one: one round trip.
pub(super) async fn consume_and_announce(
    conn: &AsyncPgConnection,
    entry: &NewEntry<'_>,
    amount: i64,
    event: &EntryRow,
    record: Option<&Record<'_>>,
) -> QueryResult<()> {
    with_recorded(
        concat!(
            recorded_cte!(),
            "ordered AS ( \
             SELECT id, remaining, \
                    sum(remaining) OVER (ORDER BY COALESCE(stripe_session_id = $7, false) DESC, \
                                         expires_at ASC NULLS LAST, id) - remaining AS before \
               FROM credit_lots WHERE account = $5 AND user_id = $6 AND remaining > 0), \
         consumed AS ( \
             UPDATE credit_lots l \
                SET remaining = l.remaining - LEAST(o.remaining, $8 - o.before) \
               FROM ordered o \
              WHERE l.id = o.id AND o.before < $8) \
         INSERT INTO credit_events (event_id, routing_key, account, user_id, sequence, payload) \
         VALUES ($9, $10, $5, $6, $11, $12)",
        ),
        record,
    )
    .bind::<Text, _>(entry.account)
    .bind::<Text, _>(entry.user_id)
    .bind::<Nullable<Text>, _>(entry.stripe_session_id)
    .bind::<BigInt, _>(amount)
    .bind::<Text, _>(&event.event_id)
    .bind::<Text, _>(&event.routing_key)
    .bind::<BigInt, _>(event.sequence)
    .bind::<Jsonb, _>(&event.payload)
    .execute(&mut { conn })
    .await?;
    Ok(())
}

/// Credits in the user's lots that expired by `now` and are still there.
pub async fn expired_remaining(
    conn: &mut AsyncPgConnection,
    account: &str,
    user_id: &str,
    now: DateTime<Utc>,
) -> QueryResult<i64> {
    credit_lots::table
        .filter(credit_lots::account.eq(account))
        .filter(credit_lots::user_id.eq(user_id))
        .filter(credit_lots::remaining.gt(0))
        .filter(credit_lots::expires_at.le(now))
        .select(sql::<BigInt>("COALESCE(SUM(remaining), 0)::int8"))
        .first(conn)
        .await
}

#[derive(QueryableByName)]
struct UserRow {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = Text)]
    user_id: String,
}

/// Users with expired credits left beyond what their active holds reserve (held credits
/// are the soonest-expiring ones, and do not expire under a hold), at most `limit`, as
/// (account, user id).
pub async fn users_with_expired(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> QueryResult<Vec<(String, String)>> {
    let rows: Vec<UserRow> = diesel::sql_query(
        "SELECT l.account, l.user_id FROM credit_lots l \
          WHERE l.remaining > 0 AND l.expires_at <= now() \
          GROUP BY l.account, l.user_id \
         HAVING sum(l.remaining) > COALESCE((SELECT sum(h.amount) FROM holds h \
                 WHERE h.account = l.account AND h.user_id = l.user_id AND h.status = 'active' AND h.expires_at > now()), 0) \
          LIMIT $1",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.account, r.user_id)).collect())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn at(day: u32) -> Option<DateTime<Utc>> {
        Utc.with_ymd_and_hms(2027, 1, day, 0, 0, 0).single()
    }

    #[test]
    fn an_entry_without_specs_is_one_lot_that_never_expires() {
        assert_eq!(
            lots_for(10, &[], 10),
            vec![LotSpec {
                credits: 10,
                expires_at: None
            }]
        );
    }

    #[test]
    fn what_the_specs_leave_out_never_expires() {
        let lots = lots_for(
            10,
            &[LotSpec {
                credits: 4,
                expires_at: at(2),
            }],
            10,
        );
        assert_eq!(
            lots,
            vec![
                LotSpec {
                    credits: 4,
                    expires_at: at(2)
                },
                LotSpec {
                    credits: 6,
                    expires_at: None
                }
            ]
        );
    }

    #[test]
    fn paying_back_a_negative_balance_takes_the_soonest_expiring_credits_first() {
        let specs = [
            LotSpec {
                credits: 5,
                expires_at: None,
            },
            LotSpec {
                credits: 5,
                expires_at: at(3),
            },
        ];
        // The balance was -7: 3 credits are left, all from the lot that never expires.
        assert_eq!(
            lots_for(10, &specs, 3),
            vec![LotSpec {
                credits: 3,
                expires_at: None
            }]
        );
        assert!(lots_for(10, &specs, -1).is_empty());
    }

    proptest! {
        #[test]
        fn lots_always_sum_to_what_the_entry_added_to_a_non_negative_balance(
            parts in proptest::collection::vec((1i64..1000, proptest::option::of(1u32..28)), 0..5),
            before in -5000i64..5000,
        ) {
            let specs: Vec<LotSpec> = parts
                .iter()
                .map(|(c, d)| LotSpec { credits: *c, expires_at: d.and_then(at) })
                .collect();
            let delta: i64 = specs.iter().map(|l| l.credits).sum::<i64>().max(1);
            let after = before + delta;
            let lots = lots_for(delta, &specs, after);
            let sum: i64 = lots.iter().map(|l| l.credits).sum();
            prop_assert_eq!(sum, after.max(0).min(delta));
            prop_assert!(lots.iter().all(|l| l.credits > 0));
        }
    }
}
