//! The Stripe rate budget shared by every fulfill process: one row holding the next free
//! slot, handed out on the database's clock (`UPDATE … RETURNING`), so the budget holds for
//! any number of processes.

use diesel::{QueryResult, QueryableByName, sql_types::Double};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(QueryableByName)]
struct Wait {
    #[diesel(sql_type = Double)]
    wait_secs: f64,
}

/// Takes the next slot, `interval` after the previous one; returns how long to wait for it.
pub async fn take_slot(
    conn: &mut AsyncPgConnection,
    interval: std::time::Duration,
) -> QueryResult<std::time::Duration> {
    let row: Wait = diesel::sql_query(
        "UPDATE stripe_rate_budget \
         SET next_slot = GREATEST(next_slot, clock_timestamp()) + make_interval(secs => $1) \
         WHERE name = 'stripe' \
         RETURNING EXTRACT(EPOCH FROM (next_slot - make_interval(secs => $1) - clock_timestamp()))::float8 AS wait_secs",
    )
    .bind::<Double, _>(interval.as_secs_f64())
    .get_result(conn)
    .await?;
    Ok(std::time::Duration::from_secs_f64(row.wait_secs.max(0.0)))
}

/// Nobody gets a slot before `pause` has passed (Stripe answered 429).
pub async fn pause(conn: &mut AsyncPgConnection, pause: std::time::Duration) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE stripe_rate_budget \
         SET next_slot = GREATEST(next_slot, clock_timestamp() + make_interval(secs => $1)) \
         WHERE name = 'stripe'",
    )
    .bind::<Double, _>(pause.as_secs_f64())
    .execute(conn)
    .await
    .map(|_| ())
}
