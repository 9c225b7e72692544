//! How a delivery is settled, from what processing it came to and how often it was tried.

use std::time::Duration;

/// How a failure is classed for settling (see `FulfillError::failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again later: Stripe or the database unavailable, a view not yet
    /// showing what its event announced.
    Transient,
    /// A message no retry will help (Stripe says the object does not exist, a bug).
    Permanent,
    /// Not something fulfill can ever process.
    Poison,
    /// Stripe refuses the key: a fault of the configuration, not of the message.
    KeyRejected,
}

/// Why a message went to the dead-letter queue (its `x-dead-kind` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    Poison,
    Permanent,
    /// Transient failures, too many times.
    Exhausted,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poison => "poison",
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    /// Give it back to the queue as it is (the consumer stops until the key works again).
    Requeue,
    /// Park in the retry queue for about `delay` (the edge adds jitter below it).
    Retry {
        delay: Duration,
    },
    DeadLetter {
        kind: DeadLetterKind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

/// `attempts` counts this one (1 for a first delivery).
pub fn settle(result: Result<(), Failure>, attempts: u32, policy: &RetryPolicy) -> Settlement {
    match result {
        Ok(()) => Settlement::Ack,
        Err(Failure::Transient) if attempts < policy.max_attempts => Settlement::Retry {
            delay: policy
                .base
                .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
                .min(policy.max),
        },
        Err(Failure::Transient) => Settlement::DeadLetter {
            kind: DeadLetterKind::Exhausted,
        },
        Err(Failure::Permanent) => Settlement::DeadLetter {
            kind: DeadLetterKind::Permanent,
        },
        Err(Failure::Poison) => Settlement::DeadLetter {
            kind: DeadLetterKind::Poison,
        },
        // However often: a rolled key must never dead-letter the stream.
        Err(Failure::KeyRejected) => Settlement::Requeue,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_secs(1),
        max: Duration::from_secs(10),
    };

    #[test]
    fn a_success_is_acked() {
        assert_eq!(settle(Ok(()), 1, &POLICY), Settlement::Ack);
    }

    #[test]
    fn transient_failures_retry_with_doubling_capped_delays_then_dead_letter() {
        let delays: Vec<Settlement> = (1..=5)
            .map(|a| settle(Err(Failure::Transient), a, &POLICY))
            .collect();
        let secs = |s| Settlement::Retry {
            delay: Duration::from_secs(s),
        };
        assert_eq!(
            delays,
            [
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                Settlement::DeadLetter {
                    kind: DeadLetterKind::Exhausted
                }
            ]
        );
    }

    #[test]
    fn a_rejected_key_requeues_whatever_the_attempt_count() {
        for attempts in [1, 5, 1000] {
            assert_eq!(
                settle(Err(Failure::KeyRejected), attempts, &POLICY),
                Settlement::Requeue
            );
        }
    }

    #[test]
    fn permanent_failures_and_poison_dead_letter_at_once() {
        assert_eq!(
            settle(Err(Failure::Permanent), 1, &POLICY),
            Settlement::DeadLetter {
                kind: DeadLetterKind::Permanent
            }
        );
        assert_eq!(
            settle(Err(Failure::Poison), 1, &POLICY),
            Settlement::DeadLetter {
                kind: DeadLetterKind::Poison
            }
        );
    }

    proptest! {
        #[test]
        fn a_retry_never_waits_longer_than_the_cap(attempts in 1u32..1000) {
            let policy = RetryPolicy { max_attempts: u32::MAX, ..POLICY };
            match settle(Err(Failure::Transient), attempts, &policy) {
                Settlement::Retry { delay } => prop_assert!(delay <= policy.max && delay >= policy.base.min(policy.max)),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
