//! Healing what webhooks missed, from Stripe's Events API and sessions list.
//!
//! Stripe stops retrying a webhook after three days and, rarely, never creates an event;
//! endpoints get misconfigured. Reconciliation pages through `GET /v1/events` for the
//! event types fulfill consumes (created since a cursor kept in PostgreSQL, minus an
//! overlap) and feeds each through the very path a webhook takes (so an event already
//! processed costs nothing), then sweeps `GET /v1/checkout/sessions?status=complete` over
//! the same window and fulfills every session not yet settled. Everything goes through
//! the same idempotent fulfillment and the same Stripe rate budget.
//!
//! A run is for one account: the platform, or a connected account (`--account acct_…`),
//! whose events and sessions are listed with `Stripe-Account` and spend its budget; each
//! has its own cursor. The background loop runs the platform, then every connected
//! account fulfill has recorded a session for.
//! <https://docs.stripe.com/webhooks/process-undelivered-events>

use std::time::Duration;

use serde::Deserialize;
use shared::{ids::CheckoutSessionId, topology};

use crate::{
    db::{
        Pool, cursors, locks,
        sessions::{self, SessionState},
    },
    domain::account::Account,
    error::{FulfillError, error_chain},
    fulfillment::{EventOutcome, Fulfiller},
    services::Services,
    stripe::list::{HasId, Pager},
};

/// Stripe keeps events for 30 days.
pub const MAX_LOOKBACK: Duration = Duration::from_secs(30 * 24 * 3600);
/// Used when there is no cursor yet and no `--since`.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(72 * 3600);
/// Re-read this much before the cursor: events can appear with a slightly older `created`.
pub const OVERLAP: Duration = Duration::from_secs(10 * 60);
const CURSOR: &str = "checkout";

/// The account's cursor: `checkout` for the platform, `checkout:acct_…` for another.
fn cursor_name(account: &Account) -> String {
    match account.id() {
        None => CURSOR.to_owned(),
        Some(id) => format!("{CURSOR}:{id}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("--since {0:?} is beyond the 30 days Stripe keeps events; use at most 720h")]
    TooFarBack(Duration),
    #[error("invalid duration {0:?}: use a number followed by s, m, h or d (e.g. 72h)")]
    BadDuration(String),
    #[error(transparent)]
    Fulfill(#[from] FulfillError),
}

/// Parses `90s`, `15m`, `72h`, `3d`.
pub fn parse_duration(raw: &str) -> Result<Duration, ReconcileError> {
    let raw = raw.trim();
    let bad = || ReconcileError::BadDuration(raw.to_owned());
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(seconds))
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub account: Account,
    pub since: i64,
    pub events: u64,
    pub events_new: u64,
    pub sessions: u64,
    pub sessions_checked: u64,
    /// Sessions this run credited: what the webhooks had missed.
    pub healed: u64,
    pub needs_attention: u64,
    /// Objects of the other Stripe mode, refused.
    pub wrong_mode: u64,
    pub errors: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reconcile: account={} since={} events={} events_new={} sessions={} sessions_checked={} healed={} needs_attention={} wrong_mode={} errors={}",
            self.account,
            self.since,
            self.events,
            self.events_new,
            self.sessions,
            self.sessions_checked,
            self.healed,
            self.needs_attention,
            self.wrong_mode,
            self.errors
        )
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Runs one reconciliation of `account` over `since` (or from its stored cursor) and
/// advances the cursor when every item went through.
pub async fn run(
    services: &Services,
    account: &Account,
    since: Option<Duration>,
) -> Result<Report, ReconcileError> {
    let pool = &services.pool;
    if let Some(s) = since
        && s > MAX_LOOKBACK
    {
        return Err(ReconcileError::TooFarBack(s));
    }
    let started = now();
    let created_gte = match since {
        Some(s) => started - secs(s),
        None => match read_cursor(pool, account).await? {
            Some(cursor) => (cursor - secs(OVERLAP)).max(started - secs(MAX_LOOKBACK)),
            None => started - secs(DEFAULT_LOOKBACK),
        },
    };
    let mut report = Report {
        account: account.clone(),
        since: created_gte,
        ..Report::default()
    };
    let created = created_gte.to_string();
    events(services, account, &created, &mut report).await?;
    sessions(services, account, &created, &mut report).await?;
    pending(&services.fulfiller, account, &mut report).await?;
    if report.errors == 0 {
        write_cursor(pool, account, started).await?;
    }
    services.metrics.reconcile_healed.inc_by(report.healed);
    Ok(report)
}

async fn events(
    services: &Services,
    account: &Account,
    created_gte: &str,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let mut query: Vec<(&str, &str)> = topology::consumed_event_types()
        .map(|t| ("types[]", t))
        .collect();
    query.push(("created[gte]", created_gte));
    let stripe = services.stripe.for_account(account);
    let mut pager = Pager::new(&stripe, "events.list", "/v1/events", &query);
    while let Some(page) = pager
        .next_page::<serde_json::Value>()
        .await
        .map_err(FulfillError::from)?
    {
        for mut event in page {
            report.events += 1;
            // Listed with `Stripe-Account`: the event is that account's, whatever it says.
            if let (Some(id), Some(object)) = (account.id(), event.as_object_mut()) {
                object.insert("account".to_owned(), id.into());
            }
            let body = serde_json::to_vec(&event).unwrap_or_default();
            match services.fulfiller.handle_event(&body).await {
                Ok(EventOutcome::Duplicate) | Ok(EventOutcome::AlreadySettled(_)) => {}
                Ok(EventOutcome::WrongMode) => report.wrong_mode += 1,
                Ok(outcome) => {
                    report.events_new += 1;
                    count(report, &outcome);
                }
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(event_id = ?event.get("id"), error = %error_chain(&e), "reconcile: event failed");
                }
            }
        }
    }
    Ok(())
}

fn count(report: &mut Report, outcome: &EventOutcome) {
    if outcome.credited() {
        report.healed += 1;
    } else if outcome.needs_attention() {
        report.needs_attention += 1;
    }
}

async fn sessions(
    services: &Services,
    account: &Account,
    created_gte: &str,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    #[derive(Deserialize)]
    struct Listed {
        id: String,
        /// Every listed session says its mode: the other mode's is refused here, unfetched.
        #[serde(default)]
        livemode: Option<bool>,
    }
    impl HasId for Listed {
        fn id(&self) -> &str {
            &self.id
        }
    }
    let query = [("status", "complete"), ("created[gte]", created_gte)];
    let fulfiller = &services.fulfiller;
    let stripe = services.stripe.for_account(account);
    let mut pager = Pager::new(
        &stripe,
        "checkout_sessions.list",
        "/v1/checkout/sessions",
        &query,
    );
    while let Some(page) = pager
        .next_page::<Listed>()
        .await
        .map_err(FulfillError::from)?
    {
        for listed in page {
            report.sessions += 1;
            if listed
                .livemode
                .is_some_and(|livemode| !stripe.mode().matches(livemode))
            {
                report.wrong_mode += 1;
                continue;
            }
            let Ok(id) = CheckoutSessionId::parse(listed.id) else {
                report.errors += 1;
                continue;
            };
            // Settled sessions cost no Stripe call.
            if let Some(state) = fulfiller.recorded_state(account, &id).await?
                && matches!(
                    state.state,
                    SessionState::Credited | SessionState::Expired | SessionState::Failed
                )
            {
                continue;
            }
            check(fulfiller, account, &id, report).await;
        }
    }
    Ok(())
}

/// Sessions recorded as pending whatever their age: an async payment that succeeded
/// after the window, and whose event was lost, is healed too.
async fn pending(
    fulfiller: &Fulfiller,
    account: &Account,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    const MAX_PENDING: i64 = 10_000;
    for raw in fulfiller.pending_sessions(account, MAX_PENDING).await? {
        let Ok(id) = CheckoutSessionId::parse(raw) else {
            report.errors += 1;
            continue;
        };
        check(fulfiller, account, &id, report).await;
    }
    Ok(())
}

async fn check(
    fulfiller: &Fulfiller,
    account: &Account,
    id: &CheckoutSessionId,
    report: &mut Report,
) {
    report.sessions_checked += 1;
    match fulfiller.fulfill_session(account, id).await {
        Ok(state) if state.credited_now => report.healed += 1,
        Ok(state) if state.state == SessionState::NeedsAttention => report.needs_attention += 1,
        Ok(_) => {}
        Err(FulfillError::WrongMode { .. }) => report.wrong_mode += 1,
        Err(e) => {
            report.errors += 1;
            tracing::warn!(session_id = %id, error = %error_chain(&e), "reconcile: session failed");
        }
    }
}

async fn read_cursor(pool: &Pool, account: &Account) -> Result<Option<i64>, FulfillError> {
    let mut conn = pool.get().await?;
    Ok(cursors::read(&mut conn, &cursor_name(account)).await?)
}

async fn write_cursor(
    pool: &Pool,
    account: &Account,
    created_gte: i64,
) -> Result<(), FulfillError> {
    let mut conn = pool.get().await?;
    Ok(cursors::write(&mut conn, &cursor_name(account), created_gte).await?)
}

/// The platform, then every connected account fulfill has recorded a session for.
async fn known_accounts(pool: &Pool) -> Result<Vec<Account>, FulfillError> {
    let mut conn = pool.get().await?;
    let mut accounts = vec![Account::PLATFORM];
    for stored in sessions::connected_accounts(&mut conn).await? {
        match Account::from_stored(&stored) {
            Ok(account) => accounts.push(account),
            Err(e) => {
                tracing::warn!(account = %stored, error = %e, "reconcile: unreadable account skipped")
            }
        }
    }
    Ok(accounts)
}

/// The background loop (`FULFILL_RECONCILE_INTERVAL_SECS`): one process at a time runs it,
/// under a PostgreSQL advisory lock.
pub async fn run_periodically(
    services: Services,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Ok(mut conn) = services.pool.get_owned().await else {
            continue;
        };
        if !locks::try_lock(&mut conn, locks::RECONCILE)
            .await
            .unwrap_or(false)
        {
            continue;
        }
        let accounts = match known_accounts(&services.pool).await {
            Ok(accounts) => accounts,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "background reconciliation failed");
                vec![Account::PLATFORM]
            }
        };
        for account in accounts {
            match run(&services, &account, None).await {
                Ok(report) => tracing::info!(%report, "background reconciliation done"),
                Err(e) => {
                    tracing::warn!(%account, error = %error_chain(&e), "background reconciliation failed");
                }
            }
        }
        let _ = locks::unlock(&mut conn, locks::RECONCILE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(
            parse_duration("72h").unwrap(),
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(
            parse_duration("3d").unwrap(),
            Duration::from_secs(3 * 86_400)
        );
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        for bad in ["", "h", "72", "72w", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
