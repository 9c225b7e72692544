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

use super::batch::{Batcher, Reply, reply_each};
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
}

pub(super) struct FirstLook {
    /// One task: one statement out at a time; what is asked meanwhile goes with the next.
    batcher: Batcher<Ask, Answer>,
}

impl FirstLook {
    pub(super) fn new(pool: Pool) -> Self {
        Self {
            batcher: Batcher::new("first-look", 1, MAX_BATCH, move |questions| {
                answer(pool.clone(), questions)
            }),
        }
    }

    pub(super) async fn ask(
        &self,
        event_id: &str,
        session_id: Option<&str>,
    ) -> Result<Answer, FulfillError> {
        self.batcher
            .ask(Ask {
                event_id: event_id.to_owned(),
                session_id: session_id.map(str::to_owned),
            })
            .await
    }
}

async fn answer(pool: Pool, questions: Vec<(Ask, Reply<Answer>)>) {
    let looked = async {
        let mut conn = pool.get().await?;
        let asked: Vec<(&str, Option<&str>)> = questions
            .iter()
            .map(|(q, _)| (q.event_id.as_str(), q.session_id.as_deref()))
            .collect();
        Ok::<_, FulfillError>(sessions::first_look(&mut conn, &asked).await?)
    }
    .await;
    reply_each(questions.into_iter().map(|(_, reply)| reply), looked);
}
