//! Spending the Stripe API budget (`STRIPE_RATE_LIMIT` operations per second) across every
//! fulfill process together.
//!
//! The budget is one account's, so it is shared through the one thing every fulfill process
//! already shares: PostgreSQL. A single row holds the next free slot; each call takes the
//! slot with one `UPDATE … RETURNING` (`next_slot = max(next_slot, now) + 1/rate`, on the
//! database's clock, so the processes' clocks do not matter) and sleeps until it. The
//! result is a smooth limiter over the whole fleet whatever the number of replicas
//! (autoscaling changes nothing), at the price of one tiny write per Stripe call. A 429
//! from Stripe (another integration on the same account spending budget) pushes the next
//! slot out for everyone. Per-process shares (rate ÷ replicas) were the alternative: they
//! waste budget whenever fewer replicas run than planned and overspend when more do.
//!
//! `Local` is the same algorithm in memory, for a process that has the budget to itself.

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

use super::StripeError;
use crate::db::{Pool, budget};

#[derive(Debug)]
pub enum RateLimiter {
    Local {
        interval: Duration,
        next: Mutex<Instant>,
    },
    Shared {
        pool: Pool,
        interval: Duration,
    },
}

fn interval(per_second: f64) -> Duration {
    let per_second = if per_second.is_finite() && per_second > 0.0 {
        per_second
    } else {
        1.0
    };
    Duration::from_secs_f64(1.0 / per_second)
}

impl RateLimiter {
    /// `per_second` operations per second for this process alone.
    pub fn local(per_second: f64) -> Self {
        Self::Local {
            interval: interval(per_second),
            next: Mutex::new(Instant::now()),
        }
    }

    /// `per_second` operations per second for every process using this database.
    pub fn shared(pool: Pool, per_second: f64) -> Self {
        Self::Shared {
            pool,
            interval: interval(per_second),
        }
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) -> Result<(), StripeError> {
        let wait = match self {
            Self::Local { interval, next } => {
                let mut next = next.lock().await;
                let now = Instant::now();
                let slot = (*next).max(now);
                *next = slot + *interval;
                slot - now
            }
            Self::Shared { pool, interval } => {
                let mut conn = pool
                    .get()
                    .await
                    .map_err(|e| StripeError::Budget(e.to_string()))?;
                budget::take_slot(&mut conn, *interval)
                    .await
                    .map_err(|e| StripeError::Budget(e.to_string()))?
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Stripe said 429: nobody calls again before `pause` has passed.
    pub async fn pause_all(&self, pause: Duration) {
        match self {
            Self::Local { next, .. } => {
                let mut next = next.lock().await;
                *next = (*next).max(Instant::now() + pause);
            }
            Self::Shared { pool, .. } => {
                if let Ok(mut conn) = pool.get().await {
                    let _ = budget::pause(&mut conn, pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_calls_at_the_configured_rate() {
        let limiter = RateLimiter::local(10.0);
        let start = Instant::now();
        for _ in 0..21 {
            limiter.acquire().await.unwrap();
        }
        // 21 calls at 10/s: the first is immediate, the last 2 s later.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_delays_the_next_call() {
        let limiter = RateLimiter::local(100.0);
        let start = Instant::now();
        limiter.pause_all(Duration::from_secs(1)).await;
        limiter.acquire().await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1));
    }
}
