//! PostgreSQL access: the pool, migrations, and one module per table group.
//!
//! diesel-async over tokio-postgres with a bb8 pool, rather than sync diesel on a blocking
//! pool: fulfill spends its life waiting on Stripe and the broker on the tokio runtime, and
//! many short transactions interleave with those waits; an async pool keeps that on one
//! runtime without sizing a blocking thread pool to the connection count, and it needs no
//! libpq. Query functions take `&mut AsyncPgConnection` so the caller owns the transaction.

pub mod budget;
pub mod cursors;
pub mod events;
pub mod holds;
pub mod idempotency;
pub mod ledger;
pub mod locks;
pub mod lots;
pub mod outbox;
pub mod schema;
pub mod sessions;
pub mod spending;

use std::time::Duration;

use diesel::{Connection, RunQueryDsl};
use diesel_async::{
    AsyncPgConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{AsyncDieselConnectionManager, bb8},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use secrecy::{ExposeSecret, SecretString};

pub type Pool = bb8::Pool<AsyncPgConnection>;
pub type PoolError = diesel_async::pooled_connection::bb8::RunError;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The client span around one transaction, by the database semantic conventions
/// (`db.system.name`); statements inside are not traced one by one, and nothing of the
/// connection string (which holds the password) is recorded. A rolled-back transaction
/// gets status ERROR from its caller ([`crate::error::FulfillError::record_on`]).
/// <https://opentelemetry.io/docs/specs/semconv/database/database-spans/>
pub fn transaction_span() -> tracing::Span {
    tracing::info_span!(
        "db.transaction",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "postgresql",
        error.type = tracing::field::Empty,
    )
}

/// Whether the database answers (readiness).
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(mut conn) => {
            diesel_async::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut conn)
                .await
                .is_ok()
        }
        Err(_) => false,
    }
}

/// A pool that connects lazily: start-up does not fail while PostgreSQL is restarting.
pub fn pool(url: &SecretString, max_size: u32) -> Pool {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url.expose_secret());
    Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(5))
        .test_on_check_out(true)
        .build_unchecked(manager)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] diesel::ConnectionError),
    #[error("cannot take the migration lock")]
    Lock(#[source] diesel::result::Error),
    #[error("a migration failed: {0}")]
    Apply(String),
    #[error("the migration task died")]
    Join(#[source] tokio::task::JoinError),
}

/// Applies pending migrations; returns the versions applied now.
pub async fn run_migrations(url: &SecretString) -> Result<Vec<String>, MigrationError> {
    let url = url.expose_secret().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(MigrationError::Connect)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({})", locks::MIGRATIONS))
            .execute(&mut conn)
            .map_err(MigrationError::Lock)?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|e| MigrationError::Apply(e.to_string()));
        let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({})", locks::MIGRATIONS))
            .execute(&mut conn);
        applied
    })
    .await
    .map_err(MigrationError::Join)?
}
