DROP TABLE stripe_events;
DROP TABLE checkout_sessions;
DROP TABLE ledger_entries;
DROP TABLE balances;
