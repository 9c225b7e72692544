//! Private infrastructure for the chaos suite: a RabbitMQ node and a PostgreSQL cluster of
//! its own, on their own ports and folders, started from the installed packages, so that
//! stopping and restarting them never disturbs other tests or the machine's own services.
//! The servers themselves live in [`test_support::services`], which `devstack up` uses too.

pub use test_support::services::{PrivatePostgres, PrivateRabbit, ServerTls};
