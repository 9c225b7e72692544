DROP TABLE stripe_rate_budget;
ALTER TABLE checkout_sessions DROP COLUMN fetch_lease_until;
