//! fulfill's HTTP API: the route table, and the bearer-token check of CONTRACT.md.

mod attention;
mod auth;
mod balance;
mod fulfill;
mod health;
mod ledger;
mod metrics;
pub mod request_metrics;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use actix_web::web;
pub use auth::Authorized;
use secrecy::SecretString;

use crate::{db::Pool, fulfillment::Fulfiller, metrics::Metrics, stripe::KeyHealth};

/// What every handler may use.
pub struct AppState {
    pub pool: Pool,
    pub fulfiller: Arc<Fulfiller>,
    pub api_token: Option<SecretString>,
    pub metrics: Arc<Metrics>,
    consumer_connected: Arc<AtomicBool>,
    key: Arc<KeyHealth>,
}

impl AppState {
    pub fn new(
        pool: Pool,
        fulfiller: Arc<Fulfiller>,
        api_token: Option<SecretString>,
        metrics: Arc<Metrics>,
        consumer_connected: Arc<AtomicBool>,
        key: Arc<KeyHealth>,
    ) -> Self {
        Self {
            pool,
            fulfiller,
            api_token,
            metrics,
            consumer_connected,
            key,
        }
    }

    /// True while Stripe rejects the API key (consuming is stopped).
    pub fn key_rejected(&self) -> bool {
        self.key.is_rejected()
    }

    /// True while the consumer is connected to the broker.
    pub fn consumer_connected(&self) -> bool {
        self.consumer_connected.load(Ordering::SeqCst)
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/users/{user_id}/balance", web::get().to(balance::balance))
        .route("/users/{user_id}/ledger", web::get().to(ledger::ledger))
        .route(
            "/checkout/sessions/{session_id}/fulfill",
            web::post().to(fulfill::fulfill),
        )
        .route(
            "/checkout/sessions/{session_id}",
            web::get().to(fulfill::state),
        )
        .route("/attention", web::get().to(attention::attention))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/readyz/api", web::get().to(health::readyz_api))
        .route("/metrics", web::get().to(metrics::metrics));
}

/// Parses a user id from the path, with a clear 400 for one that can never be credited.
fn user_id(raw: String) -> Result<shared::ids::UserId, crate::error::ApiError> {
    shared::ids::UserId::parse(raw).map_err(|e| crate::error::ApiError::BadRequest(e.to_string()))
}
