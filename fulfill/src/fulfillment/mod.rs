//! Fulfillment: fetch the current session from Stripe → decide → persist, once.
//!
//! The same [`Fulfiller::fulfill_session`] serves the consumer (webhook path) and
//! `POST /checkout/sessions/{id}/fulfill` (success-page path). Exactly-once is the
//! database's job: the session row is locked for the transaction, the purchase ledger
//! entry has a unique key, and the balance moves in the same transaction as the entry.

pub mod credits;
pub mod expiry_rule;
pub mod reversal;

use std::sync::Arc;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::Serialize;
use shared::{
    envelope::EventEnvelope,
    ids::{CheckoutSessionId, EventId},
    topology::{CHECKOUT_EVENT_TYPES, REVERSAL_EVENT_TYPES},
};
use tracing::Instrument;

use self::{credits::Decision, reversal::RefundPolicy};
use crate::{
    db::{
        self, Pool,
        ledger::{self, NewEntry},
        sessions::{self, SessionRow, SessionState, SessionUpdate},
    },
    error::FulfillError,
    metrics::Metrics,
    stripe::{
        StripeClient, StripeError,
        checkout_session::{self, CheckoutSession, Expandable, PaymentStatus, SessionStatus},
    },
};

/// How long one fulfillment may hold a session's fetch lease; a crashed holder delays
/// others by at most this much.
const FETCH_LEASE: std::time::Duration = std::time::Duration::from_secs(20);
/// How often a waiting fulfillment looks at the session again.
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

pub const ASYNC_PAYMENT_FAILED: &str = "checkout.session.async_payment_failed";
pub const ASYNC_PAYMENT_SUCCEEDED: &str = "checkout.session.async_payment_succeeded";

/// What set a fulfillment off.
#[derive(Debug, Clone, Copy)]
pub enum Trigger<'a> {
    Event {
        id: &'a EventId,
        event_type: &'a str,
    },
    /// The success page, an operator, reconciliation.
    Direct,
}

impl Trigger<'_> {
    fn event_type(&self) -> Option<&str> {
        match self {
            Self::Event { event_type, .. } => Some(event_type),
            Self::Direct => None,
        }
    }
}

/// A session's fulfillment state, as the API reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FulfillmentState {
    pub session_id: String,
    pub state: SessionState,
    pub user_id: Option<String>,
    pub credits: Option<i64>,
    pub reason: Option<String>,
    /// True when this call is the one that credited the session.
    pub credited_now: bool,
}

impl FulfillmentState {
    fn from_row(row: &SessionRow, credited_now: bool) -> Self {
        Self {
            session_id: row.session_id.clone(),
            state: row.state(),
            user_id: row.user_id.clone(),
            credits: row.credits,
            reason: row.reason.clone(),
            credited_now,
        }
    }
}

/// What handling one event came to; each is a label in `fulfill_events_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// This event id was processed before.
    Duplicate,
    /// The session was already in a final state: no Stripe call made.
    AlreadyFinal(SessionState),
    Fulfilled(FulfillmentState),
    /// A refund or dispute, and what came of it.
    Reversal(&'static str),
}

impl EventOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::AlreadyFinal(_) => "already_final",
            Self::Reversal(outcome) => outcome,
            Self::Fulfilled(s) if s.credited_now => "credited",
            Self::Fulfilled(s) => match s.state {
                SessionState::Credited => "already_credited",
                SessionState::Pending => "pending",
                SessionState::NeedsAttention => "needs_attention",
                SessionState::Failed => "failed",
                SessionState::Expired => "expired",
            },
        }
    }
}

pub struct Fulfiller {
    pool: Pool,
    stripe: StripeClient,
    metrics: Arc<Metrics>,
    refund_policy: RefundPolicy,
}

impl Fulfiller {
    pub fn new(
        pool: Pool,
        stripe: StripeClient,
        metrics: Arc<Metrics>,
        refund_policy: RefundPolicy,
    ) -> Self {
        Self {
            pool,
            stripe,
            metrics,
            refund_policy,
        }
    }

    pub fn stripe(&self) -> &StripeClient {
        &self.stripe
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Handles one checkout event from the queue.
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
        let is_reversal = REVERSAL_EVENT_TYPES.contains(&envelope.event_type.as_str());
        if !is_reversal && !CHECKOUT_EVENT_TYPES.contains(&envelope.event_type.as_str()) {
            return Err(FulfillError::UnsupportedEvent(envelope.event_type));
        }
        // A redelivered event costs one indexed read and no Stripe call, whatever its type.
        {
            let mut conn = self.pool.get().await?;
            if db::events::seen(&mut conn, envelope.id.as_str()).await? {
                return Ok(EventOutcome::Duplicate);
            }
        }
        if is_reversal {
            return self.handle_reversal(&envelope).await;
        }
        let session_id = envelope
            .object_id()
            .ok_or_else(|| FulfillError::Malformed("data.object.id is missing".into()))
            .and_then(|id| {
                CheckoutSessionId::parse(id)
                    .map_err(|e| FulfillError::Malformed(format!("data.object.id: {e}")))
            })?;
        span.record("session_id", session_id.as_str());

        // So does an event for a session already settled.
        {
            let mut conn = self.pool.get().await?;
            if let Some(row) = sessions::find(&mut conn, session_id.as_str()).await?
                && is_final_for(row.state(), &envelope.event_type)
            {
                db::events::record(
                    &mut conn,
                    envelope.id.as_str(),
                    &envelope.event_type,
                    Some(session_id.as_str()),
                    "already_final",
                )
                .await?;
                return Ok(EventOutcome::AlreadyFinal(row.state()));
            }
        }
        let trigger = Trigger::Event {
            id: &envelope.id,
            event_type: &envelope.event_type,
        };
        let state = self.fulfill_session(&session_id, trigger).await?;
        if let Some(user) = &state.user_id {
            span.record("user_id", user.as_str());
        }
        Ok(EventOutcome::Fulfilled(state))
    }

    /// Refetches the session from Stripe and applies the credits rule, exactly once.
    #[tracing::instrument(
        name = "fulfill.session",
        skip_all,
        fields(session_id = %session_id, user_id)
    )]
    pub async fn fulfill_session(
        &self,
        session_id: &CheckoutSessionId,
        trigger: Trigger<'_>,
    ) -> Result<FulfillmentState, FulfillError> {
        let span = tracing::Span::current();
        // Single flight: while another delivery (in any process) fetches this session,
        // wait for its result instead of spending budget on the same answer.
        if let Some(settled) = self.wait_for_fetch_lease(session_id, trigger).await? {
            return Ok(settled);
        }
        let session = match checkout_session::fetch(&self.stripe, session_id).await {
            Ok(session) => session,
            Err(e) => {
                self.give_back_lease(session_id, matches!(e, StripeError::NotFound { .. }))
                    .await;
                return Err(e.into());
            }
        };
        let decision = expiry_rule::refine(credits::decide(&session), &session);
        if let Decision::Credit { user, .. } = &decision {
            span.record("user_id", user.as_str());
        }
        let mut conn = self.pool.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        let transaction = db::transaction_span();
        let state = match conn
            .transaction(async |conn: &mut AsyncPgConnection| {
                persist(conn, session_id, &session, &decision, trigger).await
            })
            .instrument(transaction.clone())
            .await
        {
            Ok(state) => state,
            Err(e) => {
                e.record_on(&transaction);
                self.give_back_lease(session_id, false).await;
                return Err(e);
            }
        };
        if let Some(user) = &state.user_id {
            span.record("user_id", user.as_str());
        }
        if state.credited_now {
            self.metrics.sessions_credited.inc();
            if let Some(credits) = state.credits {
                self.metrics.credits_granted.inc_by(credits.unsigned_abs());
            }
            tracing::info!(user_id = ?state.user_id, credits = ?state.credits, "session credited");
        } else if state.state == SessionState::NeedsAttention {
            self.metrics.needs_attention.inc();
            tracing::warn!(reason = ?state.reason, "session needs attention");
        }
        Ok(state)
    }

    /// Takes the session's fetch lease, or waits while another fulfillment holds it.
    /// `Some(state)` when that other fulfillment settled what this one came for (the
    /// session is final for this event, or this very event was processed): no fetch needed.
    async fn wait_for_fetch_lease(
        &self,
        session_id: &CheckoutSessionId,
        trigger: Trigger<'_>,
    ) -> Result<Option<FulfillmentState>, FulfillError> {
        let deadline = tokio::time::Instant::now() + FETCH_LEASE * 2;
        loop {
            let mut conn = self.pool.get().await?;
            let claimed =
                sessions::claim_fetch(&mut conn, session_id.as_str(), FETCH_LEASE).await?;
            // Checked after claiming: the previous holder may have committed just before.
            if let Some(row) = sessions::find(&mut conn, session_id.as_str()).await? {
                let settled = match trigger {
                    Trigger::Event { id, event_type } => {
                        is_final_for(row.state(), event_type)
                            || db::events::seen(&mut conn, id.as_str()).await?
                    }
                    Trigger::Direct => row.state() == SessionState::Credited,
                };
                if settled {
                    if claimed {
                        sessions::release_fetch(&mut conn, session_id.as_str()).await?;
                    }
                    return Ok(Some(FulfillmentState::from_row(&row, false)));
                }
            }
            if claimed {
                return Ok(None);
            }
            drop(conn);
            if tokio::time::Instant::now() >= deadline {
                // The holder is stuck; fetching twice is safe, only wasteful.
                return Ok(None);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Best effort: a failed fulfillment frees the lease at once instead of at expiry.
    async fn give_back_lease(&self, session_id: &CheckoutSessionId, unknown_to_stripe: bool) {
        if let Ok(mut conn) = self.pool.get().await {
            let _ = sessions::release_fetch(&mut conn, session_id.as_str()).await;
            if unknown_to_stripe {
                let _ = sessions::forget_unknown(&mut conn, session_id.as_str()).await;
            }
        }
    }

    /// The state fulfill has recorded for a session, if any (no Stripe call).
    pub async fn recorded_state(
        &self,
        session_id: &CheckoutSessionId,
    ) -> Result<Option<FulfillmentState>, FulfillError> {
        let mut conn = self.pool.get().await?;
        Ok(sessions::find(&mut conn, session_id.as_str())
            .await?
            .map(|row| FulfillmentState::from_row(&row, false)))
    }
}

/// Whether an event about a session in `state` can be answered without asking Stripe.
/// Credited and expired sessions never change again; a failed async payment can only be
/// followed by nothing, but a (misordered) success event is still checked with Stripe.
fn is_final_for(state: SessionState, event_type: &str) -> bool {
    match state {
        SessionState::Credited | SessionState::Expired => true,
        SessionState::Failed => event_type != ASYNC_PAYMENT_SUCCEEDED,
        SessionState::Pending | SessionState::NeedsAttention => false,
    }
}

/// The transaction: lock the session row, apply the decision unless already credited,
/// record the event.
async fn persist(
    conn: &mut AsyncPgConnection,
    session_id: &CheckoutSessionId,
    session: &CheckoutSession,
    decision: &Decision,
    trigger: Trigger<'_>,
) -> Result<FulfillmentState, FulfillError> {
    let row = sessions::lock_or_create(conn, session_id.as_str()).await?;
    let event_id = match trigger {
        Trigger::Event { id, .. } => Some(id.as_str()),
        Trigger::Direct => None,
    };
    let payment_intent = session.payment_intent.as_ref().map(Expandable::id);
    let snapshot = SessionUpdate {
        stripe_status: session.status.map(SessionStatus::as_str),
        payment_status: Some(session.payment_status.as_str()),
        payment_intent_id: payment_intent,
        amount_total: session.amount_total,
        currency: session.currency.as_deref(),
        livemode: Some(session.livemode),
        last_event_id: event_id,
        ..SessionUpdate::default()
    };

    let (row, credited_now) = if row.state() == SessionState::Credited {
        // Someone else credited it while we were fetching: nothing to do.
        (row, false)
    } else {
        match decision {
            Decision::Credit { user, credits } => {
                let key = format!("purchase:{session_id}");
                let applied = ledger::append(
                    conn,
                    &NewEntry {
                        user_id: user.as_str(),
                        delta: *credits,
                        reason: "purchase",
                        idempotency_key: &key,
                        stripe_session_id: Some(session_id.as_str()),
                        stripe_event_id: event_id,
                        stripe_object_id: payment_intent,
                        lots: expiry_rule::lots(session).unwrap_or_default(),
                        ..NewEntry::default()
                    },
                )
                .await?;
                let update = SessionUpdate {
                    state: Some(SessionState::Credited.as_str()),
                    user_id: Some(Some(user.as_str())),
                    credits: Some(Some(*credits)),
                    reason: Some(None),
                    ..snapshot
                };
                (
                    sessions::update(conn, session_id.as_str(), &update).await?,
                    applied,
                )
            }
            Decision::NeedsAttention { reason } => {
                if row.state() != SessionState::NeedsAttention {
                    let user = session
                        .client_reference_id
                        .as_deref()
                        .or_else(|| {
                            session
                                .metadata
                                .as_ref()?
                                .get("user_id")
                                .map(String::as_str)
                        })
                        .and_then(|raw| shared::ids::UserId::parse(raw).ok());
                    db::outbox::announce_attention(
                        conn,
                        session_id.as_str(),
                        user.as_ref().map(|u| u.as_str()),
                        reason,
                    )
                    .await?;
                }
                let update = SessionUpdate {
                    state: Some(SessionState::NeedsAttention.as_str()),
                    reason: Some(Some(reason.as_str())),
                    ..snapshot
                };
                (
                    sessions::update(conn, session_id.as_str(), &update).await?,
                    false,
                )
            }
            Decision::NotYetPaid if row.state() != SessionState::Pending => {
                // A fetch older than what another delivery already recorded (failed,
                // expired, paid-but-needs-attention): Stripe's states only move forward,
                // so an "unpaid" view never overwrites them.
                (row, false)
            }
            Decision::NotYetPaid => {
                let failed = trigger.event_type() == Some(ASYNC_PAYMENT_FAILED)
                    && session.status == Some(SessionStatus::Complete)
                    && session.payment_status == PaymentStatus::Unpaid;
                let state = if failed {
                    SessionState::Failed
                } else {
                    SessionState::Pending
                };
                let update = SessionUpdate {
                    state: Some(state.as_str()),
                    ..snapshot
                };
                (
                    sessions::update(conn, session_id.as_str(), &update).await?,
                    false,
                )
            }
            Decision::Expired => {
                let update = SessionUpdate {
                    state: Some(SessionState::Expired.as_str()),
                    ..snapshot
                };
                (
                    sessions::update(conn, session_id.as_str(), &update).await?,
                    false,
                )
            }
        }
    };

    sessions::release_fetch(conn, session_id.as_str()).await?;
    let state = FulfillmentState::from_row(&row, credited_now);
    if let Trigger::Event { id, event_type } = trigger {
        let outcome = EventOutcome::Fulfilled(state.clone()).label();
        db::events::record(
            conn,
            id.as_str(),
            event_type,
            Some(session_id.as_str()),
            outcome,
        )
        .await?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credited_and_expired_sessions_need_no_stripe_call() {
        for t in CHECKOUT_EVENT_TYPES {
            assert!(is_final_for(SessionState::Credited, t));
            assert!(is_final_for(SessionState::Expired, t));
            assert!(!is_final_for(SessionState::Pending, t));
            assert!(!is_final_for(SessionState::NeedsAttention, t));
        }
    }

    #[test]
    fn a_failed_session_is_still_checked_on_a_success_event() {
        assert!(!is_final_for(SessionState::Failed, ASYNC_PAYMENT_SUCCEEDED));
        assert!(is_final_for(
            SessionState::Failed,
            "checkout.session.completed"
        ));
    }
}
