//! Test helpers shared by every suite: an isolated slice of the real RabbitMQ, a private
//! PostgreSQL database, a TCP proxy that can cut a connection, private RabbitMQ and
//! PostgreSQL servers, and polling helpers.
//!
//! Everything a test creates carries a random prefix and is removed on `Drop`, so tests
//! run in parallel and leave nothing behind.

pub mod broker;
pub mod db;
pub mod proxy;
pub mod services;

pub use services::free_port;

use std::{future::Future, time::Duration};

/// A short random lowercase name, unique enough for parallel tests.
pub fn unique_name(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}{n:016x}")
}

/// Polls `check` every 50 ms until it returns `Some`, or gives up after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `work` to completion on a fresh runtime in its own thread; for `Drop` impls
/// that must do async clean-up whatever runtime (if any) they are dropped in.
pub fn block_on_side<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let thread = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    });
    let _ = thread.join();
}

pub use shared::telemetry::init_for_tests as init_tracing;

/// An HTTP client for tests (reqwest is built without a default TLS provider).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}
