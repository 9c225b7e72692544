-- One Stripe fetch per session at a time across every fulfill process (a lease, so a
-- crashed holder blocks nobody for long), and the Stripe rate budget shared by every
-- fulfill process (the next free slot, handed out by the database's clock).

ALTER TABLE checkout_sessions ADD COLUMN fetch_lease_until TIMESTAMPTZ;

CREATE TABLE stripe_rate_budget (
    name      TEXT        PRIMARY KEY,
    next_slot TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO stripe_rate_budget (name) VALUES ('stripe');
