//! What the batching tasks of a fulfiller (the first look, the fetch leases, group
//! commit) share: answering each asker of a batch, and the error an asker gets when its
//! batch failed or the task is gone.

use tokio::sync::oneshot;

use crate::error::FulfillError;

pub(super) type Reply<T> = oneshot::Sender<Result<T, FulfillError>>;

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

/// What an asker gets when the task answering it is gone (the fulfiller dropped, or the
/// runtime shutting down).
pub(super) fn gone(task: &str) -> FulfillError {
    failed(&format!("the {task} task is gone"))
}

fn failed(message: &str) -> FulfillError {
    FulfillError::Database(diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new(message.to_owned()),
    ))
}
