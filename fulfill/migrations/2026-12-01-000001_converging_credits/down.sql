ALTER TABLE checkout_sessions DROP COLUMN view_started_at;
DROP INDEX ledger_entries_session_idx;
ALTER TABLE ledger_entries DROP COLUMN component;
