-- Only possible while no connected account has rows (the old keys would collide).
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (key);
ALTER TABLE idempotency_keys DROP COLUMN account;

CREATE UNIQUE INDEX credit_events_user_sequence_idx ON credit_events (user_id, sequence)
    WHERE sequence IS NOT NULL;
DROP INDEX credit_events_account_user_sequence_idx;
ALTER TABLE credit_events DROP COLUMN account;

CREATE INDEX credit_lots_open_idx ON credit_lots (user_id, expires_at, id) WHERE remaining > 0;
ALTER TABLE credit_lots DROP COLUMN account;

CREATE INDEX holds_active_idx ON holds (user_id, expires_at) WHERE status = 'active';
ALTER TABLE holds DROP COLUMN account;

ALTER TABLE checkout_sessions DROP COLUMN account;

CREATE INDEX ledger_entries_user_id_id_idx ON ledger_entries (user_id, id);
ALTER TABLE ledger_entries DROP COLUMN account;

ALTER TABLE balances DROP CONSTRAINT balances_pkey;
ALTER TABLE balances ADD PRIMARY KEY (user_id);
ALTER TABLE balances DROP COLUMN account;
