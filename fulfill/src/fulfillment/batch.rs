//! What the batching tasks of a fulfiller (the first look, the fetch leases, group
//! commit) share: a few tasks that each take whatever asks gathered while they were
//! busy and handle them as one batch, answering each asker.
//!
//! Nobody waits to fill a batch: an ask made while a task is free is handled at once,
//! alone. Asks gather only while every task is busy, which is when each would otherwise
//! have queued anyway.

use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, OnceLock},
};

use futures_util::{FutureExt, future::BoxFuture};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::FulfillError;

pub(super) type Reply<T> = oneshot::Sender<Result<T, FulfillError>>;

/// The asks waiting, shared by a batcher's tasks.
type Asks<Q, A> = Arc<Mutex<mpsc::UnboundedReceiver<(Q, Reply<A>)>>>;

type Handler<Q, A> = Arc<dyn Fn(Vec<(Q, Reply<A>)>) -> BoxFuture<'static, ()> + Send + Sync>;

/// Asks of type `Q`, answered with `A` by `tasks` tasks, at most `max` asks a batch.
pub(super) struct Batcher<Q, A> {
    /// What the tasks do, for the error of an asker they left.
    name: &'static str,
    tasks: usize,
    max: usize,
    handle: Handler<Q, A>,
    /// Started on first use, inside the runtime; the tasks end when this is dropped.
    asks: OnceLock<mpsc::UnboundedSender<(Q, Reply<A>)>>,
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// `handle` gets each batch with its askers' replies, and must answer each one.
    pub(super) fn new<F, Fut>(name: &'static str, tasks: usize, max: usize, handle: F) -> Self
    where
        F: Fn(Vec<(Q, Reply<A>)>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            name,
            tasks: tasks.max(1),
            max,
            handle: Arc::new(move |batch| handle(batch).boxed()),
            asks: OnceLock::new(),
        }
    }

    /// Hands `ask` over and waits for its answer.
    pub(super) async fn ask(&self, ask: Q) -> Result<A, FulfillError> {
        let asks = self.asks.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..self.tasks {
                tokio::spawn(serve(
                    self.name,
                    Arc::clone(&rx),
                    self.max,
                    Arc::clone(&self.handle),
                ));
            }
            tx
        });
        let (reply, answer) = oneshot::channel();
        asks.send((ask, reply)).map_err(|_| gone(self.name))?;
        answer.await.unwrap_or_else(|_| Err(gone(self.name)))
    }
}

/// One task: a batch at a time. Ends when every sender is gone (the fulfiller dropped).
///
/// A batch that panics fails its own askers (their replies are dropped unanswered: a
/// transient error, and the delivery is retried) and the task goes on with the next.
/// Were the task to end with it, every later ask of a batcher whose tasks had all ended
/// would fail, and every delivery after a single panic be retried until dead-lettered.
async fn serve<Q, A>(name: &'static str, asks: Asks<Q, A>, max: usize, handle: Handler<Q, A>) {
    let mut batch = Vec::with_capacity(max);
    loop {
        let taken = asks.lock().await.recv_many(&mut batch, max).await;
        if taken == 0 {
            return;
        }
        let batch = std::mem::take(&mut batch);
        // Inside the async block, so that a panic building the future is caught too.
        let handled = AssertUnwindSafe(async { handle(batch).await })
            .catch_unwind()
            .await;
        if let Err(panic) = handled {
            tracing::error!(
                task = name,
                asks = taken,
                panic = panic_message(panic.as_ref()),
                "a batch panicked; its askers fail (retried), the task goes on"
            );
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Sends each asker its answer, in order; when the batch's statement failed, each fails
/// as it would have alone (a database error: transient, retried).
pub(super) fn reply_each<T>(
    replies: impl IntoIterator<Item = Reply<T>>,
    answers: Result<Vec<T>, FulfillError>,
) {
    match answers {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Err(e) => {
            let message = shared::telemetry::error_chain(&e);
            for reply in replies {
                let _ = reply.send(Err(failed(&message)));
            }
        }
    }
}

/// What an asker gets when no task answered it: the fulfiller dropped, the runtime
/// shutting down, or its batch panicked.
fn gone(task: &str) -> FulfillError {
    failed(&format!("the {task} task did not answer"))
}

fn failed(message: &str) -> FulfillError {
    FulfillError::Database(diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new(message.to_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doubler() -> Batcher<u32, u32> {
        Batcher::new("test", 1, 4, |asks: Vec<(u32, Reply<u32>)>| async move {
            assert!(asks.iter().all(|(q, _)| *q != 13), "thirteen");
            for (q, reply) in asks {
                let _ = reply.send(Ok(q * 2));
            }
        })
    }

    #[tokio::test]
    async fn a_batch_that_panics_fails_its_askers_and_the_task_serves_the_next() {
        let batcher = doubler();
        assert_eq!(batcher.ask(1).await.unwrap(), 2);
        let failed = batcher.ask(13).await.unwrap_err();
        assert!(failed.is_transient(), "{failed}");
        let chain = crate::error::error_chain(&failed);
        assert!(chain.contains("the test task did not answer"), "{chain}");
        // The only task is still there.
        assert_eq!(batcher.ask(2).await.unwrap(), 4);
        let (a, b) = tokio::join!(batcher.ask(3), batcher.ask(4));
        assert_eq!((a.unwrap(), b.unwrap()), (6, 8));
    }
}
