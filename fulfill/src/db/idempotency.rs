//! `Idempotency-Key`: the first answer to a request, kept with a fingerprint of the
//! request (endpoint, user, body) under the account's namespace of keys and written in the request's own transaction, so a
//! refused request (rolled back) leaves no trace and its key may be used again.
//!
//! Two requests with the same key at once: the second's `INSERT` waits on the unique key
//! until the first commits (then it replays) or rolls back (then it runs).

use diesel::{ExpressionMethods, QueryDsl, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use super::schema::idempotency_keys;

#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// First use: go ahead, then [`complete`].
    New,
    /// The same request again: answer this.
    Replay { status: u16, response: Value },
    /// The key was used for another request.
    Reused,
}

pub async fn claim(
    conn: &mut AsyncPgConnection,
    account: &str,
    key: &str,
    fingerprint: &str,
) -> QueryResult<Claim> {
    let inserted = diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::account.eq(account),
            idempotency_keys::key.eq(key),
            idempotency_keys::fingerprint.eq(fingerprint),
            idempotency_keys::status.eq(0_i16),
            idempotency_keys::response.eq(Value::Null),
        ))
        .on_conflict((idempotency_keys::account, idempotency_keys::key))
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let (stored, status, response): (String, i16, Value) = idempotency_keys::table
        .find((account, key))
        .select((
            idempotency_keys::fingerprint,
            idempotency_keys::status,
            idempotency_keys::response,
        ))
        .first(conn)
        .await?;
    Ok(if stored == fingerprint {
        Claim::Replay {
            status: u16::try_from(status).unwrap_or(200),
            response,
        }
    } else {
        Claim::Reused
    })
}

pub async fn complete(
    conn: &AsyncPgConnection,
    account: &str,
    key: &str,
    status: u16,
    response: &Value,
) -> QueryResult<()> {
    diesel::update(idempotency_keys::table.find((account, key)))
        .set((
            idempotency_keys::status.eq(i16::try_from(status).unwrap_or(200)),
            idempotency_keys::response.eq(response),
        ))
        .execute(&mut { conn })
        .await?;
    Ok(())
}
