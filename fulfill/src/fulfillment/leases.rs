//! Fetch leases taken for many deliveries in one statement.
//!
//! As the first look does: deliveries ask through a channel; a task takes whatever has
//! gathered and claims it with one [`sessions::claim_fetches`]. Nobody waits to fill a
//! batch: a claim asked while a claiming task is free goes out at once, alone. Two tasks
//! claim, so that a batch waiting on a session row another transaction holds (a
//! duplicate's claim behind a group's transaction) does not hold up every other claim.

use super::batch::{Batcher, Reply, reply_each};
use crate::{
    db::{
        Pool,
        sessions::{self, Claim},
    },
    error::FulfillError,
};

/// Claims made by one statement, at most.
const MAX_BATCH: usize = 64;
/// Claiming tasks per process: claim statements in flight at once.
const CLAIMERS: usize = 2;

struct Ask {
    account: String,
    session_id: String,
}

pub(super) struct Leases {
    batcher: Batcher<Ask, Claim>,
}

impl Leases {
    pub(super) fn new(pool: Pool) -> Self {
        Self {
            batcher: Batcher::new("lease", CLAIMERS, MAX_BATCH, move |asks| {
                claim(pool.clone(), asks)
            }),
        }
    }

    /// [`sessions::claim_fetch`] for this session, with the others asked meanwhile.
    pub(super) async fn claim(
        &self,
        account: &str,
        session_id: &str,
    ) -> Result<Claim, FulfillError> {
        self.batcher
            .ask(Ask {
                account: account.to_owned(),
                session_id: session_id.to_owned(),
            })
            .await
    }
}

async fn claim(pool: Pool, mut asks: Vec<(Ask, Reply<Claim>)>) {
    // An asker that is gone (its caller dropped: a success page's client that left)
    // claims nothing: its lease would only hold others up until it expired.
    asks.retain(|(_, reply)| !reply.is_closed());
    if asks.is_empty() {
        return;
    }
    let claimed = async {
        let mut conn = pool.get().await?;
        let asked: Vec<(&str, &str)> = asks
            .iter()
            .map(|(a, _)| (a.account.as_str(), a.session_id.as_str()))
            .collect();
        let claims = sessions::claim_fetches(&mut conn, &asked, sessions::FETCH_LEASE).await?;
        Ok::<_, FulfillError>((conn, claims))
    }
    .await;
    match claimed {
        Ok((mut conn, claims)) => {
            for ((ask, reply), claim) in asks.into_iter().zip(claims) {
                let (claimed, now) = (claim.claimed, claim.now);
                // One that left meanwhile gives its lease back at once (best effort: it
                // expires anyway).
                if reply.send(Ok(claim)).is_err() && claimed {
                    let _ = sessions::release_fetch(&mut conn, &ask.session_id, now).await;
                }
            }
        }
        Err(e) => reply_each(
            asks.into_iter().map(|(_, reply)| reply),
            Err::<Vec<Claim>, _>(e),
        ),
    }
}
