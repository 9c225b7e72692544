//! fulfill's HTTP API: the route table, and the bearer-token check of CONTRACT.md.
//!
//! Every path is a resource whose other methods answer 405; unknown paths answer 404;
//! bad paths, query strings and bodies 400 — all with the JSON error body.

mod account;
mod attention;
mod auth;
mod balance;
mod debits;
mod errors;
mod fulfill;
mod grants;
mod health;
mod holds;
mod idempotency;
mod ledger;
mod metrics;
pub mod openapi;
pub mod request_metrics;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use actix_web::{Route, http::Method, web};
use tracing::Instrument;

const GET: Method = Method::GET;
const POST: Method = Method::POST;
pub use auth::Authorized;
use secrecy::SecretString;

use crate::{
    db::Pool, error::FulfillError, fulfillment::Fulfiller, metrics::Metrics, stripe::KeyHealth,
};

/// What every handler may use.
pub struct AppState {
    pub pool: Pool,
    pub fulfiller: Arc<Fulfiller>,
    pub api_token: Option<SecretString>,
    pub metrics: Arc<Metrics>,
    consumer_connected: Arc<AtomicBool>,
    key: Arc<KeyHealth>,
    /// The process's main runtime (where the consumers run), when the state was made in
    /// one: see [`AppState::on_main_runtime`].
    runtime: Option<tokio::runtime::Handle>,
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
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Runs `work` on the main runtime and waits for it. For work that opens connections
    /// to keep (a Stripe call may open one): a connection stays on the runtime that
    /// opened it, and one opened on an HTTP worker's runtime would have that worker wake
    /// for every consumer call that reuses it. The work also runs to its end when the
    /// client goes away.
    pub async fn on_main_runtime<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, FulfillError>> + Send + 'static,
    ) -> Result<T, FulfillError> {
        match &self.runtime {
            // In the request's span: the work's spans stay in the request's trace.
            Some(runtime) => match runtime.spawn(work.in_current_span()).await {
                Ok(done) => done,
                // As it would have inline.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(FulfillError::ShuttingDown),
            },
            None => work.await,
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

use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    errors::configure(cfg);
    let routes: [(&str, Method, Route); 16] = [
        ("/users/{user_id}/balance", GET, web::to(balance::balance)),
        ("/users/{user_id}/ledger", GET, web::to(ledger::ledger)),
        ("/users/{user_id}/debits", POST, web::to(debits::debit)),
        ("/users/{user_id}/holds", POST, web::to(holds::create)),
        ("/users/{user_id}/grants", POST, web::to(grants::grant)),
        ("/holds/{hold_id}", GET, web::to(holds::show)),
        ("/holds/{hold_id}/capture", POST, web::to(holds::capture)),
        ("/holds/{hold_id}/release", POST, web::to(holds::release)),
        (
            "/checkout/sessions/{session_id}/fulfill",
            POST,
            web::to(fulfill::fulfill),
        ),
        (
            "/checkout/sessions/{session_id}",
            GET,
            web::to(fulfill::state),
        ),
        ("/attention", GET, web::to(attention::attention)),
        ("/healthz", GET, web::to(health::healthz)),
        ("/readyz", GET, web::to(health::readyz)),
        ("/readyz/api", GET, web::to(health::readyz_api)),
        ("/metrics", GET, web::to(metrics::metrics)),
        ("/openapi.json", GET, web::to(openapi::openapi_json)),
    ];
    for (path, method, route) in routes {
        let allow = method.to_string();
        cfg.service(
            web::resource(path)
                .route(route.method(method))
                .default_service(web::to(move || errors::method_not_allowed(allow.clone()))),
        );
    }
    cfg.default_service(web::to(errors::not_found));
}

/// Parses a user id from the path, with a clear 400 for one that can never be credited.
fn user_id(raw: String) -> Result<shared::ids::UserId, ApiError> {
    shared::ids::UserId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The most credits one request may move; a guard against typos.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// Amounts are positive whole numbers of credits.
fn amount(n: i64) -> Result<i64, ApiError> {
    if (1..=MAX_AMOUNT).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::BadRequest(format!(
            "amount must be a whole number between 1 and {MAX_AMOUNT}"
        )))
    }
}

fn check_reason(reason: Option<&str>) -> Result<(), ApiError> {
    match reason {
        Some(r) if r.len() > 500 => Err(ApiError::BadRequest(
            "reason must be at most 500 bytes".into(),
        )),
        _ => Ok(()),
    }
}

fn check_metadata(
    metadata: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(), ApiError> {
    match metadata {
        Some(m) if m.len() > 50 || m.iter().any(|(k, v)| k.len() > 40 || v.len() > 500) => {
            Err(ApiError::BadRequest(
                "metadata: at most 50 keys of 40 bytes, values of 500 bytes".into(),
            ))
        }
        _ => Ok(()),
    }
}

/// A fresh id: the prefix and 96 random bits.
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:024x}", rand::random::<u128>() >> 32)
}
