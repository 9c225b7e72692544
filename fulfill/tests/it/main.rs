//! fulfill against the real RabbitMQ, a real PostgreSQL database per test and the fake
//! Stripe server. Events are published to the broker exactly as ingest publishes them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod api;
mod budget;
mod connect;
mod convergence;
mod credits_rule;
mod delivery;
mod errors;
mod expiry;
mod failover;
mod group_commit;
mod helpers;
mod migrations;
mod modes_and_keys;
mod openapi;
mod operations;
mod outbox;
mod pool;
mod reversals;
mod spending;
mod stripe_faults;
mod topology_upgrade;
