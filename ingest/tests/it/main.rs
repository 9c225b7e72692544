//! ingest against the real RabbitMQ: each test has its own topology prefix and its own
//! in-process ingest on a random port.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod abuse;
mod broker_outage;
mod helpers;
mod observability;
mod webhook;
