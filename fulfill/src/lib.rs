//! fulfill: turns paid Checkout Sessions into credits, exactly once.
//!
//! Consumes checkout events, refetches the current session from Stripe (never trusting
//! the event payload), applies the credits rule and records the result in PostgreSQL,
//! where unique keys and row locks make every session count once however many times,
//! in whatever order and by however many processes its events are delivered.

pub mod config;
pub mod consumer;
pub mod db;
pub mod dlq;
pub mod domain;
pub mod error;
pub mod expiry;
pub mod fulfillment;
pub mod gauges;
mod http;
pub mod metrics;
pub mod outbox;
pub mod reconcile;
pub mod services;
pub mod startup;
pub mod stripe;
pub mod topology_migrate;
