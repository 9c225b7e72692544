//! Holds: credits reserved for a later capture. A hold is `active` until captured or
//! released; at `expires_at` it stops counting by itself (its status reads `expired`),
//! with nothing to sweep.

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, Queryable, QueryableByName,
    Selectable, SelectableHelper,
    dsl::sql,
    sql_types::{BigInt, Bool, Nullable, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use super::schema::holds;

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = holds)]
pub struct Hold {
    pub hold_id: String,
    /// The user's account (`''`: the platform's).
    pub account: String,
    pub user_id: String,
    pub amount: i64,
    pub status: String,
    pub captured: Option<i64>,
    pub reason: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub settled: Option<Value>,
}

/// A hold as its status is reported: `active` past `expires_at` is `expired`.
pub fn effective_status(stored: &str, unexpired: bool) -> &str {
    if stored == "active" && !unexpired {
        "expired"
    } else {
        stored
    }
}

/// Creates an active hold expiring `ttl_secs` from now (the database's clock).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    hold_id: &str,
    account: &str,
    user_id: &str,
    amount: i64,
    ttl_secs: i64,
    reason: Option<&str>,
) -> QueryResult<Hold> {
    super::prepared::prepared(
        "INSERT INTO holds (hold_id, account, user_id, amount, reason, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) \
         RETURNING hold_id, account, user_id, amount, status, captured, reason, expires_at, settled",
    )
    .bind::<Text, _>(hold_id)
    .bind::<Text, _>(account)
    .bind::<Text, _>(user_id)
    .bind::<BigInt, _>(amount)
    .bind::<Nullable<Text>, _>(reason)
    .bind::<diesel::sql_types::Double, _>(ttl_secs as f64)
    .get_result(conn)
    .await
}

/// The hold and whether it is still before its `expires_at`, unlocked.
pub async fn find(
    conn: &mut AsyncPgConnection,
    hold_id: &str,
) -> QueryResult<Option<(Hold, bool)>> {
    holds::table
        .find(hold_id)
        .select((Hold::as_select(), sql::<Bool>("expires_at > now()")))
        .first(conn)
        .await
        .optional()
}

/// The hold, locked for the caller's transaction.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    hold_id: &str,
) -> QueryResult<Option<(Hold, bool)>> {
    holds::table
        .find(hold_id)
        .select((Hold::as_select(), sql::<Bool>("expires_at > now()")))
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Records how the hold ended and the answer given, repeated when asked again.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    hold_id: &str,
    status: &str,
    captured: Option<i64>,
    answer: &Value,
) -> QueryResult<()> {
    diesel::update(holds::table.find(hold_id))
        .set((
            holds::status.eq(status),
            holds::captured.eq(captured),
            holds::settled.eq(answer),
            holds::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
