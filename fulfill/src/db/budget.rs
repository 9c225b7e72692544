//! The Stripe rate budget shared by every fulfill process: one row per Stripe account
//! (`stripe` for the platform, `stripe:acct_…` for a connected account) holding the next
//! free slot, handed out on the database's clock (`UPDATE … RETURNING`), so the budget
//! holds for any number of processes.

use diesel::{
    QueryResult, QueryableByName,
    sql_types::{Bool, Double, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(QueryableByName)]
struct Wait {
    #[diesel(sql_type = Double)]
    wait_secs: f64,
    #[diesel(sql_type = Bool)]
    taken: bool,
}

/// What [`take_slot`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// Taken: wait this long for it.
    Taken(std::time::Duration),
    /// Not taken: the next free slot is this far away, beyond the caller's bound.
    TooFar(std::time::Duration),
}

/// Takes the next slot of budget `name`, `interval` after the previous one, unless it is
/// more than `bound` away. The row is first clamped to at most `cap` ahead of the
/// database's clock, so a clock stepped back (or any older write) stalls nobody for longer
/// than `cap`. A budget never used before (a connected account's first call) is created.
pub async fn take_slot(
    conn: &mut AsyncPgConnection,
    name: &str,
    interval: std::time::Duration,
    cap: std::time::Duration,
    bound: Option<std::time::Duration>,
) -> QueryResult<Slot> {
    let rows: Vec<Wait> = super::prepared::prepared(
        "WITH now AS (SELECT clock_timestamp() AS t), \
         slot AS (SELECT GREATEST(LEAST(b.next_slot, now.t + make_interval(secs => $2)), now.t) AS at, now.t \
                  FROM stripe_rate_budget b, now WHERE b.name = $4 FOR UPDATE OF b), \
         taken AS ( \
            UPDATE stripe_rate_budget SET next_slot = slot.at + make_interval(secs => $1) \
            FROM slot WHERE name = $4 AND ($3 < 0 OR slot.at <= slot.t + make_interval(secs => $3)) \
            RETURNING 1) \
         SELECT EXTRACT(EPOCH FROM (slot.at - slot.t))::float8 AS wait_secs, \
                EXISTS (SELECT 1 FROM taken) AS taken \
         FROM slot",
    )
    .bind::<Double, _>(interval.as_secs_f64())
    .bind::<Double, _>(cap.as_secs_f64())
    .bind::<Double, _>(bound.map_or(-1.0, |b| b.as_secs_f64()))
    .bind::<Text, _>(name)
    .load(conn)
    .await?;
    let Some(row) = rows.into_iter().next() else {
        // First use of this budget: create its row, then take from it like everyone.
        create(conn, name).await?;
        return Box::pin(take_slot(conn, name, interval, cap, bound)).await;
    };
    let wait = std::time::Duration::from_secs_f64(row.wait_secs.max(0.0));
    Ok(if row.taken {
        Slot::Taken(wait)
    } else {
        Slot::TooFar(wait)
    })
}

/// Nobody gets a slot before `pause` has passed (Stripe answered 429); never further out
/// than `cap` from now, whatever the row held before.
pub async fn pause(
    conn: &mut AsyncPgConnection,
    name: &str,
    pause: std::time::Duration,
    cap: std::time::Duration,
) -> QueryResult<()> {
    super::prepared::prepared(
        "UPDATE stripe_rate_budget \
         SET next_slot = GREATEST(LEAST(next_slot, clock_timestamp() + make_interval(secs => $2)), \
                                  clock_timestamp() + make_interval(secs => LEAST($1, $2))) \
         WHERE name = $3",
    )
    .bind::<Double, _>(pause.as_secs_f64())
    .bind::<Double, _>(cap.as_secs_f64())
    .bind::<Text, _>(name)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Creates budget `name` with its next slot free now (a no-op when it exists).
async fn create(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<()> {
    super::prepared::prepared(
        "INSERT INTO stripe_rate_budget (name, next_slot) VALUES ($1, clock_timestamp()) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind::<Text, _>(name)
    .execute(conn)
    .await
    .map(|_| ())
}
