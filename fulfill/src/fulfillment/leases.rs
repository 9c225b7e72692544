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

async fn claim(pool: &Pool, asks: Vec<Ask>) {
    let claimed = async {
        let mut conn = pool.get().await?;
        let asked: Vec<(&str, &str)> = asks
            .iter()
            .map(|a| (a.account.as_str(), a.session_id.as_str()))
            .collect();
        Ok::<_, FulfillError>(
            sessions::claim_fetches(&mut conn, &asked, sessions::FETCH_LEASE).await?,
        )
    }
    .await;
    super::batch::reply_each(asks.into_iter().map(|a| a.reply), claimed);
}
