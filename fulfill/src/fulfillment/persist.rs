//! The transaction of one convergence: lock the session row, refuse a stale view, plan
//! (pure), write the delta entries and the session's new state, record the event.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use shared::ids::{CheckoutSessionId, UserId};

use super::{EventRef, FulfillmentState, LedgerChange};
use crate::{
    db::{
        self,
        ledger::{self, NewEntry},
        sessions::{self, SessionRow, SessionState, SessionUpdate},
    },
    domain::{
        account::Account,
        credits::{self, Decision},
        cue::Cue,
        expiry_rule,
        session::{self, Recorded},
        target::{Component, MoneyView, RefundPolicy},
    },
    error::FulfillError,
    stripe::checkout_session::{CheckoutSession, SessionStatus},
};

/// One fresh view of a session and when its fetch started.
pub(super) struct View<'a> {
    pub session: &'a CheckoutSession,
    pub decision: &'a Decision,
    pub money: Option<&'a MoneyView>,
    pub started: DateTime<Utc>,
}

pub(super) struct Persisted {
    pub state: FulfillmentState,
    pub change: LedgerChange,
    /// Credits added by purchase entries now.
    pub granted: i64,
    /// Credits taken back (positive) or given back (negative) now.
    pub taken_back: i64,
    pub newly_needs_attention: bool,
}

/// `locked`: the session's row and its entries' sums when the caller's transaction has
/// locked the row and read them since (a group's transaction does so for all its
/// sessions first); else both are done here.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply(
    conn: &mut AsyncPgConnection,
    account: &Account,
    session_id: &CheckoutSessionId,
    view: &View<'_>,
    cue: &Cue,
    event: Option<EventRef<'_>>,
    policy: RefundPolicy,
    locked: Option<(SessionRow, ledger::Applied)>,
) -> Result<Persisted, FulfillError> {
    // The row lock and the session's entries in one round trip (taking the fetch lease
    // created the row; when it is gone, create it, lock it and read again). The entries
    // are read by a statement after the lock's, so with a snapshot taken after the lock
    // was granted.
    let shared: &AsyncPgConnection = conn;
    let (locked, applied) = match locked {
        Some((row, applied)) => (Some(row), applied),
        None => futures_util::try_join!(
            sessions::lock(shared, session_id.as_str()),
            ledger::applied(shared, session_id.as_str()),
        )?,
    };
    let (row, applied) = match locked {
        Some(row) => (row, applied),
        None => {
            let row = sessions::create_and_lock(conn, account.key(), session_id.as_str()).await?;
            (row, ledger::applied(conn, session_id.as_str()).await?)
        }
    };
    super::same_account(&row, account)?;
    let event_id = event.map(|e| e.id.as_str());
    if is_stale(&row, view) {
        sessions::release_fetch(conn, session_id.as_str(), view.started).await?;
        let persisted = Persisted {
            state: FulfillmentState::from_row(&row, false),
            change: LedgerChange::StaleView,
            granted: 0,
            taken_back: 0,
            newly_needs_attention: false,
        };
        record_event(conn, session_id, event, &persisted).await?;
        return Ok(persisted);
    }

    let planned = Planned::new(&row, &applied, session_id, view, cue, policy);
    // The user's balance after the last entry written (each entry returns it).
    let mut balance = None;
    // Each entry's balance move is written at once (the next one depends on it); their
    // lots and credit events go out with the session's update, in one round trip.
    let mut entries = Vec::with_capacity(planned.plan.moves.len());
    for entry in planned.entries(account, session_id, view, cue, event_id)? {
        let Some(written) = ledger::write_entry(conn, &entry).await? else {
            // The row lock makes this unreachable; a unique key is the last guard.
            return Err(FulfillError::Conflict(entry.idempotency_key.to_owned()));
        };
        balance = Some(written.appended.credits_after);
        entries.push((entry, written));
    }
    let outcome = Outcome::new(&row, &planned, balance);
    let update = planned.update(&outcome, view, event_id);
    if outcome.newly_needs_attention
        && let Decision::NeedsAttention { reason } = view.decision
    {
        db::outbox::announce_attention(
            conn,
            account.key(),
            session_id.as_str(),
            credits::user(view.session)
                .ok()
                .as_ref()
                .map(UserId::as_str),
            reason,
        )
        .await?;
    }
    // The entries' lots and credit events, the session's new state and the event's
    // record are independent: pipelined.
    let shared: &AsyncPgConnection = conn;
    let record = event.map(|e| outcome.record(&planned, session_id, e));
    // The event's record goes with the last entry's statement; without entries, alone.
    let last = entries.len().checked_sub(1);
    let announced = futures_util::future::try_join_all(entries.iter().enumerate().map(
        |(i, (entry, written))| {
            let record = record.as_ref().filter(|_| Some(i) == last);
            ledger::announce(shared, entry, written, record)
        },
    ));
    let record_alone = async {
        match record.as_ref().filter(|_| last.is_none()) {
            Some(r) => db::events::record(shared, r.event_id, r.event_type, r.object_id, r.outcome)
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    };
    let (_, row, ()) = futures_util::try_join!(
        announced,
        sessions::update_and_release(shared, session_id.as_str(), &update, view.started),
        record_alone,
    )?;
    Ok(outcome.persisted(&planned, &row))
}

/// What a convergence writes, decided from the locked row, the session's entries and the
/// fresh view (pure): the plan, the user its entries move and each entry's key.
pub(super) struct Planned {
    pub plan: session::Plan,
    /// Who the session was credited to, or who it credits now.
    pub user: Option<String>,
    /// Each move's idempotency key, in the plan's order.
    keys: Vec<String>,
}

impl Planned {
    pub(super) fn new(
        row: &SessionRow,
        applied: &ledger::Applied,
        session_id: &CheckoutSessionId,
        view: &View<'_>,
        cue: &Cue,
        policy: RefundPolicy,
    ) -> Self {
        let recorded = Recorded {
            state: row.state,
            credited: (row.state == SessionState::Credited)
                .then_some(row.credits)
                .flatten(),
            applied: applied.components,
        };
        let no_money = MoneyView::default();
        let plan = session::plan(
            &recorded,
            view.decision,
            view.money.unwrap_or(&no_money),
            cue,
            policy,
        );
        let keys = plan
            .moves
            .iter()
            .map(|m| m.key(session_id.as_str(), applied.entries(m.component) + 1))
            .collect();
        Self {
            user: entries_user(row, view.decision).map(str::to_owned),
            plan,
            keys,
        }
    }

    /// The ledger entries that move the session to its target, in order.
    pub(super) fn entries<'a>(
        &'a self,
        account: &'a Account,
        session_id: &'a CheckoutSessionId,
        view: &View<'a>,
        cue: &'a Cue,
        event_id: Option<&'a str>,
    ) -> Result<Vec<NewEntry<'a>>, FulfillError> {
        if self.plan.moves.is_empty() {
            return Ok(Vec::new());
        }
        let Some(user) = self.user.as_deref() else {
            return Err(FulfillError::Malformed(format!(
                "session {session_id} has entries to write but no user"
            )));
        };
        let object_id = match cue {
            Cue::Money { object_id, .. } => Some(object_id.as_str()),
            _ => None,
        };
        let payment_intent = view.session.payment_intent.as_ref().map(|p| p.id());
        Ok(self
            .plan
            .moves
            .iter()
            .zip(&self.keys)
            .map(|(m, key)| NewEntry {
                account: account.key(),
                user_id: user,
                delta: m.delta,
                reason: m.reason.as_str(),
                idempotency_key: key,
                stripe_session_id: Some(session_id.as_str()),
                stripe_event_id: event_id,
                stripe_object_id: match m.component {
                    Component::Purchase => payment_intent,
                    Component::Refund | Component::Dispute => object_id.or(payment_intent),
                },
                component: Some(m.component),
                // What the purchase buys expires as its prices say (refined above:
                // an unreadable rule is a session needing attention, never credited).
                lots: match m.component {
                    Component::Purchase => expiry_rule::lots(view.session).unwrap_or_default(),
                    Component::Refund | Component::Dispute => Vec::new(),
                },
                ..NewEntry::default()
            })
            .collect())
    }

    /// The session enters `state` now: its recorded state is another.
    fn enters(&self, row: &SessionRow, state: SessionState) -> bool {
        row.state != state && self.plan.state == state
    }

    pub(super) fn newly_needs_attention(&self, row: &SessionRow) -> bool {
        self.enters(row, SessionState::NeedsAttention)
    }

    /// The session's row after this convergence: what [`sessions::update_and_release`]
    /// writes.
    pub(super) fn update<'a>(
        &'a self,
        outcome: &'a Outcome,
        view: &View<'a>,
        event_id: Option<&'a str>,
    ) -> SessionUpdate<'a> {
        let plan = &self.plan;
        let reason = match view.decision {
            Decision::NeedsAttention { reason } if plan.state == SessionState::NeedsAttention => {
                Some(Some(reason.as_str()))
            }
            _ if plan.state == SessionState::Credited => Some(None),
            _ => None,
        };
        SessionUpdate {
            state: Some(plan.state),
            user_id: outcome.newly_credited.then_some(self.user.as_deref()),
            credits: outcome.newly_credited.then_some(Some(plan.target.purchase)),
            reason,
            stripe_status: view.session.status.map(SessionStatus::as_str),
            payment_status: Some(view.session.payment_status.as_str()),
            payment_intent_id: view.session.payment_intent.as_ref().map(|p| p.id()),
            amount_total: view.session.amount_total,
            currency: view.session.currency.as_deref(),
            livemode: Some(view.session.livemode),
            last_event_id: event_id,
            reversed_credits: Some(plan.target.refunded + plan.target.disputed),
            attention: if plan.moves.is_empty() {
                None
            } else {
                Some(outcome.flag.as_deref())
            },
            view_started_at: Some(view.started),
        }
    }
}

/// What a convergence's entries came to, once written: given the balance after the last.
pub(super) struct Outcome {
    newly_credited: bool,
    newly_needs_attention: bool,
    change: LedgerChange,
    /// Why the session is flagged: its entries left the balance below zero.
    flag: Option<String>,
}

impl Outcome {
    pub(super) fn new(row: &SessionRow, planned: &Planned, balance: Option<i64>) -> Self {
        let below_zero = balance.is_some_and(|b| b < 0);
        Self {
            newly_credited: planned.enters(row, SessionState::Credited),
            newly_needs_attention: planned.newly_needs_attention(row),
            change: match (planned.plan.moves.is_empty(), below_zero) {
                (true, _) => LedgerChange::None,
                (false, false) => LedgerChange::Moved,
                (false, true) => LedgerChange::MovedBelowZero,
            },
            flag: below_zero.then(|| {
                format!(
                    "balance of {} is {} after taking back credits of this session",
                    planned.user.as_deref().unwrap_or_default(),
                    balance.unwrap_or_default()
                )
            }),
        }
    }

    /// The Stripe event's record.
    pub(super) fn record<'a>(
        &self,
        planned: &Planned,
        session_id: &'a CheckoutSessionId,
        event: EventRef<'a>,
    ) -> db::events::Record<'a> {
        db::events::Record {
            event_id: event.id.as_str(),
            event_type: event.event_type.as_str(),
            object_id: Some(session_id.as_str()),
            outcome: super::EventOutcome::converged_label(
                planned.plan.state,
                self.newly_credited,
                self.change,
            ),
        }
    }

    /// What the transaction did, given the session's row it left.
    pub(super) fn persisted(&self, planned: &Planned, row: &SessionRow) -> Persisted {
        debug_assert_eq!(row.state, planned.plan.state);
        let moved = |purchase: bool| {
            planned
                .plan
                .moves
                .iter()
                .filter(|m| (m.component == Component::Purchase) == purchase)
                .map(|m| m.delta)
                .sum::<i64>()
        };
        Persisted {
            state: FulfillmentState::from_row(row, self.newly_credited),
            change: self.change,
            granted: moved(true),
            taken_back: -moved(false),
            newly_needs_attention: self.newly_needs_attention,
        }
    }
}

/// Another view, fetched after this one started, is applied already: it is at least as
/// new as anything this one could say, and as new as the cue that set it off.
pub(super) fn is_stale(row: &SessionRow, view: &View<'_>) -> bool {
    row.view_started_at
        .is_some_and(|applied| applied > view.started)
}

/// The user of the session's entries: who it was credited to, or who it credits now.
pub(super) fn entries_user<'a>(row: &'a SessionRow, decision: &'a Decision) -> Option<&'a str> {
    match (&row.user_id, decision) {
        (Some(user), _) if row.state == SessionState::Credited => Some(user.as_str()),
        (_, Decision::Credit { user, .. }) => Some(user.as_str()),
        (user, _) => user.as_deref(),
    }
}

/// The user a decision credits, if it credits one (for a session with no row yet).
pub(super) fn decided_user(decision: &Decision) -> Option<&str> {
    match decision {
        Decision::Credit { user, .. } => Some(user.as_str()),
        _ => None,
    }
}

async fn record_event(
    conn: &mut AsyncPgConnection,
    session_id: &CheckoutSessionId,
    event: Option<EventRef<'_>>,
    persisted: &Persisted,
) -> Result<(), FulfillError> {
    if let Some(e) = event {
        let outcome = super::EventOutcome::Converged {
            state: persisted.state.clone(),
            change: persisted.change,
        };
        db::events::record(
            conn,
            e.id.as_str(),
            e.event_type.as_str(),
            Some(session_id.as_str()),
            outcome.label(),
        )
        .await?;
    }
    Ok(())
}
