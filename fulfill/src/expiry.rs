//! The expiry sweep: what is left of expired lots leaves the balance as one `expiry`
//! entry per user and pass, exactly once however many fulfill processes sweep at once
//! (each user is decided under the balance row lock, and a second sweeper then finds
//! nothing left). Credits reserved by active holds do not expire under them: holds
//! reserve the soonest-expiring credits, so they are kept out of the amount expired.

use std::time::Duration;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tokio_util::sync::CancellationToken;

use crate::{
    db::{
        Pool,
        ledger::{self, NewEntry},
        lots, spending,
    },
    error::FulfillError,
};

/// How often the sweep runs: expired credits leave within this (plus a pass's work).
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Users handled per pass.
const BATCH: i64 = 500;

/// How much of the user's expired credits expire now: what the holds do not reserve, and
/// never more than what is available.
pub fn to_expire(expired_remaining: i64, totals: &spending::Totals) -> i64 {
    (expired_remaining - totals.held)
        .min(totals.available())
        .max(0)
}

/// One pass: expires what is due for up to [`BATCH`] users; returns how many entries.
pub async fn sweep(pool: &Pool) -> Result<usize, FulfillError> {
    let users = {
        let mut conn = pool.get().await?;
        lots::users_with_expired(&mut conn, BATCH).await?
    };
    let mut written = 0;
    for (account, user) in users {
        let mut conn = pool.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        let wrote = conn
            .transaction(async |conn: &mut AsyncPgConnection| {
                expire_user(conn, &account, &user).await
            })
            .await?;
        written += usize::from(wrote);
    }
    Ok(written)
}

/// Expires what is due for one user of `account` (`''`: the platform), in the caller's
/// transaction.
pub async fn expire_user(
    conn: &mut AsyncPgConnection,
    account: &str,
    user_id: &str,
) -> Result<bool, FulfillError> {
    let totals = spending::lock_totals(conn, account, user_id).await?;
    let expired = lots::expired_remaining(conn, account, user_id, Utc::now()).await?;
    let amount = to_expire(expired, &totals);
    if amount == 0 {
        return Ok(false);
    }
    // Unique per state of the balance: a second sweeper of the same moment collides.
    // The platform's keys keep their form from before Connect.
    let key = if account.is_empty() {
        format!("expiry:{user_id}:{}", totals.sequence + 1)
    } else {
        format!("expiry:{account}:{user_id}:{}", totals.sequence + 1)
    };
    Ok(ledger::append(
        conn,
        &NewEntry {
            account,
            user_id,
            delta: -amount,
            reason: "expiry",
            idempotency_key: &key,
            ..NewEntry::default()
        },
    )
    .await?)
}

/// Sweeps every [`SWEEP_EVERY`] until `stop`.
pub async fn run(pool: Pool, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        match sweep(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "expired credits"),
            Err(e) => tracing::warn!(error = %crate::error::error_chain(&e), "expiry sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn totals(credits: i64, held: i64) -> spending::Totals {
        spending::Totals {
            credits,
            held,
            sequence: 0,
        }
    }

    #[test]
    fn held_credits_do_not_expire_under_their_hold() {
        assert_eq!(to_expire(10, &totals(100, 4)), 6);
        assert_eq!(to_expire(10, &totals(100, 10)), 0);
        assert_eq!(to_expire(10, &totals(100, 0)), 10);
    }

    #[test]
    fn nothing_expires_from_a_balance_already_taken_below_zero() {
        assert_eq!(to_expire(10, &totals(-5, 0)), 0);
    }

    proptest! {
        #[test]
        fn expiry_never_takes_available_below_zero_nor_more_than_expired(
            expired in 0i64..10_000, credits in -10_000i64..10_000, held in 0i64..10_000,
        ) {
            let t = totals(credits, held);
            let x = to_expire(expired, &t);
            prop_assert!(x >= 0);
            prop_assert!(x <= expired);
            prop_assert!(x == 0 || t.available() - x >= 0);
        }
    }
}
