-- Credits converge to a target: a session's ledger entries are grouped by the component
-- they move (purchase, refund, dispute), so fulfill can read what each component holds
-- and write only the difference to what Stripe says now.
--
-- Expand-only, and no ledger row is rewritten. Entries written before this release (or
-- by a previous release still running during a rollout) have no `component`; they keep
-- their keys (`purchase:<cs>`, `refund:<re>`, `dispute:<dp>`, `dispute_won:<dp>`) and
-- are read as already-applied components by their reason (see `db::ledger::applied`), so
-- a deployment with history converges from exactly what it has taken, never twice.

ALTER TABLE ledger_entries ADD COLUMN component TEXT
    CHECK (component IN ('purchase', 'refund', 'dispute'));

CREATE INDEX ledger_entries_session_idx
    ON ledger_entries (stripe_session_id)
    WHERE stripe_session_id IS NOT NULL;

-- When (database clock) the fetch behind the last applied view started: a view whose
-- fetch started earlier is stale and writes nothing.
ALTER TABLE checkout_sessions ADD COLUMN view_started_at TIMESTAMPTZ;
