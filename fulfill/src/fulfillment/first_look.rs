//! The first question of every delivery (was its event processed, and what is its
//! session's row) asked for many deliveries in one statement.
//!
//! Deliveries ask through a channel; a task takes whatever has gathered and answers it
//! with one [`sessions::first_look`]. Nobody waits to fill a batch: a question asked
//! while nothing is in flight goes out at once, alone. Questions gather only while the
//! previous statement is out, which is when a round trip per delivery would have queued
//! anyway (with two statements out the batches stayed near one question). Draining
//! redeliveries, a round trip (and its system calls on both ends) then serves a dozen
//! deliveries instead of one.

use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use crate::{
    db::{
        Pool,
        sessions::{self, SessionRow},
    },
    error::FulfillError,
};

/// Questions answered by one statement, at most.
const MAX_BATCH: usize = 64;

/// Whether the event was processed before, and the session's row (when one was asked
/// for and exists).
pub(super) type Answer = (bool, Option<SessionRow>);

struct Ask {
    event_id: String,
    session_id: Option<String>,
    reply: super::batch::Reply<Answer>,
}

pub(super) struct FirstLook {
    pool: Pool,
    /// Started on first use, inside the runtime.
    asks: OnceLock<mpsc::UnboundedSender<Ask>>,
}

impl FirstLook {
    pub(super) fn new(pool: Pool) -> Self {
        Self {
            pool,
            asks: OnceLock::new(),
        }
    }

    pub(super) async fn ask(
        &self,
        event_id: &str,
        session_id: Option<&str>,
    ) -> Result<Answer, FulfillError> {
        let asks = self.asks.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(answer_all(self.pool.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            event_id: event_id.to_owned(),
            session_id: session_id.map(str::to_owned),
            reply,
        };
        if asks.send(ask).is_err() {
            return Err(super::batch::gone("first-look"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(super::batch::gone("first-look")))
    }
}

/// Ends when every sender is gone (the fulfiller dropped). One statement out at a time:
/// what is asked meanwhile waits in the channel and goes with the next one.
async fn answer_all(pool: Pool, mut asks: mpsc::UnboundedReceiver<Ask>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while asks.recv_many(&mut batch, MAX_BATCH).await > 0 {
        answer(&pool, std::mem::take(&mut batch)).await;
    }
}

async fn answer(pool: &Pool, questions: Vec<Ask>) {
    let looked = async {
        let mut conn = pool.get().await?;
        let asked: Vec<(&str, Option<&str>)> = questions
            .iter()
            .map(|q| (q.event_id.as_str(), q.session_id.as_deref()))
            .collect();
        Ok::<_, FulfillError>(sessions::first_look(&mut conn, &asked).await?)
    }
    .await;
    super::batch::reply_each(questions.into_iter().map(|q| q.reply), looked);
}
