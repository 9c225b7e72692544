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
pub mod prepared;
pub mod schema;
pub mod sessions;
pub mod spending;
pub mod tls;

use std::time::Duration;

use std::sync::Arc;

use diesel::RunQueryDsl;
use diesel_async::{
    AsyncPgConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, PoolableConnection, RecyclingMethod, bb8,
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
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
    let span = tracing::info_span!(
        "db.transaction",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    // For the trace backend only (the log layer would format it for every transaction).
    shared::telemetry::set_attributes(&span, || {
        [shared::telemetry::KeyValue::new(
            "db.system.name",
            "postgresql",
        )]
    });
    span
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
/// Make it on the runtime that outlives its users (the process's main runtime): its
/// connections are opened there.
/// Every connection goes through [`tls`] (diesel-async's default setup has no TLS); the
/// URL is read and the CA loaded once, and a fault there fails each checkout with its cause
/// (start-up has already refused it in the migrations, which run first).
pub fn pool(url: &SecretString, max_size: u32) -> Pool {
    let prepared = tls::PgTarget::parse(url.expose_secret())
        .and_then(|target| Ok((target.connector()?, target)))
        .map_err(|e| shared::telemetry::error_chain(&e));
    let prepared = Arc::new(prepared);
    let mut setup = ManagerConfig::default();
    // A checkout is checked without a round trip: a connection whose socket closed (the
    // server restarted, a proxy dropped it) or whose transaction state broke is replaced.
    // diesel-async's default check sends `SELECT 1` on every checkout, which was a
    // quarter of all statements per credited session.
    setup.recycling_method =
        RecyclingMethod::CustomFunction(Box::new(|conn: &mut AsyncPgConnection| {
            let broken = conn.is_broken();
            async move {
                if broken {
                    Err(diesel::result::Error::BrokenTransactionManager)
                } else {
                    Ok(())
                }
            }
            .boxed()
        }));
    // Every connection is made on the runtime that made the pool (the process's main
    // runtime), wherever the checkout that needed it ran: a connection's socket and the
    // task driving it stay on the runtime that connected it, and one made for a request
    // on an HTTP worker's runtime (a readiness probe, a balance read) would have that
    // worker thread wake for every statement the consumers send on it afterwards.
    let runtime = tokio::runtime::Handle::try_current().ok();
    setup.custom_setup = Box::new(move |_url| {
        let prepared = Arc::clone(&prepared);
        let connect = async move {
            match prepared.as_ref() {
                Ok((connector, target)) => {
                    target
                        .connect(connector.clone())
                        .await
                        .map_err(|e| match e {
                            tls::PgConnectError::Setup(e) => e,
                            other => diesel::ConnectionError::BadConnection(
                                shared::telemetry::error_chain(&other),
                            ),
                        })
                }
                Err(message) => Err(diesel::ConnectionError::BadConnection(message.clone())),
            }
        };
        match &runtime {
            Some(runtime) => {
                let connecting = runtime.spawn(connect);
                async move {
                    connecting.await.unwrap_or_else(|e| {
                        Err(diesel::ConnectionError::BadConnection(format!(
                            "the connecting task failed: {e}"
                        )))
                    })
                }
                .boxed()
            }
            None => connect.boxed(),
        }
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        url.expose_secret(),
        setup,
    );
    Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(5))
        .test_on_check_out(true)
        .build_unchecked(manager)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot connect to PostgreSQL for the migrations")]
    Connect(#[source] tls::PgConnectError),
    #[error("cannot take the migration lock")]
    Lock(#[source] diesel::result::Error),
    #[error("a migration failed: {0}")]
    Apply(String),
    #[error("the migration task died")]
    Join(#[source] tokio::task::JoinError),
}

/// Applies pending migrations; returns the versions applied now.
/// Connects the way the pool does (same TLS), then runs diesel's harness on a blocking
/// thread over that connection.
pub async fn run_migrations(url: &SecretString) -> Result<Vec<String>, MigrationError> {
    let target =
        tls::PgTarget::parse(url.expose_secret()).map_err(|e| MigrationError::Connect(e.into()))?;
    let connector = target
        .connector()
        .map_err(|e| MigrationError::Connect(e.into()))?;
    let conn = target
        .connect(connector)
        .await
        .map_err(MigrationError::Connect)?;
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
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
