-- Spending (debits, holds, grants), expiring lots, the credit-events outbox and
-- idempotency keys. Expand-only: new tables, nullable columns or columns with defaults,
-- so fulfill processes of the previous release keep working beside this one.

-- The per-user counter of ledger entries that numbers credit events (allocated under the
-- balance row lock, in the entry's transaction: gap-free because it rolls back with it).
-- Existing entries keep their place: the counter starts after them.
ALTER TABLE balances ADD COLUMN sequence BIGINT NOT NULL DEFAULT 0;
UPDATE balances b
   SET sequence = (SELECT count(*) FROM ledger_entries e WHERE e.user_id = b.user_id);

-- What is behind an entry, and its place in the user's sequence (NULL for entries
-- written before this migration: the ledger is append-only, never rewritten).
ALTER TABLE ledger_entries
    ADD COLUMN debit_id TEXT,
    ADD COLUMN hold_id  TEXT,
    ADD COLUMN grant_id TEXT,
    -- The caller's own words (a debit's or grant's "reason") and metadata.
    ADD COLUMN memo     TEXT,
    ADD COLUMN metadata JSONB,
    ADD COLUMN sequence BIGINT;

-- Holds reserve credits until captured, released or expired (expiry is derived from
-- expires_at: a hold stops counting by itself, no sweep needed).
CREATE TABLE holds (
    hold_id    TEXT        PRIMARY KEY,
    user_id    TEXT        NOT NULL,
    amount     BIGINT      NOT NULL CHECK (amount > 0),
    status     TEXT        NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'captured', 'released')),
    captured   BIGINT,
    reason     TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    -- The answer a capture or release gave, repeated verbatim when asked again.
    settled    JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX holds_active_idx ON holds (user_id, expires_at) WHERE status = 'active';

-- Lots: what is left of each positive entry, and when it expires (NULL: never).
-- Invariant (under the balance row lock): Σ remaining = max(credits, 0).
CREATE TABLE credit_lots (
    id                BIGSERIAL   PRIMARY KEY,
    user_id           TEXT        NOT NULL,
    entry_id          BIGINT      REFERENCES ledger_entries (id),
    stripe_session_id TEXT,
    credits           BIGINT      NOT NULL,
    remaining         BIGINT      NOT NULL CHECK (remaining >= 0),
    expires_at        TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX credit_lots_open_idx ON credit_lots (user_id, expires_at, id) WHERE remaining > 0;
CREATE INDEX credit_lots_expiring_idx ON credit_lots (expires_at)
    WHERE remaining > 0 AND expires_at IS NOT NULL;
-- Existing balances: one non-expiring lot per user for the current positive balance.
INSERT INTO credit_lots (user_id, credits, remaining)
SELECT user_id, credits, credits FROM balances WHERE credits > 0;

-- The transactional outbox of credit events, relayed to the credits.events exchange.
CREATE TABLE credit_events (
    id          BIGSERIAL   PRIMARY KEY,
    event_id    TEXT        NOT NULL UNIQUE,
    routing_key TEXT        NOT NULL,
    user_id     TEXT,
    sequence    BIGINT,
    payload     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ
);
CREATE INDEX credit_events_unsent_idx ON credit_events (id) WHERE sent_at IS NULL;
CREATE UNIQUE INDEX credit_events_user_sequence_idx ON credit_events (user_id, sequence)
    WHERE sequence IS NOT NULL;

-- Idempotency-Key: the first answer to a request, written in the request's transaction.
CREATE TABLE idempotency_keys (
    key         TEXT        PRIMARY KEY,
    fingerprint TEXT        NOT NULL,
    status      SMALLINT    NOT NULL,
    response    JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
