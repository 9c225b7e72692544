//! Fetch leases taken for many deliveries in one statement.
//!
//! As the first look does: deliveries ask through a channel; a task takes whatever has
//! gathered and claims it with one [`sessions::claim_fetches`]. Nobody waits to fill a
//! batch: a claim asked while a claiming task is free goes out at once, alone. Two tasks
//! claim, so that a batch waiting on a session row another transaction holds (a
//! duplicate's claim behind a group's transaction) does not hold up every other claim.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::batch::{Reply, gone};
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
    reply: Reply<Claim>,
}

pub(super) struct Leases {
    pool: Pool,
    /// Started on first use, inside the runtime.
    asks: OnceLock<mpsc::UnboundedSender<Ask>>,
}

impl Leases {
    pub(super) fn new(pool: Pool) -> Self {
        Self {
            pool,
            asks: OnceLock::new(),
        }
    }

    /// [`sessions::claim_fetch`] for this session, with the others asked meanwhile.
    pub(super) async fn claim(
        &self,
        account: &str,
        session_id: &str,
    ) -> Result<Claim, FulfillError> {
        let asks = self.asks.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..CLAIMERS {
                tokio::spawn(claim_all(self.pool.clone(), Arc::clone(&rx)));
            }
            tx
        });
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            account: account.to_owned(),
            session_id: session_id.to_owned(),
            reply,
        };
        asks.send(ask).map_err(|_| gone("lease"))?;
        answer.await.unwrap_or_else(|_| Err(gone("lease")))
    }
}

/// Ends when every sender is gone (the fulfiller dropped).
async fn claim_all(pool: Pool, asks: Arc<Mutex<mpsc::UnboundedReceiver<Ask>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let taken = asks.lock().await.recv_many(&mut batch, MAX_BATCH).await;
        if taken == 0 {
            return;
        }
        claim(&pool, std::mem::take(&mut batch)).await;
    }
}

async fn claim(pool: &Pool, mut asks: Vec<Ask>) {
    // An asker that is gone (its caller dropped: a success page's client that left)
    // claims nothing: its lease would only hold others up until it expired.
    asks.retain(|a| !a.reply.is_closed());
    if asks.is_empty() {
        return;
    }
    let claimed = async {
        let mut conn = pool.get().await?;
        let asked: Vec<(&str, &str)> = asks
            .iter()
            .map(|a| (a.account.as_str(), a.session_id.as_str()))
            .collect();
        let claims = sessions::claim_fetches(&mut conn, &asked, sessions::FETCH_LEASE).await?;
        Ok::<_, FulfillError>((conn, claims))
    }
    .await;
    match claimed {
        Ok((mut conn, claims)) => {
            for (ask, claim) in asks.into_iter().zip(claims) {
                let (claimed, now) = (claim.claimed, claim.now);
                // One that left meanwhile gives its lease back at once (best effort: it
                // expires anyway).
                if ask.reply.send(Ok(claim)).is_err() && claimed {
                    let _ = sessions::release_fetch(&mut conn, &ask.session_id, now).await;
                }
            }
        }
        Err(e) => {
            super::batch::reply_each(asks.into_iter().map(|a| a.reply), Err::<Vec<Claim>, _>(e))
        }
    }
}
