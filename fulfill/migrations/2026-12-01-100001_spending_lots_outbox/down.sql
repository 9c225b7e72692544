DROP TABLE idempotency_keys;
DROP TABLE credit_events;
DROP TABLE credit_lots;
DROP TABLE holds;
ALTER TABLE ledger_entries
    DROP COLUMN debit_id,
    DROP COLUMN hold_id,
    DROP COLUMN grant_id,
    DROP COLUMN memo,
    DROP COLUMN metadata,
    DROP COLUMN sequence;
ALTER TABLE balances DROP COLUMN sequence;
