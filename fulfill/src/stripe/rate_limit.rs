//! Spacing Stripe API calls to stay under the configured operations per second.
//!
//! A smooth limiter (one slot every `1/rate` seconds, no bursts): callers reserve the next
//! free slot and sleep until it. It is per process; the budget shared by all fulfill
//! processes is this process's share of `STRIPE_RATE_LIMIT`.

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// `per_second` operations per second (at least one).
    pub fn new(per_second: f64) -> Self {
        let per_second = if per_second.is_finite() && per_second > 0.0 {
            per_second
        } else {
            1.0
        };
        Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_calls_at_the_configured_rate() {
        let limiter = RateLimiter::new(10.0);
        let start = Instant::now();
        for _ in 0..21 {
            limiter.acquire().await;
        }
        // 21 calls at 10/s: the first is immediate, the last 2 s later.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
