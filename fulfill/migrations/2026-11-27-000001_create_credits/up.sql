-- Credits: an append-only ledger, the balance it sums to, the state of every Checkout
-- Session we have seen, and every Stripe event id we have received.

CREATE TABLE balances (
    user_id    TEXT        PRIMARY KEY,
    credits    BIGINT      NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE ledger_entries (
    id                BIGSERIAL   PRIMARY KEY,
    user_id           TEXT        NOT NULL,
    delta             BIGINT      NOT NULL,
    -- purchase | refund | dispute | dispute_won | adjustment
    reason            TEXT        NOT NULL,
    -- Exactly once: one entry per purchase (purchase:<session>), refund, dispute...
    idempotency_key   TEXT        NOT NULL UNIQUE,
    stripe_session_id TEXT,
    stripe_event_id   TEXT,
    stripe_object_id  TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_user_id_id_idx ON ledger_entries (user_id, id);

CREATE TABLE checkout_sessions (
    session_id        TEXT        PRIMARY KEY,
    state             TEXT        NOT NULL
        CHECK (state IN ('pending', 'credited', 'needs_attention', 'failed', 'expired')),
    user_id           TEXT,
    credits           BIGINT,
    -- Why a session needs attention, in words an operator can act on.
    reason            TEXT,
    stripe_status     TEXT,
    payment_status    TEXT,
    payment_intent_id TEXT,
    amount_total      BIGINT,
    currency          TEXT,
    livemode          BOOLEAN,
    last_event_id     TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX checkout_sessions_attention_idx ON checkout_sessions (updated_at)
    WHERE state = 'needs_attention';
CREATE INDEX checkout_sessions_payment_intent_idx ON checkout_sessions (payment_intent_id);

CREATE TABLE stripe_events (
    event_id    TEXT        PRIMARY KEY,
    event_type  TEXT        NOT NULL,
    object_id   TEXT,
    outcome     TEXT        NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
