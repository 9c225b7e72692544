//! Fulfillment: every event is only a cue. Refetch what Stripe says now → decide (pure,
//! [`crate::domain`]) → move the ledger to the target in one transaction → settle.
//!
//! The same [`Fulfiller::converge`] serves the consumer (webhook path), the success page
//! (`POST /checkout/sessions/{id}/fulfill`), reconciliation and replayed dead letters.
//! Exactly-once is the database's job: the session row is locked for the transaction,
//! entries have unique keys, and the balance moves in the same transaction as an entry.

mod batch;
mod first_look;
mod group_commit;
mod leases;
mod money;
mod persist;

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::{
    envelope::EventEnvelope,
    event_type::{EventType, ObjectKind},
    ids::{CheckoutSessionId, EventId, UserId},
};

use self::persist::Persisted;
use crate::{
    db::{
        self, Pool,
        sessions::{self, SessionRow, SessionState},
    },
    domain::{
        account::Account,
        credits::{self, Decision},
        cue::{self, Cue, Seen},
        expiry_rule,
        target::RefundPolicy,
    },
    error::FulfillError,
    metrics::Metrics,
    stripe::{
        StripeClient, StripeError,
        checkout_session::{self, PaymentStatus},
        rate_limit::prepaid,
    },
};

/// How long one fulfillment may hold a session's fetch lease; a crashed holder delays
/// others by at most this much.
const FETCH_LEASE: std::time::Duration = sessions::FETCH_LEASE;
/// How often a waiting fulfillment looks at the session again.
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The event a convergence runs for, if any.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub id: &'a EventId,
    pub event_type: EventType,
}

/// A session's fulfillment state, as the API reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FulfillmentState {
    pub session_id: String,
    pub state: SessionState,
    pub user_id: Option<String>,
    pub credits: Option<i64>,
    pub reason: Option<String>,
    /// Credits taken back from this session (refunds and disputes).
    pub reversed_credits: i64,
    /// True when this call is the one that credited the session.
    pub credited_now: bool,
}

impl FulfillmentState {
    fn from_row(row: &SessionRow, credited_now: bool) -> Self {
        Self {
            session_id: row.session_id.clone(),
            state: row.state,
            user_id: row.user_id.clone(),
            credits: row.credits,
            reason: row.reason.clone(),
            reversed_credits: row.reversed_credits,
            credited_now,
        }
    }
}

/// What one convergence did to the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerChange {
    /// Nothing to write: the ledger already held the target.
    None,
    /// Entries were written.
    Moved,
    /// Entries were written and left the user's balance negative (flagged).
    MovedBelowZero,
    /// The view was older than one already applied: nothing written.
    StaleView,
}

/// What handling one event came to; each is a label in `fulfill_events_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// This event id was processed before.
    Duplicate,
    /// The session was already settled for this cue: no Stripe call made.
    AlreadySettled(SessionState),
    Converged {
        state: FulfillmentState,
        change: LedgerChange,
    },
    /// A refund or dispute of a payment that no Checkout Session made.
    NotFromCheckout,
    /// An event of the other Stripe mode: acknowledged, never fetched or credited.
    WrongMode,
}

impl EventOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::AlreadySettled(_) => "already_final",
            Self::NotFromCheckout => "not_from_checkout",
            Self::WrongMode => "wrong_mode",
            Self::Converged { state, change } => {
                Self::converged_label(state.state, state.credited_now, *change)
            }
        }
    }

    /// The label of a convergence that left the session in `state`.
    pub fn converged_label(
        state: SessionState,
        credited_now: bool,
        change: LedgerChange,
    ) -> &'static str {
        match (credited_now, change) {
            (true, _) => "credited",
            (false, LedgerChange::MovedBelowZero) => "flagged",
            (false, LedgerChange::Moved) => "reversed",
            (false, LedgerChange::StaleView) => "stale_view",
            (false, LedgerChange::None) => match state {
                SessionState::Credited => "already_credited",
                SessionState::Pending => "pending",
                SessionState::NeedsAttention => "needs_attention",
                SessionState::Failed => "failed",
                SessionState::Expired => "expired",
            },
        }
    }

    /// Whether this event newly credited a session (reconciliation counts these).
    pub fn credited(&self) -> bool {
        matches!(self, Self::Converged { state, .. } if state.credited_now)
    }

    pub fn needs_attention(&self) -> bool {
        matches!(self, Self::Converged { state, change: LedgerChange::None } if state.state == SessionState::NeedsAttention)
    }
}

pub struct Fulfiller {
    pool: Pool,
    stripe: StripeClient,
    metrics: Arc<Metrics>,
    /// When (Unix seconds) an event of the other mode was last logged: once a minute.
    wrong_mode_logged: AtomicI64,
    first_look: first_look::FirstLook,
    group_commit: group_commit::GroupCommit,
    leases: leases::Leases,
}

/// How a convergence got its turn at the session.
enum Turn {
    /// Another fulfillment settled what this one came for: nothing to fetch.
    Settled(Box<SessionRow>),
    /// This one fetches; its view starts at `started` (database clock).
    Fetch { started: DateTime<Utc> },
}

impl Fulfiller {
    pub fn new(
        pool: Pool,
        stripe: StripeClient,
        metrics: Arc<Metrics>,
        refund_policy: RefundPolicy,
    ) -> Self {
        Self {
            first_look: first_look::FirstLook::new(pool.clone()),
            leases: leases::Leases::new(pool.clone()),
            group_commit: group_commit::GroupCommit::new(
                pool.clone(),
                refund_policy,
                Arc::clone(&metrics),
            ),
            pool,
            stripe,
            metrics,
            wrong_mode_logged: AtomicI64::new(0),
        }
    }

    /// Handles one event from the queue.
    #[tracing::instrument(
        name = "fulfill.event",
        skip_all,
        fields(event_id, event_type, session_id, user_id)
    )]
    pub async fn handle_event(&self, body: &[u8]) -> Result<EventOutcome, FulfillError> {
        let envelope =
            EventEnvelope::parse(body).map_err(|e| FulfillError::Malformed(e.to_string()))?;
        let span = tracing::Span::current();
        span.record("event_id", envelope.id.as_str());
        span.record("event_type", envelope.event_type.as_str());
        // The other mode's events (a test endpoint sent to a live deployment, or the
        // reverse) count for nothing, cost nothing and are never dead-lettered.
        if !self.stripe.mode().matches(envelope.livemode) {
            self.wrong_mode(&envelope).await?;
            return Ok(EventOutcome::WrongMode);
        }
        let event_type = EventType::parse(&envelope.event_type)
            .ok_or_else(|| FulfillError::UnsupportedEvent(envelope.event_type.clone()))?;
        // Whose event: a connected account's (its top-level `account`) or the platform's.
        let account = Account::parse(envelope.account.as_deref())
            .map_err(|e| FulfillError::Malformed(format!("account: {e}")))?;
        let object_id = envelope
            .object_id()
            .ok_or_else(|| FulfillError::Malformed("data.object.id is missing".into()))?;
        let checkout_id = match event_type.object_kind() {
            ObjectKind::CheckoutSession => Some(
                CheckoutSessionId::parse(&object_id)
                    .map_err(|e| FulfillError::Malformed(format!("data.object.id: {e}")))?,
            ),
            _ => None,
        };
        // A redelivered event costs one indexed read (shared with other deliveries asking
        // at the same time) and no Stripe call, whatever its type; for a session's own
        // events the session's row comes with it.
        let (seen, row) = self
            .first_look
            .ask(
                envelope.id.as_str(),
                checkout_id.as_ref().map(CheckoutSessionId::as_str),
            )
            .await?;
        let known = checkout_id.is_some().then_some(row);
        if seen {
            return Ok(EventOutcome::Duplicate);
        }
        let event = EventRef {
            id: &envelope.id,
            event_type,
        };
        let (session_id, cue) = match checkout_id {
            Some(id) => (id, Cue::Checkout(event_type)),
            None => {
                let hint = money::Hint::from_envelope(&envelope, event_type, &object_id)?;
                match self.session_for(&account, &hint).await? {
                    Some(id) => (id, hint.cue),
                    None => {
                        self.record(event, &object_id, EventOutcome::NotFromCheckout)
                            .await?;
                        return Ok(EventOutcome::NotFromCheckout);
                    }
                }
            }
        };
        span.record("session_id", session_id.as_str());
        // An event for a session already settled for it costs no Stripe call either.
        let row = match known {
            Some(row) => row,
            None => sessions::find(&*self.pool.get().await?, session_id.as_str()).await?,
        };
        if let Some(row) = row
            && same_account(&row, &account)?
            && row.state.settles(&cue)
        {
            let outcome = EventOutcome::AlreadySettled(row.state);
            self.record(event, session_id.as_str(), outcome.clone())
                .await?;
            return Ok(outcome);
        }
        let (state, change) = self
            .converge(&account, &session_id, &cue, Some(event))
            .await?;
        if let Some(user) = &state.user_id {
            span.record("user_id", user.as_str());
        }
        Ok(EventOutcome::Converged { state, change })
    }

    /// An operator, reconciliation: converge without an event, waiting for budget.
    pub async fn fulfill_session(
        &self,
        account: &Account,
        session_id: &CheckoutSessionId,
    ) -> Result<FulfillmentState, FulfillError> {
        self.converge_within(account, session_id, &Cue::Direct, None, None)
            .await
            .map(|(state, _)| state)
    }

    /// The success page: as [`Self::fulfill_session`], but when the next free budget slot
    /// is more than `max_wait` away it takes nothing and fails with
    /// [`StripeError::BudgetBusy`] (503 with `Retry-After`) rather than queue a customer
    /// behind the consumers' backlog.
    pub async fn fulfill_session_within(
        &self,
        account: &Account,
        session_id: &CheckoutSessionId,
        max_wait: std::time::Duration,
    ) -> Result<FulfillmentState, FulfillError> {
        self.converge_within(account, session_id, &Cue::Direct, None, Some(max_wait))
            .await
            .map(|(state, _)| state)
    }

    /// Refetches the session (and its money side) from Stripe and moves its ledger to
    /// what that view implies, exactly once.
    pub async fn converge(
        &self,
        account: &Account,
        session_id: &CheckoutSessionId,
        cue: &Cue,
        event: Option<EventRef<'_>>,
    ) -> Result<(FulfillmentState, LedgerChange), FulfillError> {
        self.converge_within(account, session_id, cue, event, None)
            .await
    }

    #[tracing::instrument(
        name = "fulfill.session",
        skip_all,
        fields(session_id = %session_id, account = %account, user_id)
    )]
    async fn converge_within(
        &self,
        account: &Account,
        session_id: &CheckoutSessionId,
        cue: &Cue,
        event: Option<EventRef<'_>>,
        max_wait: Option<std::time::Duration>,
    ) -> Result<(FulfillmentState, LedgerChange), FulfillError> {
        let span = tracing::Span::current();
        // The budget slot first, then the lease: nobody holds a session's lease while
        // queueing for budget (the success page would wait on it). The slot is spent by
        // the first Stripe call of the fetch below (`prepaid`).
        let stripe = self.stripe.for_account(account);
        let reserved = std::sync::Mutex::new(Some(stripe.reserve(max_wait).await?));
        // A slot this convergence will not spend goes back at once (another delivery holds
        // the lease, or settled the session): the next convergence here spends it. Else
        // every concurrent duplicate would burn a slot of the budget.
        let give_back = || {
            if let Some(r) = reserved.lock().ok().and_then(|mut r| r.take()) {
                stripe.give_back(r);
            }
        };
        // Single flight: while another delivery (in any process) fetches this session,
        // wait for its result instead of spending budget on the same answer.
        let started = match self
            .take_turn(account, session_id, cue, event, &give_back)
            .await?
        {
            Turn::Settled(row) => {
                give_back();
                if let Some(e) = event {
                    // Settled by the state another delivery reached: this event is done
                    // too (a no-op when that delivery was this very event).
                    let outcome = EventOutcome::AlreadySettled(row.state);
                    self.record(e, session_id.as_str(), outcome).await?;
                }
                return Ok((FulfillmentState::from_row(&row, false), LedgerChange::None));
            }
            Turn::Fetch { started } => started,
        };
        if reserved.lock().map_or(true, |r| r.is_none()) {
            // The slot went back while this waited for another's lease, which ended
            // without settling the session: take a new one (holding the lease, rarely).
            if let Err(e) = stripe.reserve(max_wait).await {
                self.give_back_turn(session_id, started, false).await;
                return Err(e.into());
            }
        }
        let fetched = prepaid(async {
            let session = checkout_session::fetch(&stripe, session_id).await?;
            let money = money::fetch(&stripe, &session, matches!(cue, Cue::Money { .. })).await?;
            Ok::<_, StripeError>((session, money))
        })
        .await;
        let (session, money) = match fetched {
            Ok(view) => view,
            Err(e) => {
                self.give_back_turn(
                    session_id,
                    started,
                    matches!(e, StripeError::NotFound { .. }),
                )
                .await;
                return Err(e.into());
            }
        };
        if !self.stripe.mode().matches(session.livemode) {
            self.give_back_turn(session_id, started, false).await;
            return Err(FulfillError::WrongMode {
                object: session_id.to_string(),
                livemode: session.livemode,
            });
        }
        let seen = Seen {
            status: session.status,
            paid: matches!(
                session.payment_status,
                PaymentStatus::Paid | PaymentStatus::NoPaymentRequired
            ),
            money: money.as_ref(),
        };
        if !cue::answers(cue, seen) {
            self.give_back_turn(session_id, started, false).await;
            return Err(FulfillError::NotYetVisible {
                session_id: session_id.to_string(),
                cue: cue
                    .event_type()
                    .map_or("direct", EventType::as_str)
                    .to_owned(),
            });
        }
        let decision = expiry_rule::refine(credits::decide(&session), &session);
        // Recorded now, for the lines inside the transaction; once only, as a text log
        // line shows every value a field was given.
        let decided_user = match &decision {
            Decision::Credit { user, .. } => {
                span.record("user_id", user.as_str());
                Some(user.clone())
            }
            _ => None,
        };
        // Written by a transaction of its own, or of a group of sessions converging now.
        let job = group_commit::Job {
            account: account.clone(),
            session_id: session_id.clone(),
            session,
            decision,
            money,
            started,
            cue: cue.clone(),
            event: event.map(|e| (e.id.clone(), e.event_type)),
            span: span.clone(),
        };
        let persisted = match self.group_commit.persist(job).await {
            Ok(persisted) => persisted,
            Err(e) => {
                self.give_back_turn(session_id, started, false).await;
                return Err(e);
            }
        };
        self.observe(&persisted, decided_user.as_ref());
        Ok((persisted.state, persisted.change))
    }

    /// `recorded`: the user the session's span names already.
    fn observe(&self, persisted: &Persisted, recorded: Option<&UserId>) {
        let state = &persisted.state;
        if let Some(user) = &state.user_id
            && recorded.is_none_or(|r| r.as_str() != user.as_str())
        {
            tracing::Span::current().record("user_id", user.as_str());
        }
        if state.credited_now {
            self.metrics.sessions_credited.inc();
        }
        if persisted.granted > 0 {
            self.metrics
                .credits_granted
                .inc_by(persisted.granted.unsigned_abs());
        }
        if state.credited_now {
            tracing::info!(user_id = ?state.user_id, credits = ?state.credits, "session credited");
        }
        if persisted.taken_back > 0 {
            self.metrics
                .credits_reversed
                .inc_by(persisted.taken_back.unsigned_abs());
        }
        if persisted.taken_back != 0 {
            tracing::info!(user_id = ?state.user_id, delta = -persisted.taken_back, reversed = state.reversed_credits, "credits taken back or given back");
        }
        if persisted.change == LedgerChange::MovedBelowZero {
            self.metrics.needs_attention.inc();
            tracing::warn!(user_id = ?state.user_id, "taking back credits left the balance negative");
        } else if persisted.newly_needs_attention {
            self.metrics.needs_attention.inc();
            tracing::warn!(reason = ?state.reason, "session needs attention");
        }
    }

    /// Takes the session's fetch lease, or waits while another fulfillment holds it.
    async fn take_turn(
        &self,
        account: &Account,
        session_id: &CheckoutSessionId,
        cue: &Cue,
        event: Option<EventRef<'_>>,
        waiting: &(dyn Fn() + Sync),
    ) -> Result<Turn, FulfillError> {
        let deadline = tokio::time::Instant::now() + FETCH_LEASE * 2;
        loop {
            // Taken with the leases of other deliveries asking at the same time.
            let sessions::Claim {
                claimed,
                row,
                inserted,
                now,
            } = self
                .leases
                .claim(account.key(), session_id.as_str())
                .await?;
            if let Some(row) = row {
                if row.account != account.key() {
                    if claimed {
                        let mut conn = self.pool.get().await?;
                        sessions::release_fetch(&mut conn, session_id.as_str(), now).await?;
                    }
                    same_account(&row, account)?;
                }
                let settled = match (cue, event) {
                    (Cue::Direct, _) => row.state == SessionState::Credited,
                    // A row this claim created has nothing recorded against it yet.
                    (_, Some(e)) => {
                        row.state.settles(cue)
                            || (!inserted
                                && db::events::seen(&*self.pool.get().await?, e.id.as_str())
                                    .await?)
                    }
                    (_, None) => row.state.settles(cue),
                };
                if settled {
                    if claimed {
                        let mut conn = self.pool.get().await?;
                        sessions::release_fetch(&mut conn, session_id.as_str(), now).await?;
                    }
                    return Ok(Turn::Settled(Box::new(row)));
                }
            }
            if claimed || tokio::time::Instant::now() >= deadline {
                // Past the deadline the holder is stuck; fetching twice is safe (the later
                // view wins), only wasteful. Such a fetch holds no lease: its release (by
                // `started`) matches nothing, so it never frees the holder's.
                return Ok(Turn::Fetch { started: now });
            }
            waiting();
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Best effort: a failed fulfillment frees the lease at once instead of at expiry.
    async fn give_back_turn(
        &self,
        session_id: &CheckoutSessionId,
        started: DateTime<Utc>,
        unknown_to_stripe: bool,
    ) {
        if let Ok(mut conn) = self.pool.get().await {
            let _ = sessions::release_fetch(&mut conn, session_id.as_str(), started).await;
            if unknown_to_stripe {
                let _ = sessions::forget_unknown(&mut conn, session_id.as_str()).await;
            }
        }
    }

    async fn wrong_mode(&self, envelope: &EventEnvelope) -> Result<(), FulfillError> {
        let now = chrono::Utc::now().timestamp();
        let last = self.wrong_mode_logged.load(Ordering::Relaxed);
        if now - last >= 60
            && self
                .wrong_mode_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                event_id = %envelope.id,
                event_livemode = envelope.livemode,
                mode = self.stripe.mode().as_str(),
                "an event of the other Stripe mode was received and ignored (logged once a minute); check which endpoint sends to this deployment"
            );
        }
        let conn = self.pool.get().await?;
        db::events::record(
            &conn,
            envelope.id.as_str(),
            &envelope.event_type,
            envelope.object_id().as_deref(),
            EventOutcome::WrongMode.label(),
        )
        .await?;
        Ok(())
    }

    async fn record(
        &self,
        event: EventRef<'_>,
        object_id: &str,
        outcome: EventOutcome,
    ) -> Result<(), FulfillError> {
        let conn = self.pool.get().await?;
        db::events::record(
            &conn,
            event.id.as_str(),
            event.event_type.as_str(),
            Some(object_id),
            outcome.label(),
        )
        .await?;
        Ok(())
    }

    /// The state fulfill has recorded for `account`'s session, if any (no Stripe call):
    /// another account's session is none of the caller's.
    pub async fn recorded_state(
        &self,
        account: &Account,
        session_id: &CheckoutSessionId,
    ) -> Result<Option<FulfillmentState>, FulfillError> {
        let conn = self.pool.get().await?;
        Ok(sessions::find(&conn, session_id.as_str())
            .await?
            .filter(|row| row.account == account.key())
            .map(|row| FulfillmentState::from_row(&row, false)))
    }

    /// `account`'s sessions recorded as pending, for reconciliation to look at again.
    pub async fn pending_sessions(
        &self,
        account: &Account,
        limit: i64,
    ) -> Result<Vec<String>, FulfillError> {
        let mut conn = self.pool.get().await?;
        Ok(sessions::pending(&mut conn, account.key(), limit).await?)
    }
}

/// Whether the recorded session is `account`'s; a session recorded for another account
/// (or the platform) is an error, never moved for a guessed owner.
fn same_account(row: &SessionRow, account: &Account) -> Result<bool, FulfillError> {
    if row.account == account.key() {
        Ok(true)
    } else {
        Err(FulfillError::OtherAccount {
            session_id: row.session_id.clone(),
            recorded: Account::from_stored(&row.account)
                .map_or_else(|_| row.account.clone(), |a| a.to_string()),
            asked: account.to_string(),
        })
    }
}
