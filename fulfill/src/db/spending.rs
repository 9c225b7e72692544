//! A user's spendable totals (users are an account's: `account` is `''` for the
//! platform, see [`crate::domain::account`]), read under the balance row lock.
//!
//! Every spending decision (debit, hold) and every expiry locks the user's `balances` row
//! with `SELECT … FOR UPDATE` before it looks at what is available, and every ledger
//! entry moves that row ([`super::ledger::append_entry`]): the database serialises
//! decisions about one balance across every fulfill process, so `available` never goes
//! below zero through spending.

use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::balances;

/// `credits` (the ledger's sum), `held` (what active holds reserve) and the counter of
/// the user's entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub credits: i64,
    pub held: i64,
    pub sequence: i64,
}

impl Totals {
    pub fn available(&self) -> i64 {
        self.credits - self.held
    }
}

/// Locks the user's balance row (if any) for the caller's transaction and reads the
/// totals. A user never credited has nothing to lock and nothing to spend.
pub async fn lock_totals(
    conn: &mut AsyncPgConnection,
    account: &str,
    user_id: &str,
) -> QueryResult<Totals> {
    let row: Option<(i64, i64)> = balances::table
        .filter(balances::account.eq(account))
        .filter(balances::user_id.eq(user_id))
        .select((balances::credits, balances::sequence))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some((credits, sequence)) = row else {
        return Ok(Totals::default());
    };
    // A statement of its own, after the lock: under READ COMMITTED a query's snapshot is
    // taken when it starts, so a held sum read in the locking statement itself would
    // miss holds committed by the transaction it waited for (and overdraw; the test of
    // concurrent debits and holds caught it). The locked row is re-read, a subquery not.
    Ok(Totals {
        credits,
        held: held(conn, account, user_id).await?,
        sequence,
    })
}

/// The totals without locking (for reads).
pub async fn totals(
    conn: &mut AsyncPgConnection,
    account: &str,
    user_id: &str,
) -> QueryResult<Totals> {
    let row: Option<(i64, i64)> = balances::table
        .filter(balances::account.eq(account))
        .filter(balances::user_id.eq(user_id))
        .select((balances::credits, balances::sequence))
        .first(conn)
        .await
        .optional()?;
    let Some((credits, sequence)) = row else {
        return Ok(Totals::default());
    };
    Ok(Totals {
        credits,
        held: held(conn, account, user_id).await?,
        sequence,
    })
}

/// What the user's active, unexpired holds reserve (by the database's clock).
pub async fn held(conn: &mut AsyncPgConnection, account: &str, user_id: &str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = BigInt)]
        held: i64,
    }
    super::prepared::prepared(
        "SELECT COALESCE(SUM(amount), 0)::int8 AS held FROM holds \
          WHERE account = $1 AND user_id = $2 AND status = 'active' AND expires_at > now()",
    )
    .bind::<Text, _>(account)
    .bind::<Text, _>(user_id)
    .get_result::<Held>(conn)
    .await
    .map(|h| h.held)
}
