//! `Application::build` binds and connects; `run_until_stopped` serves until the token
//! is cancelled, then shuts down in order: stop accepting → finish in-flight requests
//! (and so their publishes) → close the broker connection.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{App, HttpServer, dev::Server, middleware::from_fn, web};
use shared::telemetry::http::server_span;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config, metrics::Metrics, publisher::Publisher, routes, signature::WebhookSecret,
};

/// How long in-flight requests get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What every request handler reads.
pub struct AppState {
    pub webhook_secrets: Vec<WebhookSecret>,
    pub tolerance: Duration,
    pub body_limit: usize,
    pub body_timeout: Duration,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
}

pub struct Application {
    port: u16,
    server: Server,
    publisher: Publisher,
    supervisor: JoinHandle<()>,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and starts connecting to the broker.
    /// Returns without waiting for the broker: until it is up, `/readyz` says so and
    /// webhooks get 503.
    pub fn build(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.addr)?;
        let port = listener.local_addr()?.port();
        let metrics = Arc::new(Metrics::new());
        let (publisher, supervisor) = Publisher::start(
            config.amqp.clone(),
            config.publish_channels,
            config.publish_timeout,
            Arc::clone(&metrics),
        );
        let state = web::Data::new(AppState {
            webhook_secrets: config.webhook_secrets,
            tolerance: config.tolerance,
            body_limit: config.body_limit,
            body_timeout: config.body_timeout,
            publisher: publisher.clone(),
            metrics,
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(server_span))
                .app_data(state.clone())
                .configure(routes::configure)
        })
        .listen(listener)?
        // Shutdown is driven by our token, not by actix's own signal handlers.
        .disable_signals()
        // Answers go out at once: no Nagle/delayed-ACK stall on keep-alive connections.
        .tcp_nodelay(true)
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs());
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        Ok(Self {
            port,
            server: server.run(),
            publisher,
            supervisor,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let served = tokio::select! {
            result = &mut server => result,
            () = shutdown.cancelled() => {
                tracing::info!("stopping: no new connections, finishing in-flight requests");
                handle.stop(true).await;
                server.await
            }
        };
        self.publisher.close().await;
        let _ = self.supervisor.await;
        tracing::info!("ingest stopped");
        match served {
            Ok(result) => result,
            Err(join) => Err(std::io::Error::other(join)),
        }
    }
}
