//! ingest against the real RabbitMQ: each test has its own topology prefix and its own
//! in-process ingest on a random port.

mod broker_outage;
mod helpers;
mod observability;
mod webhook;
