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
//! Whose budget a call with `Stripe-Account` spends is a choice ([`RateLimitScope`],
//! `STRIPE_RATE_LIMIT_SCOPE`). Stripe documents only that "rate limits are measured in API
//! requests per second, per Stripe account" (<https://docs.stripe.com/rate-limits>) and, for
//! Connect, that it "has established rate limits and allocations"
//! (<https://docs.stripe.com/connect/authentication>); it does not say which account a
//! platform's call for a connected account counts against. We infer that such a call, made
//! "to act as a connected account" (<https://docs.stripe.com/api/connected-accounts>),
//! counts for that account, so by default ([`RateLimitScope::Account`]) each account has
//! a budget of its own: the platform's row is `stripe`, a connected account's
//! `stripe:acct_…` (created on its first call), and one busy connected account never slows
//! another, nor the platform. [`RateLimitScope::Platform`] draws every call on the
//! platform's one row instead, whatever its `Stripe-Account`: for when Stripe answers 429s
//! for connected accounts whose own traffic is low.
//!
//! `Local` is the same algorithm in memory, for a process that has the budget to itself.
//!
//! Nothing can push the next slot further out than [`MAX_PAUSE`] from now: not a
//! `Retry-After` (Stripe's, or a proxy's in between, which could say an hour), and not a
//! step of the database's clock (a slot written an hour ahead by a clock that was then
//! stepped back): the row is clamped on every write, and every wait too.
//!
//! A caller may take its slot first and fetch later ([`prepaid`]): fulfillment takes the
//! slot before the session's fetch lease, so nobody holds a lease while queueing for
//! budget, and the success page refuses to queue beyond a bound ([`RateLimiter::acquire_within`]).

use std::{cell::Cell, collections::HashMap, future::Future, time::Duration};

use tokio::{sync::Mutex, time::Instant};

use super::StripeError;
use crate::{
    db::{Pool, budget},
    domain::account::Account,
};

/// Whose budget a call made for a connected account spends (`STRIPE_RATE_LIMIT_SCOPE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RateLimitScope {
    /// The connected account's own (a budget row per account): Stripe counting a call with
    /// `Stripe-Account` for that account, as we infer.
    #[default]
    Account,
    /// The platform's one budget, whatever the call's `Stripe-Account`.
    Platform,
}

impl RateLimitScope {
    /// The budget a call for `account` draws on.
    pub fn budget_of(self, account: &Account) -> Account {
        match self {
            Self::Account => account.clone(),
            Self::Platform => Account::PLATFORM,
        }
    }
}

impl std::str::FromStr for RateLimitScope {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "account" => Ok(Self::Account),
            "platform" => Ok(Self::Platform),
            _ => Err("expected \"account\" or \"platform\""),
        }
    }
}

/// The longest any caller waits for budget, and the furthest a pause reaches.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

tokio::task_local! {
    /// Set while the task holds a slot taken ahead: its next call spends it.
    static PREPAID: Cell<bool>;
}

/// Runs `work` with one slot already taken (by [`RateLimiter::acquire`] or
/// [`RateLimiter::acquire_within`] just before): its first Stripe call does not take another.
pub async fn prepaid<F: Future>(work: F) -> F::Output {
    PREPAID.scope(Cell::new(true), work).await
}

fn spend_prepaid() -> bool {
    PREPAID.try_with(|p| p.replace(false)).unwrap_or(false)
}

/// A pause as it may reach the budget: at most [`MAX_PAUSE`].
pub fn capped(pause: Duration) -> Duration {
    pause.min(MAX_PAUSE)
}

#[derive(Debug)]
pub enum RateLimiter {
    Local {
        interval: Duration,
        /// The next free slot, per account.
        next: Mutex<HashMap<Account, Instant>>,
    },
    Shared {
        pool: Pool,
        interval: Duration,
        /// Slots taken from the row but not used yet, per account: at high budgets
        /// ([`block_size`] > 1) one update takes the next [`BLOCK_SPAN`] of slots.
        blocks: std::sync::Mutex<HashMap<Account, Slots>>,
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
            next: Mutex::new(HashMap::new()),
        }
    }

    /// `per_second` operations per second for every process using this database.
    pub fn shared(pool: Pool, per_second: f64) -> Self {
        Self::Shared {
            pool,
            interval: interval(per_second),
            blocks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Waits for this caller's slot in `account`'s budget (or spends the one taken ahead,
    /// see [`prepaid`]).
    pub async fn acquire(&self, account: &Account) -> Result<(), StripeError> {
        if spend_prepaid() {
            return Ok(());
        }
        self.take(account, None).await.map(drop)
    }

    /// Takes a slot only if it is at most `bound` away (waiting for it); otherwise takes
    /// nothing and says how long until the next free slot (the success page answers 503
    /// with it). Returns the slot taken, so that an unused one can be [given
    /// back](Self::give_back).
    pub async fn acquire_within(
        &self,
        account: &Account,
        bound: Option<Duration>,
    ) -> Result<Instant, StripeError> {
        match self.take(account, bound).await? {
            Ok(slot) => Ok(slot),
            Err(retry_after) => Err(StripeError::BudgetBusy { retry_after }),
        }
    }

    /// A slot taken and not used (the call it was for turned out not to be needed): the
    /// next call of this process for `account` takes it instead of a new one, if it comes
    /// within [`LATE_AT_MOST`] of the slot. Budget a process takes and then does not spend
    /// is budget nobody spends.
    pub fn give_back(&self, account: &Account, slot: Instant) {
        match self {
            Self::Local { interval, next } => {
                // The last slot taken is simply not taken; an earlier one is lost.
                if let Ok(mut slots) = next.try_lock()
                    && let Some(next) = slots.get_mut(account)
                    && *next == slot + *interval
                {
                    *next = slot;
                }
            }
            Self::Shared { blocks, .. } => {
                if let Ok(mut b) = blocks.lock() {
                    b.entry(account.clone()).or_default().spares.push(slot);
                }
            }
        }
    }

    /// Waits for the slot and returns it, or `Err(wait)` when `bound` was given and the
    /// slot is further away (nothing taken).
    async fn take(
        &self,
        account: &Account,
        bound: Option<Duration>,
    ) -> Result<Result<Instant, Duration>, StripeError> {
        let now = Instant::now();
        let wait = match self {
            Self::Local { interval, next } => {
                let mut slots = next.lock().await;
                let next = slots.entry(account.clone()).or_insert(now);
                let slot = (*next).max(now).min(now + MAX_PAUSE);
                let wait = slot - now;
                if bound.is_some_and(|b| wait > b) {
                    return Ok(Err(wait));
                }
                *next = slot + *interval;
                wait
            }
            Self::Shared {
                pool,
                interval,
                blocks,
            } => {
                // A held slot, as the wait from the moment it was taken.
                let held = || {
                    let now = Instant::now();
                    blocks
                        .lock()
                        .ok()
                        .and_then(|mut b| b.get_mut(account)?.take(now, *interval, bound))
                        .map(|wait| (now, wait))
                };
                let n = block_size(*interval);
                let mut taken = held();
                // With blocks the refill is single-flight (`Slots::refill`): the callers that
                // found the block spent wait for the one refilling it and take from what
                // it took. With one slot per update every caller takes its own.
                let mut refilling = None;
                if taken.is_none()
                    && n > 1
                    && let Some(refill) = blocks.lock().ok().map(|mut b| {
                        std::sync::Arc::clone(&b.entry(account.clone()).or_default().refill)
                    })
                {
                    refilling = Some(refill.lock_owned().await);
                    taken = held();
                }
                let (at, wait) = match taken {
                    Some(held) => held,
                    None => {
                        let mut conn = pool
                            .get()
                            .await
                            .map_err(|e| StripeError::Budget(e.to_string()))?;
                        let now = Instant::now();
                        match budget::take_slot(
                            &mut conn,
                            &account.budget_name(),
                            *interval * n,
                            MAX_PAUSE,
                            bound,
                        )
                        .await
                        .map_err(|e| StripeError::Budget(e.to_string()))?
                        {
                            budget::Slot::Taken(wait) => {
                                if n > 1
                                    && let Ok(mut b) = blocks.lock()
                                {
                                    b.entry(account.clone()).or_default().block = Some(Block {
                                        next: now + wait + *interval,
                                        left: n - 1,
                                    });
                                }
                                (now, wait)
                            }
                            budget::Slot::TooFar(wait) => return Ok(Err(wait)),
                        }
                    }
                };
                drop(refilling);
                // From now on: the waits above (for the pool, for the refill) count.
                (at + wait).saturating_duration_since(now)
            }
        };
        let wait = wait.min(MAX_PAUSE);
        if !wait.is_zero() {
            tokio::time::sleep_until(now + wait).await;
        }
        Ok(Ok(now + wait))
    }

    /// Stripe said 429 for `account`: nobody calls for it again before `pause` (at most
    /// [`MAX_PAUSE`]) has passed.
    pub async fn pause_all(&self, account: &Account, pause: Duration) {
        let pause = capped(pause);
        match self {
            Self::Local { next, .. } => {
                let mut slots = next.lock().await;
                let now = Instant::now();
                let next = slots.entry(account.clone()).or_insert(now);
                *next = (*next).max(now + pause);
            }
            Self::Shared { pool, blocks, .. } => {
                // Slots taken before the 429 are not spent after it (the refill lock
                // stays: a refill under way is still the only one).
                if let Ok(mut b) = blocks.lock()
                    && let Some(slots) = b.get_mut(account)
                {
                    slots.block = None;
                    slots.spares.clear();
                }
                if let Ok(mut conn) = pool.get().await {
                    let _ =
                        budget::pause(&mut conn, &account.budget_name(), pause, MAX_PAUSE).await;
                }
            }
        }
    }
}

/// How far ahead one update of the budget row takes slots. At the budgets Stripe grants
/// (25 or 100 per second, or a raised limit of a few hundred) that is a single slot, as
/// before; only a budget far above what the fleet can spend (e.g. a stand-in for Stripe
/// in a benchmark) takes several, so that the one row is not updated on every call.
pub const BLOCK_SPAN: Duration = Duration::from_millis(10);
const MAX_BLOCK: u32 = 1024;
/// How late a slot given back may still be used by another call of the process.
pub const LATE_AT_MOST: Duration = Duration::from_millis(50);
/// How late a slot of a block may still be used (only budgets above 100/s have blocks).
/// Longer than [`LATE_AT_MOST`]: spending a block late bunches at most the block's own
/// slots ([`BLOCK_SPAN`] of the budget), and a block that lasts lets a process below the
/// budget update the row about once a second instead of every 60 ms (the throughput
/// benchmark: 0.13 → ~0.01 updates per credited session).
pub const BLOCK_LATE_AT_MOST: Duration = Duration::from_secs(1);

/// Slots taken per update of the budget row: those within [`BLOCK_SPAN`], at least one.
pub fn block_size(interval: Duration) -> u32 {
    // Integer division: a fraction of a slot is not taken.
    let n = BLOCK_SPAN.as_nanos() / interval.as_nanos().max(1);
    u32::try_from(n).unwrap_or(MAX_BLOCK).clamp(1, MAX_BLOCK)
}

/// What a process holds of one account's budget besides the row: a block of slots
/// taken ahead, and slots given back unused.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    pub block: Option<Block>,
    pub spares: Vec<Instant>,
    /// One refill of the block at a time: the callers that found it spent wait for that
    /// one update and share what it took, instead of each queueing on the row's lock for
    /// a block of its own.
    pub refill: std::sync::Arc<Mutex<()>>,
}

impl Slots {
    /// The wait for a slot held here (a spare first, then the block), if one is fresh and
    /// within `bound`.
    pub fn take(
        &mut self,
        now: Instant,
        interval: Duration,
        bound: Option<Duration>,
    ) -> Option<Duration> {
        self.spares.retain(|s| *s + LATE_AT_MOST >= now);
        let within = |wait: Duration| bound.is_none_or(|b| wait <= b);
        if let Some((i, _)) = self
            .spares
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| **s)
            .filter(|(_, s)| within(s.saturating_duration_since(now)))
        {
            return Some(self.spares.swap_remove(i).saturating_duration_since(now));
        }
        let block = self.block.as_mut()?;
        let mut peek = *block;
        let wait = peek.take(now, interval)?;
        if within(wait) {
            *block = peek;
            Some(wait)
        } else {
            None
        }
    }
}

/// Slots of one account's budget already taken from the row.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    /// When the next of them is.
    pub next: Instant,
    pub left: u32,
}

impl Block {
    /// The wait for the next slot of the block, if one is left and not stale: a slot more
    /// than [`BLOCK_LATE_AT_MOST`] in the past is dropped rather than spent late. Calls
    /// bunch up by at most the block's slots.
    pub fn take(&mut self, now: Instant, interval: Duration) -> Option<Duration> {
        if self.left == 0 || self.next + BLOCK_LATE_AT_MOST < now {
            self.left = 0;
            return None;
        }
        let wait = self.next.saturating_duration_since(now);
        self.next += interval;
        self.left -= 1;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Account = Account::PLATFORM;

    #[test]
    fn stripes_budgets_take_one_slot_per_update_and_only_huge_ones_take_more() {
        for per_second in [1.0, 25.0, 100.0] {
            assert_eq!(block_size(interval(per_second)), 1, "{per_second}/s");
        }
        assert_eq!(block_size(interval(1_000.0)), 10);
        assert_eq!(block_size(interval(100_000.0)), 1000);
        assert_eq!(block_size(interval(10_000_000.0)), 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_hands_out_its_slots_spaced_by_the_interval_then_is_empty() {
        let now = Instant::now();
        let step = Duration::from_millis(1);
        let mut block = Block {
            next: now + step,
            left: 2,
        };
        assert_eq!(block.take(now, step), Some(step));
        assert_eq!(block.take(now, step), Some(step * 2));
        assert_eq!(block.take(now, step), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_given_back_is_taken_before_the_block_and_only_while_fresh() {
        let now = Instant::now();
        let step = Duration::from_millis(1);
        let mut slots = Slots {
            block: Some(Block {
                next: now + step * 5,
                left: 1,
            }),
            spares: vec![now + step * 2, now - LATE_AT_MOST - step],
            ..Slots::default()
        };
        // The fresh spare first, the stale one dropped, then the block, then nothing.
        assert_eq!(slots.take(now, step, None), Some(step * 2));
        assert!(slots.spares.is_empty());
        assert_eq!(slots.take(now, step, None), Some(step * 5));
        assert_eq!(slots.take(now, step, None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_slot_further_than_the_bound_is_kept() {
        let now = Instant::now();
        let step = Duration::from_millis(10);
        let mut slots = Slots {
            block: None,
            spares: vec![now + step * 3],
            ..Slots::default()
        };
        assert_eq!(slots.take(now, step, Some(step)), None);
        assert_eq!(slots.spares.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_slot_given_back_is_the_next_one_taken() {
        let limiter = RateLimiter::local(1.0);
        let start = Instant::now();
        limiter.acquire(&P).await.unwrap();
        let slot = limiter.acquire_within(&P, None).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        limiter.give_back(&P, slot);
        // Taken again at once instead of a second later.
        let again = limiter.acquire_within(&P, None).await.unwrap();
        assert_eq!(again, slot);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_block_is_dropped_not_spent_late() {
        let now = Instant::now();
        let mut block = Block { next: now, left: 5 };
        let late = now + BLOCK_LATE_AT_MOST;
        assert_eq!(
            block.take(late, Duration::from_millis(1)),
            Some(Duration::ZERO)
        );
        let later = now + BLOCK_LATE_AT_MOST + Duration::from_millis(2);
        assert_eq!(block.take(later, Duration::from_millis(1)), None);
        assert_eq!(block.left, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_calls_at_the_configured_rate() {
        let limiter = RateLimiter::local(10.0);
        let start = Instant::now();
        for _ in 0..21 {
            limiter.acquire(&P).await.unwrap();
        }
        // 21 calls at 10/s: the first is immediate, the last 2 s later.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_delays_the_next_call() {
        let limiter = RateLimiter::local(100.0);
        let start = Instant::now();
        limiter.pause_all(&P, Duration::from_secs(1)).await;
        limiter.acquire(&P).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_hour_of_retry_after_pauses_for_the_cap_only() {
        let limiter = RateLimiter::local(100.0);
        let start = Instant::now();
        limiter.pause_all(&P, Duration::from_secs(3600)).await;
        limiter.acquire(&P).await.unwrap();
        assert_eq!(start.elapsed(), MAX_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_to_queue_beyond_the_bound_and_takes_nothing() {
        let limiter = RateLimiter::local(1.0);
        limiter.acquire(&P).await.unwrap();
        // The next slot is 1 s away: too far for 100 ms, fine for 2 s.
        let start = Instant::now();
        match limiter
            .acquire_within(&P, Some(Duration::from_millis(100)))
            .await
        {
            Err(StripeError::BudgetBusy { retry_after }) => {
                assert!(retry_after > Duration::from_millis(100), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter
            .acquire_within(&P, Some(Duration::from_secs(2)))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_prepaid_slot_is_spent_by_the_first_call_only() {
        let limiter = RateLimiter::local(1.0);
        let start = Instant::now();
        limiter.acquire(&P).await.unwrap();
        prepaid(async {
            limiter.acquire(&P).await.unwrap();
            assert_eq!(start.elapsed(), Duration::ZERO);
            limiter.acquire(&P).await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_secs(1));
        })
        .await;
    }

    #[test]
    fn the_account_scope_gives_each_account_its_budget_and_the_platform_scope_one_for_all() {
        let a = Account::parse(Some("acct_A")).unwrap();
        assert_eq!(RateLimitScope::default(), RateLimitScope::Account);
        assert_eq!(RateLimitScope::Account.budget_of(&a), a);
        assert_eq!(RateLimitScope::Account.budget_of(&P), P);
        assert_eq!(RateLimitScope::Platform.budget_of(&a), P);
        assert_eq!(RateLimitScope::Platform.budget_of(&P), P);
        assert_eq!("platform".parse(), Ok(RateLimitScope::Platform));
        assert_eq!("account".parse(), Ok(RateLimitScope::Account));
        for bad in ["", "Platform", "accounts", "global"] {
            assert!(bad.parse::<RateLimitScope>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_account_has_its_own_budget() {
        let limiter = RateLimiter::local(1.0);
        let a = Account::parse(Some("acct_A")).unwrap();
        let b = Account::parse(Some("acct_B")).unwrap();
        let start = Instant::now();
        limiter.acquire(&P).await.unwrap();
        limiter.acquire(&a).await.unwrap();
        limiter.acquire(&b).await.unwrap();
        // One call each, all at once: none waits for another's budget.
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.pause_all(&a, Duration::from_secs(30)).await;
        limiter.acquire(&b).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        limiter.acquire(&a).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }
}
