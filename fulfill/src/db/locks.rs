//! Session-level PostgreSQL advisory locks: one holder across every fulfill process.

use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Serialises migrations across fulfill processes starting together.
pub const MIGRATIONS: i64 = 0x0066_756c_6669_6c6c; // "fulfill"
/// One background reconciliation at a time.
pub const RECONCILE: i64 = 0x0072_6563_6f6e_6369; // "reconci"

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

/// Takes `lock` if free; held until [`unlock`] or the connection closes.
pub async fn try_lock(conn: &mut AsyncPgConnection, lock: i64) -> QueryResult<bool> {
    diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<diesel::sql_types::BigInt, _>(lock)
        .get_result::<Locked>(conn)
        .await
        .map(|l| l.locked)
}

pub async fn unlock(conn: &mut AsyncPgConnection, lock: i64) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<diesel::sql_types::BigInt, _>(lock)
        .execute(conn)
        .await
        .map(|_| ())
}
