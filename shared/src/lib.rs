//! What ingest and fulfill both need, and nothing that only one of them does:
//! configuration helpers, the Stripe event envelope, id newtypes, the RabbitMQ
//! topology both services declare, the shutdown signal and telemetry set-up.
//! No HTTP handlers and no SQL live here.

pub mod amqp;
pub mod config;
pub mod envelope;
pub mod event_type;
pub mod ids;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
