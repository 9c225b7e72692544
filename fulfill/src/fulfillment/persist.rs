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
    let object_id = match cue {
        Cue::Money { object_id, .. } => Some(object_id.as_str()),
        _ => None,
    };
    // Another view, fetched after this one started, is applied already: it is at least
    // as new as anything this one could say, and as new as the cue that set it off.
    if row
        .view_started_at
        .is_some_and(|applied| applied > view.started)
    {
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
    let user = entries_user(&row, view.decision).map(str::to_owned);
    let payment_intent = view.session.payment_intent.as_ref().map(|p| p.id());
    let mut granted = 0;
    let mut taken_back = 0;
    // The user's balance after the last entry written (each entry returns it).
    let mut balance = None;
    // Each entry's balance move is written at once (the next one depends on it); their
    // lots and credit events go out with the session's update, in one round trip.
    let keys: Vec<String> = plan
        .moves
        .iter()
        .map(|m| m.key(session_id.as_str(), applied.entries(m.component) + 1))
        .collect();
    let mut entries = Vec::with_capacity(plan.moves.len());
    if !plan.moves.is_empty() {
        let Some(user) = user.as_deref() else {
            return Err(FulfillError::Malformed(format!(
                "session {session_id} has entries to write but no user"
            )));
        };
        for (m, key) in plan.moves.iter().zip(&keys) {
            let entry = NewEntry {
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
            };
            let Some(written) = ledger::write_entry(conn, &entry).await? else {
                // The row lock makes this unreachable; a unique key is the last guard.
                return Err(FulfillError::Conflict(key.clone()));
            };
            balance = Some(written.appended.credits_after);
            match m.component {
                Component::Purchase => granted += m.delta,
                Component::Refund | Component::Dispute => taken_back -= m.delta,
            }
            entries.push((entry, written));
        }
    }
    let balance_below_zero = balance.is_some_and(|b| b < 0);
    let newly_credited =
        row.state != SessionState::Credited && plan.state == SessionState::Credited;
    let newly_needs_attention =
        row.state != SessionState::NeedsAttention && plan.state == SessionState::NeedsAttention;
    let reason = match view.decision {
        Decision::NeedsAttention { reason } if plan.state == SessionState::NeedsAttention => {
            Some(Some(reason.as_str()))
        }
        _ if plan.state == SessionState::Credited => Some(None),
        _ => None,
    };
    let flag = balance_below_zero.then(|| {
        format!(
            "balance of {} is {} after taking back credits of this session",
            user.as_deref().unwrap_or_default(),
            balance.unwrap_or_default()
        )
    });
    let update = SessionUpdate {
        state: Some(plan.state),
        user_id: newly_credited.then_some(user.as_deref()),
        credits: newly_credited.then_some(Some(plan.target.purchase)),
        reason,
        stripe_status: view.session.status.map(SessionStatus::as_str),
        payment_status: Some(view.session.payment_status.as_str()),
        payment_intent_id: payment_intent,
        amount_total: view.session.amount_total,
        currency: view.session.currency.as_deref(),
        livemode: Some(view.session.livemode),
        last_event_id: event_id,
        reversed_credits: Some(plan.target.refunded + plan.target.disputed),
        attention: if plan.moves.is_empty() {
            None
        } else {
            Some(flag.as_deref())
        },
        view_started_at: Some(view.started),
    };
    if newly_needs_attention && let Decision::NeedsAttention { reason } = view.decision {
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
    let change = match (plan.moves.is_empty(), balance_below_zero) {
        (true, _) => LedgerChange::None,
        (false, false) => LedgerChange::Moved,
        (false, true) => LedgerChange::MovedBelowZero,
    };
    // The entries' lots and credit events, the session's new state and the event's
    // record are independent: pipelined.
    let shared: &AsyncPgConnection = conn;
    let record = event.map(|e| db::events::Record {
        event_id: e.id.as_str(),
        event_type: e.event_type.as_str(),
        object_id: Some(session_id.as_str()),
        outcome: super::EventOutcome::converged_label(plan.state, newly_credited, change),
    });
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
    debug_assert_eq!(row.state, plan.state);
    Ok(Persisted {
        state: FulfillmentState::from_row(&row, newly_credited),
        change,
        granted,
        taken_back,
        newly_needs_attention,
    })
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
