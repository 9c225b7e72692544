//! Group commit: the ledger transactions of sessions that converge at the same moment
//! share one database transaction.
//!
//! Convergences hand their fresh view to a few committer tasks through a channel; a
//! committer takes whatever has gathered (at most [`MAX_GROUP`]) and writes it in one
//! transaction. Nobody waits to fill a group: a view handed over while a committer is free
//! is written at once, alone, exactly as before. Views gather only while every committer
//! is busy, which is when each would otherwise have queued for a connection anyway; then
//! `BEGIN`, the row locks and `COMMIT` (and its WAL flush) serve the whole group instead
//! of one session.
//!
//! Within the transaction a group is written by one statement per table when its
//! sessions allow it ([`shared_statements`]: each adds credits to a balance no other
//! session of the group moves), else one [`persist::apply`] per session. Both decide
//! with the same pure functions ([`persist::Planned`], [`persist::Outcome`]), so a
//! session's rows are the same either way (`tests/it/group_commit.rs` compares them row
//! by row).
//!
//! Locks are taken in one order everywhere, so groups never deadlock with each other or
//! with a single session's transaction: first every session row of the group, in
//! session-id order (one statement), then the balances, the sessions applied in order of
//! the balance row they move (account, user), each balance before its user's lots. A
//! lone transaction takes its session row, then its user's balance; the spending API and
//! expiry take no session row, only balances and then their lots.
//!
//! A group is all or nothing: when any session of it fails (a conflict, another
//! account's session, a lost connection), nothing of the group is kept and each of its
//! sessions is written again alone, one after the other in transactions of their own
//! (a committer holds one connection at a time), so that one session's error is that
//! session's alone and the others are written as they would have been. A session whose
//! row is gone (its lease's row removed in between) is written alone too, after the
//! group: its row is created and locked by its own transaction, in lock order.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use shared::{
    event_type::EventType,
    ids::{CheckoutSessionId, EventId},
};
use tracing::Instrument;

use super::{
    EventRef,
    batch::Batcher,
    persist::{self, Persisted, View},
};
use crate::{
    db::{
        self, Pool,
        ledger::{self, Applied},
        sessions,
    },
    domain::{
        account::Account, credits::Decision, cue::Cue, target::MoneyView, target::RefundPolicy,
    },
    error::FulfillError,
    metrics::Metrics,
    stripe::checkout_session::CheckoutSession,
};

/// Sessions written by one transaction, at most.
const MAX_GROUP: usize = 16;
/// Committer tasks per process: transactions of this process in flight at once.
const COMMITTERS: usize = 2;

/// One session's fresh view, to be written.
pub(super) struct Job {
    pub account: Account,
    pub session_id: CheckoutSessionId,
    pub session: CheckoutSession,
    pub decision: Decision,
    pub money: Option<MoneyView>,
    pub started: DateTime<Utc>,
    pub cue: Cue,
    pub event: Option<(EventId, EventType)>,
    /// The convergence's span: the transaction's span goes below it.
    pub span: tracing::Span,
}

impl Job {
    fn view(&self) -> View<'_> {
        View {
            session: &self.session,
            decision: &self.decision,
            money: self.money.as_ref(),
            started: self.started,
        }
    }

    fn event_id(&self) -> Option<&str> {
        self.event.as_ref().map(|(id, _)| id.as_str())
    }

    fn event(&self) -> Option<EventRef<'_>> {
        self.event.as_ref().map(|(id, event_type)| EventRef {
            id,
            event_type: *event_type,
        })
    }

    async fn apply(
        &self,
        conn: &mut AsyncPgConnection,
        policy: RefundPolicy,
        locked: Option<(sessions::SessionRow, Applied)>,
    ) -> Result<Persisted, FulfillError> {
        persist::apply(
            conn,
            &self.account,
            &self.session_id,
            &self.view(),
            &self.cue,
            self.event(),
            policy,
            locked,
        )
        .await
    }
}

type Reply = super::batch::Reply<Persisted>;

pub(super) struct GroupCommit {
    batcher: Batcher<Job, Persisted>,
}

impl GroupCommit {
    pub(super) fn new(pool: Pool, policy: RefundPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            batcher: Batcher::new("group-commit", COMMITTERS, MAX_GROUP, move |group| {
                let (pool, metrics) = (pool.clone(), Arc::clone(&metrics));
                async move { commit(&pool, policy, &metrics, group).await }
            }),
        }
    }

    /// Writes the session's view (with others gathered meanwhile) and returns what its
    /// transaction did, once that transaction committed.
    pub(super) async fn persist(&self, job: Job) -> Result<Persisted, FulfillError> {
        self.batcher.ask(job).await
    }
}

async fn commit(pool: &Pool, policy: RefundPolicy, metrics: &Metrics, group: Vec<(Job, Reply)>) {
    if group.len() == 1 {
        write_alone(pool, policy, metrics, group).await;
        return;
    }
    let spans: Vec<tracing::Span> = group
        .iter()
        .map(|(job, _)| job.span.in_scope(db::transaction_span))
        .collect();
    let jobs: Vec<&Job> = group.iter().map(|(job, _)| job).collect();
    let outcome = together(pool, policy, &jobs, &spans).await;
    drop(jobs);
    match outcome {
        Ok((written, shared)) => {
            let n = written.iter().filter(|w| w.is_some()).count();
            if n > 0 {
                metrics.transaction_sessions.observe(n as f64);
            }
            if shared {
                metrics.group_shared_statements.inc();
            }
            drop(spans);
            let mut rest = Vec::new();
            for ((job, reply), persisted) in group.into_iter().zip(written) {
                match persisted {
                    Some(persisted) => {
                        let _ = reply.send(Ok(persisted));
                    }
                    None => rest.push((job, reply)),
                }
            }
            write_alone(pool, policy, metrics, rest).await;
        }
        Err((failed, e)) => {
            // The error is the failing session's; the others' work was only undone.
            match failed {
                Some(i) => e.record_on(&spans[i]),
                None => spans.iter().for_each(|span| e.record_on(span)),
            }
            drop(spans);
            metrics.group_retries.inc();
            tracing::debug!(error = %e, sessions = group.len(), "a group's transaction failed; writing its sessions one by one");
            write_alone(pool, policy, metrics, group).await;
        }
    }
}

/// Each job in a transaction of its own, one after the other (a connection at a time).
async fn write_alone(
    pool: &Pool,
    policy: RefundPolicy,
    metrics: &Metrics,
    jobs: Vec<(Job, Reply)>,
) {
    for (job, reply) in jobs {
        let written = alone(pool, policy, &job).await;
        if written.is_ok() {
            metrics.transaction_sessions.observe(1.0);
        }
        let _ = reply.send(written);
    }
}

/// One session, one transaction (as before group commit).
async fn alone(pool: &Pool, policy: RefundPolicy, job: &Job) -> Result<Persisted, FulfillError> {
    let transaction = job.span.in_scope(db::transaction_span);
    let written = async {
        let mut conn = pool.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        conn.transaction(async |conn: &mut AsyncPgConnection| job.apply(conn, policy, None).await)
            .await
    }
    .instrument(transaction.clone())
    .await;
    if let Err(e) = &written {
        e.record_on(&transaction);
    }
    written
}

/// Several sessions, one transaction: every session row locked first (in session-id
/// order), then the sessions written in the order of the balance each moves — by one
/// statement per table for the whole group when its sessions allow it
/// ([`shared_statements`]), else each session by statements of its own. Returns each
/// session's result in `jobs`' order, `None` for a session whose row was gone (it is
/// written alone: creating its row here would take a row lock out of order), and whether
/// the statements were shared; or the error, with the failing session when it was one's,
/// and nothing is kept.
async fn together(
    pool: &Pool,
    policy: RefundPolicy,
    jobs: &[&Job],
    spans: &[tracing::Span],
) -> Result<(Vec<Option<Persisted>>, bool), (Option<usize>, FulfillError)> {
    let failed = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let written = async {
        let mut conn = pool.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        conn.transaction(async |conn: &mut AsyncPgConnection| {
            let mut ids: Vec<&str> = jobs.iter().map(|j| j.session_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            // The rows locked, then their entries read (a statement after the lock's, so
            // with a snapshot from after every lock was granted): one round trip.
            let shared: &AsyncPgConnection = conn;
            let (rows, mut applied) = futures_util::try_join!(
                sessions::lock_all(shared, &ids),
                ledger::applied_all(shared, &ids),
            )?;
            let mut locked = by_session(rows);
            let present: std::collections::HashSet<String> = locked.keys().cloned().collect();
            let order = apply_order(jobs, &locked);
            if let Some(written) =
                shared_statements(conn, policy, jobs, &order, &locked, &applied).await?
            {
                return Ok((written, true));
            }
            let mut written: Vec<Option<Persisted>> = jobs.iter().map(|_| None).collect();
            for i in order {
                let job = jobs[i];
                let id = job.session_id.as_str();
                if !present.contains(id) {
                    continue;
                }
                // A session twice in the group: the second application locks and reads
                // again (and sees the first's writes, in the same transaction).
                let read = locked
                    .remove(id)
                    .map(|row| (row, applied.remove(id).unwrap_or_default()));
                match job
                    .apply(conn, policy, read)
                    .instrument(spans[i].clone())
                    .await
                {
                    Ok(persisted) => written[i] = Some(persisted),
                    Err(e) => {
                        failed.store(i, std::sync::atomic::Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok((written, false))
        })
        .await
    }
    .await;
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    written.map_err(|e| ((failed != usize::MAX).then_some(failed), e))
}

/// The group's sessions written by one statement per table, when every one of them whose
/// row is present (the others are written alone after the group) allows it: once in the
/// group, of its row's account, its view not stale, at most one entry to write and that
/// one adding credits, to a balance no other session of the group moves, and nothing to
/// announce beyond its credit event; and at least two of them. Then the balances and
/// entries are one statement (the balances moved in `order`, the lock order), the lots,
/// credit events and Stripe events' records one, the session rows one; each session's rows exactly as
/// [`persist::apply`] writes them (the plan, the entries, the update and the record come
/// from the same functions). `None`: some session does not allow it, nothing written.
async fn shared_statements(
    conn: &mut AsyncPgConnection,
    policy: RefundPolicy,
    jobs: &[&Job],
    order: &[usize],
    locked: &HashMap<String, sessions::SessionRow>,
    applied: &HashMap<String, Applied>,
) -> Result<Option<Vec<Option<Persisted>>>, FulfillError> {
    // Decided before anything is written: each session's plan, and whether all allow it.
    let mut sessions_seen = std::collections::HashSet::new();
    let mut users = std::collections::HashSet::new();
    let mut plans: Vec<(usize, &sessions::SessionRow, persist::Planned, View<'_>)> = Vec::new();
    for &i in order {
        let job = jobs[i];
        let id = job.session_id.as_str();
        // A session whose row is gone is written alone after the group.
        let Some(row) = locked.get(id) else {
            continue;
        };
        let view = job.view();
        if !sessions_seen.insert(id)
            || super::same_account(row, &job.account).is_err()
            || persist::is_stale(row, &view)
        {
            return Ok(None);
        }
        let planned = persist::Planned::new(
            row,
            &applied.get(id).copied().unwrap_or_default(),
            &job.session_id,
            &view,
            &job.cue,
            policy,
        );
        let moves = &planned.plan.moves;
        if planned.newly_needs_attention(row)
            || moves.len() > 1
            || moves.iter().any(|m| m.delta <= 0)
        {
            return Ok(None);
        }
        if !moves.is_empty() {
            match planned.user.as_deref() {
                Some(user) if users.insert((job.account.key(), user.to_owned())) => {}
                _ => return Ok(None),
            }
        }
        plans.push((i, row, planned, view));
    }
    // Sessions whose row is gone are written alone: one left is a session alone too.
    if plans.len() < 2 {
        return Ok(None);
    }
    let mut entries = Vec::new();
    // For each plan, the index of its entry in `entries`.
    let mut entry_of = Vec::with_capacity(plans.len());
    for (i, _, planned, view) in &plans {
        let job = jobs[*i];
        let mut own = planned.entries(
            &job.account,
            &job.session_id,
            view,
            &job.cue,
            job.event_id(),
        )?;
        entry_of.push((!own.is_empty()).then_some(entries.len()));
        entries.append(&mut own);
    }
    let pending = if entries.is_empty() {
        Vec::new()
    } else {
        ledger::write_entries(conn, &entries)
            .await?
            // The row locks make this unreachable; a unique key is the last guard.
            .map_err(FulfillError::Conflict)?
    };
    let outcomes: Vec<persist::Outcome> = plans
        .iter()
        .zip(&entry_of)
        .map(|((_, row, planned, _), entry)| {
            let balance = entry.map(|e| pending[e].appended.credits_after);
            persist::Outcome::new(row, planned, balance)
        })
        .collect();
    let mut records = Vec::new();
    let mut updates = Vec::with_capacity(plans.len());
    for ((i, row, planned, view), outcome) in plans.iter().zip(&outcomes) {
        let job = jobs[*i];
        updates.push((
            planned
                .update(outcome, view, job.event_id())
                .applied_to(row),
            job.started,
        ));
        if let Some(event) = job.event() {
            records.push(outcome.record(planned, &job.session_id, event));
        }
    }
    let written: Vec<_> = entries.into_iter().zip(pending).collect();
    let shared: &AsyncPgConnection = conn;
    let ((), rows) = futures_util::try_join!(
        async {
            if written.is_empty() && records.is_empty() {
                Ok(())
            } else {
                ledger::announce_all(shared, &written, &records).await
            }
        },
        sessions::update_all(shared, &updates),
    )?;
    let mut rows = by_session(rows);
    let mut persisted: Vec<Option<Persisted>> = jobs.iter().map(|_| None).collect();
    for ((i, _, planned, _), outcome) in plans.iter().zip(&outcomes) {
        // Every row is locked by this transaction: each was updated.
        let row = rows
            .remove(jobs[*i].session_id.as_str())
            .ok_or(diesel::result::Error::NotFound)?;
        persisted[*i] = Some(outcome.persisted(planned, &row));
    }
    Ok(Some(persisted))
}

fn by_session(rows: Vec<sessions::SessionRow>) -> HashMap<String, sessions::SessionRow> {
    rows.into_iter()
        .map(|row| (row.session_id.clone(), row))
        .collect()
}

/// The order to apply a group's sessions in: by the balance row each one's entries move
/// (account, then user; a session without a user first), then by session id.
fn apply_order(jobs: &[&Job], locked: &HashMap<String, sessions::SessionRow>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_cached_key(|&i| {
        let job = jobs[i];
        let user = locked
            .get(job.session_id.as_str())
            .and_then(|row| persist::entries_user(row, &job.decision))
            .or_else(|| persist::decided_user(&job.decision));
        (
            job.account.key().to_owned(),
            user.map(str::to_owned),
            job.session_id.as_str().to_owned(),
        )
    });
    order
}
