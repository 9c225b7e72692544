//! `Application::build` migrates, connects and binds; `run_until_stopped` serves and
//! consumes until the token is cancelled, then shuts down in order: stop accepting HTTP
//! and stop consuming → finish in-flight requests and deliveries → close the broker
//! connection.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{App, HttpServer, dev::Server, middleware::from_fn, web};
use secrecy::SecretString;
use shared::telemetry::http::server_span;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    consumer::Consumer,
    db,
    http::{self, AppState},
    services::Services,
};

pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long start-up keeps retrying migrations while PostgreSQL is unreachable.
const MIGRATION_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database migrations failed")]
    Migrations(#[from] db::MigrationError),
    #[error("cannot build the Stripe client")]
    Stripe(#[from] reqwest::Error),
    #[error("cannot listen on the HTTP address")]
    Bind(#[from] std::io::Error),
}

pub struct Application {
    port: u16,
    server: Server,
    consumer: Consumer,
    background: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        migrate_with_patience(&config.database_url).await?;
        let listener = TcpListener::bind(config.addr)?;
        let port = listener.local_addr()?.port();
        let services = Services::build(&config)?;
        let Services {
            pool,
            metrics,
            fulfiller,
            ..
        } = services.clone();
        let consumer = Consumer::start(config.amqp.clone(), config.consumer.clone(), &services);
        let background = CancellationToken::new();
        if let Some(every) = config.reconcile_interval {
            tokio::spawn(crate::reconcile::run_periodically(
                services.clone(),
                every,
                background.clone(),
            ));
        }
        tokio::spawn(crate::gauges::run(
            config.amqp.clone(),
            pool.clone(),
            Arc::clone(&metrics),
            background.clone(),
        ));
        // Credit events (outbox relay) and expiry of credit lots, in every process.
        tokio::spawn(crate::outbox::run(
            pool.clone(),
            config.amqp.clone(),
            background.clone(),
        ));
        tokio::spawn(crate::expiry::run(pool.clone(), background.clone()));
        let state = web::Data::new(AppState::new(
            pool,
            fulfiller,
            config.api_token.clone(),
            metrics,
            consumer.connected_flag(),
            Arc::clone(&services.key),
        ));
        let server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(http::request_metrics::record))
                .wrap(from_fn(server_span))
                .app_data(state.clone())
                .configure(http::configure)
        })
        .listen(listener)?
        .disable_signals()
        // Answers go out at once: no Nagle/delayed-ACK stall on keep-alive connections.
        .tcp_nodelay(true)
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .workers(2)
        .run();
        Ok(Self {
            port,
            server,
            consumer,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let _stop_background = self.background.drop_guard();
        let served = tokio::select! {
            result = &mut server => result,
            () = shutdown.cancelled() => {
                tracing::info!("stopping: no new requests or deliveries, finishing in-flight work");
                let (_, served, ()) = tokio::join!(handle.stop(true), &mut server, self.consumer.stop());
                tracing::info!("fulfill stopped");
                return flatten(served);
            }
        };
        self.consumer.stop().await;
        flatten(served)
    }
}

fn flatten(served: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    match served {
        Ok(result) => result,
        Err(join) => Err(std::io::Error::other(join)),
    }
}

async fn migrate_with_patience(url: &SecretString) -> Result<(), db::MigrationError> {
    let deadline = tokio::time::Instant::now() + MIGRATION_PATIENCE;
    let mut attempt = 0;
    loop {
        match db::run_migrations(url).await {
            Ok(applied) => {
                if !applied.is_empty() {
                    tracing::info!(?applied, "database migrations applied");
                }
                return Ok(());
            }
            // Only an unreachable server is waited for; a rejected certificate fails now.
            Err(db::MigrationError::Connect(e))
                if e.is_transient() && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "PostgreSQL unreachable; retrying migrations");
                tokio::time::sleep(shared::amqp::backoff(attempt, Duration::from_secs(5))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
