-- Reversals (refunds, disputes) and reconciliation. Expand-only: new columns have defaults
-- or are nullable, so fulfill processes of the previous release keep working.

-- Credits taken back from this session so far (refunds + disputes - disputes won).
ALTER TABLE checkout_sessions ADD COLUMN reversed_credits BIGINT NOT NULL DEFAULT 0;
-- Something an operator should look at on a session whose state is otherwise settled,
-- e.g. a refund that left the user's balance negative.
ALTER TABLE checkout_sessions ADD COLUMN attention TEXT;
CREATE INDEX checkout_sessions_flagged_idx ON checkout_sessions (updated_at)
    WHERE attention IS NOT NULL;

-- Where reconciliation got to: Stripe `created` (Unix seconds) of its last complete run.
CREATE TABLE reconcile_cursors (
    name        TEXT        PRIMARY KEY,
    created_gte BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
