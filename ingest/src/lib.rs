//! ingest: the Stripe webhook endpoint.
//!
//! Verifies `Stripe-Signature` over the raw body, publishes the untouched bytes to
//! RabbitMQ and answers 2xx only once the broker has confirmed the persistent publish.

pub mod config;
pub mod error;
pub mod metrics;
pub mod publisher;
mod routes;
pub mod signature;
pub mod startup;
