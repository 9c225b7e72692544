-- Stripe Connect: every user-owned row belongs to an account, '' being the platform.
-- Existing rows are the platform's (the column's default): nothing is rewritten, and a
-- constant default makes each ADD COLUMN a catalogue change only (PostgreSQL 11+).
--
-- Balances and idempotency keys change their keys, (account, user_id) and
-- (account, key): two connected accounts may have users, and keys, of the same name.
-- A fulfill process of the previous release writes with ON CONFLICT (user_id), which
-- no longer matches a unique index: its writes fail and are retried (deliveries go back
-- to the queue, the API answers 5xx) until it is replaced, so nothing is lost or
-- doubled. Apply this migration (`fulfill migrate`) and roll out together.

ALTER TABLE balances ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE balances DROP CONSTRAINT balances_pkey;
ALTER TABLE balances ADD PRIMARY KEY (account, user_id);

ALTER TABLE ledger_entries ADD COLUMN account TEXT NOT NULL DEFAULT '';
CREATE INDEX ledger_entries_account_user_id_idx ON ledger_entries (account, user_id, id);
DROP INDEX ledger_entries_user_id_id_idx;

ALTER TABLE checkout_sessions ADD COLUMN account TEXT NOT NULL DEFAULT '';

ALTER TABLE holds ADD COLUMN account TEXT NOT NULL DEFAULT '';
CREATE INDEX holds_account_active_idx ON holds (account, user_id, expires_at)
    WHERE status = 'active';
DROP INDEX holds_active_idx;

ALTER TABLE credit_lots ADD COLUMN account TEXT NOT NULL DEFAULT '';
CREATE INDEX credit_lots_account_open_idx ON credit_lots (account, user_id, expires_at, id)
    WHERE remaining > 0;
DROP INDEX credit_lots_open_idx;

ALTER TABLE credit_events ADD COLUMN account TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX credit_events_account_user_sequence_idx
    ON credit_events (account, user_id, sequence) WHERE sequence IS NOT NULL;
DROP INDEX credit_events_user_sequence_idx;

ALTER TABLE idempotency_keys ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (account, key);

