//! The first question of every delivery (was its event processed, and what is its
//! session's row) asked for many deliveries in one statement.
//!
//! Deliveries ask through a channel; a task takes whatever has gathered and answers it
//! with one [`sessions::first_look`]. Nobody waits to fill a batch: a question asked
//! while nothing is in flight goes out at once, alone. Questions gather only while
//! [`IN_FLIGHT`] statements are already out, which is when a round trip per delivery
//! would have queued anyway. Draining redeliveries, a round trip (and its system calls
//! on both ends) then serves a dozen deliveries instead of one.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    db::{
        Pool,
        sessions::{self, SessionRow},
    },
    error::FulfillError,
};

/// Questions answered by one statement, at most.
const MAX_BATCH: usize = 64;
/// Statements out at once.
const IN_FLIGHT: usize = 1;

/// Whether the event was processed before, and the session's row (when one was asked
/// for and exists).
pub(super) type Answer = (bool, Option<SessionRow>);

struct Ask {
    event_id: String,
    session_id: Option<String>,
    reply: oneshot::Sender<Result<Answer, FulfillError>>,
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
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// Ends when every sender is gone (the fulfiller dropped).
async fn answer_all(pool: Pool, mut asks: mpsc::UnboundedReceiver<Ask>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while asks.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        // What gathered while waiting for the permit goes too.
        while batch.len() < MAX_BATCH {
            match asks.try_recv() {
                Ok(ask) => batch.push(ask),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let questions = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        tokio::spawn(async move {
            answer(&pool, questions).await;
            drop(permit);
        });
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
    match looked {
        Ok(answers) => {
            for (q, a) in questions.into_iter().zip(answers) {
                let _ = q.reply.send(Ok(a));
            }
        }
        Err(e) => {
            // Each delivery fails as it would have alone: transient, retried.
            let message = shared::telemetry::error_chain(&e);
            for q in questions {
                let _ = q.reply.send(Err(failed(&message)));
            }
        }
    }
}

fn failed(message: &str) -> FulfillError {
    FulfillError::Database(diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new(message.to_owned()),
    ))
}

fn gone() -> FulfillError {
    failed("the first-look task is gone")
}
