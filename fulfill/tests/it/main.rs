//! fulfill against the real RabbitMQ, a real PostgreSQL database per test and the fake
//! Stripe server. Events are published to the broker exactly as ingest publishes them.

mod api;
mod credits_rule;
mod delivery;
mod helpers;
mod stripe_faults;
