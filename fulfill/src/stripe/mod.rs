//! The Stripe API client: bearer auth, a pinned `Stripe-Version`, rate limiting, and
//! retries with exponential backoff and jitter that honour `Stripe-Should-Retry` and
//! `Retry-After`. <https://docs.stripe.com/error-low-level#idempotency> explains which
//! failures are safe to retry; every call here is a GET, so all are.
//!
//! A client is the platform's, or scoped to one Connect account ([`StripeClient::for_account`]):
//! then every call carries `Stripe-Account` and spends that account's budget (or the
//! platform's, by [`RateLimitScope`]).
//! <https://docs.stripe.com/connect/authentication#stripe-account-header>

pub mod charge;
pub mod checkout_session;
pub mod dispute;
pub mod error;
pub mod key;
pub mod line_items;
pub mod list;
pub mod mode;
pub mod rate_limit;
pub mod refund;

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, de::DeserializeOwned};
use tracing::{Instrument, field::Empty};

pub use self::error::StripeError;
pub use self::rate_limit::{RateLimitScope, RateLimiter};
pub use self::{key::KeyHealth, mode::StripeMode};
use crate::{
    domain::account::Account,
    metrics::{Metrics, StripeLabels},
};

/// The API version our models are built against (that of the real delivered event).
pub const STRIPE_VERSION: &str = "2025-04-30.basil";

#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub secret_key: SecretString,
    /// The key's mode (from its prefix, checked by the configuration).
    pub mode: StripeMode,
    pub api_base: String,
    /// Operations per second this process may spend.
    pub rate_limit: f64,
    /// Whose budget a call for a connected account spends.
    pub rate_limit_scope: RateLimitScope,
    pub timeout: Duration,
    /// Retries after the first attempt, within one fulfillment.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// A budget slot taken by [`StripeClient::reserve`].
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    slot: tokio::time::Instant,
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    config: Arc<StripeConfig>,
    limiter: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
    key: Arc<KeyHealth>,
    /// Whose objects: the platform's, or a connected account's (`Stripe-Account`).
    account: Account,
    /// Whose budget the calls spend: `account`'s, or the platform's (by the scope).
    budget: Account,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl StripeClient {
    /// `limiter` spends `config.rate_limit`: [`RateLimiter::shared`] in the services (one
    /// budget for every process), [`RateLimiter::local`] where a process is alone.
    pub fn new(
        config: StripeConfig,
        limiter: RateLimiter,
        metrics: Arc<Metrics>,
        key: Arc<KeyHealth>,
    ) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default TLS provider; use ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!(
                "stripe-credits-fulfill/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        let limiter = Arc::new(limiter);
        Ok(Self {
            http,
            config: Arc::new(config),
            limiter,
            metrics,
            key,
            account: Account::PLATFORM,
            budget: Account::PLATFORM,
        })
    }

    /// The same client for `account`'s objects: every call carries `Stripe-Account` (none
    /// for the platform) and spends that account's budget, or the platform's with
    /// [`RateLimitScope::Platform`].
    pub fn for_account(&self, account: &Account) -> Self {
        Self {
            account: account.clone(),
            budget: self.config.rate_limit_scope.budget_of(account),
            ..self.clone()
        }
    }

    /// The account this client calls for.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The key's mode.
    pub fn mode(&self) -> StripeMode {
        self.config.mode
    }

    /// Repeats the call Stripe last refused the key on; true once it is accepted (any
    /// answer but 401/403), when it clears the rejection.
    pub async fn probe_key(&self) -> bool {
        let Some((account, path, query)) = self.key.probe() else {
            self.key.accept();
            return true;
        };
        let client = match Account::parse(account.as_deref()) {
            Ok(account) => self.for_account(&account),
            Err(_) => self.clone(),
        };
        let query: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match client
            .get_once::<serde_json::Value>("key.probe", &path, &query, 0)
            .await
        {
            Err(e) if e.is_key_rejected() => false,
            // Stripe took the key (whatever else it said): consume again.
            Err(StripeError::Api { .. } | StripeError::NotFound { .. }) | Ok(_) => {
                self.key.accept();
                true
            }
            // Stripe unreachable: no news about the key yet.
            Err(_) => false,
        }
    }

    /// Takes one budget slot ahead for the caller's next call (which must run inside
    /// [`rate_limit::prepaid`]); with `max_wait`, fails with [`StripeError::BudgetBusy`]
    /// instead of waiting longer.
    pub async fn reserve(&self, max_wait: Option<Duration>) -> Result<Reservation, StripeError> {
        let slot = self.limiter.acquire_within(&self.budget, max_wait).await?;
        Ok(Reservation { slot })
    }

    /// A reserved slot that no call spent (another delivery settled the session): the
    /// next call of this process for the same account may take it instead of a new one.
    pub fn give_back(&self, reservation: Reservation) {
        self.limiter.give_back(&self.budget, reservation.slot);
    }

    /// GETs `path` with `query`, retrying transient failures. `endpoint` labels metrics.
    pub async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, StripeError> {
        let mut attempt = 0;
        loop {
            let result = self.get_once(endpoint, path, query, attempt).await;
            match result {
                Err(e) if e.is_transient() && attempt < self.config.max_retries => {
                    if let StripeError::Api {
                        status: 429,
                        retry_after,
                        ..
                    } = &e
                    {
                        // Someone else on the account spends budget too: everybody waits.
                        self.limiter
                            .pause_all(&self.budget, retry_after.unwrap_or(Duration::from_secs(1)))
                            .await;
                    }
                    let delay = e
                        .retry_after()
                        .map(|d| d.min(self.config.backoff_max))
                        .unwrap_or_else(|| {
                            shared::amqp::backoff_from(
                                self.config.backoff_base,
                                attempt,
                                self.config.backoff_max,
                            )
                        });
                    tracing::debug!(endpoint, attempt, error = %e, ?delay, "transient Stripe error; retrying");
                    self.metrics.stripe_retries.inc();
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One attempt, under its own HTTP client span (a retry is a new span, as the HTTP
    /// semantic conventions ask).
    async fn get_once<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &[(&str, &str)],
        attempt: u32,
    ) -> Result<T, StripeError> {
        let waiting = std::time::Instant::now();
        self.limiter.acquire(&self.budget).await?;
        self.metrics
            .stripe_budget_wait_seconds
            .observe(waiting.elapsed().as_secs_f64());
        let url = format!("{}{path}", self.config.api_base.trim_end_matches('/'));
        let span = client_span(&url, endpoint, attempt);
        let result = self
            .send(endpoint, &url, query)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", e.status_label().as_str());
        }
        result
    }

    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: &str,
        query: &[(&str, &str)],
    ) -> Result<T, StripeError> {
        let started = std::time::Instant::now();
        let mut request = self
            .http
            .get(url)
            .bearer_auth(self.config.secret_key.expose_secret())
            .header("Stripe-Version", STRIPE_VERSION);
        if let Some(account) = self.account.id() {
            request = request.header("Stripe-Account", account);
        }
        let sent = request.query(query).send().await;
        let result = match sent {
            Err(e) => Err(StripeError::Transport(e)),
            Ok(response) => {
                let status = response.status();
                tracing::Span::current().record("http.response.status_code", status.as_u16());
                let headers = response.headers().clone();
                match response.bytes().await {
                    Err(e) => Err(StripeError::Transport(e)),
                    Ok(body) if status.is_success() => {
                        serde_json::from_slice(&body).map_err(StripeError::Decode)
                    }
                    Ok(body) => Err(api_error(status, &headers, &body)),
                }
            }
        };
        if let Err(e) = &result
            && e.is_key_rejected()
        {
            if !self.key.is_rejected() {
                tracing::error!(endpoint, error = %e, "Stripe rejected the API key: consuming stops until it is accepted again");
            }
            self.metrics.stripe_key_rejections.inc();
            self.key.reject(
                self.account.id(),
                url.trim_start_matches(self.config.api_base.trim_end_matches('/')),
                query,
            );
        }
        let status = match &result {
            Ok(_) => "200".to_owned(),
            Err(e) => e.status_label(),
        };
        let labels = StripeLabels { endpoint, status };
        self.metrics
            .stripe_request_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.metrics.stripe_requests.get_or_create(&labels).inc();
        result
    }
}

/// The HTTP client span of one Stripe call, by the HTTP semantic conventions: `GET`,
/// kind client, `url.full` without the query string and without any credentials (the
/// API key travels in the `Authorization` header, which is never recorded).
/// <https://opentelemetry.io/docs/specs/semconv/http/http-spans/#http-client>
fn client_span(url: &str, endpoint: &'static str, attempt: u32) -> tracing::Span {
    let parsed = reqwest::Url::parse(url).ok();
    let full = parsed.as_ref().map(|u| {
        let mut clean = u.clone();
        clean.set_query(None);
        clean.set_fragment(None);
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
        clean.to_string()
    });
    let span = tracing::info_span!(
        "stripe",
        otel.name = "GET",
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = "GET",
        url.full = full.as_deref(),
        server.address = parsed.as_ref().and_then(|u| u.host_str()),
        server.port = parsed.as_ref().and_then(reqwest::Url::port_or_known_default),
        http.response.status_code = Empty,
        http.request.resend_count = Empty,
        error.type = Empty,
        stripe.endpoint = endpoint,
    );
    if attempt > 0 {
        span.record("http.request.resend_count", attempt);
    }
    span
}

fn api_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> StripeError {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body).ok();
    let code = parsed.as_ref().and_then(|e| e.error.code.clone());
    let message = parsed
        .and_then(|e| e.error.message)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    if status == StatusCode::NOT_FOUND {
        return StripeError::NotFound { message };
    }
    let should_retry = headers
        .get("Stripe-Should-Retry")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("true"));
    let retryable = match should_retry {
        Some(explicit) => explicit,
        None => status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
    };
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        // Capped here, before it can reach the shared budget row: whoever says an hour
        // (Stripe, a proxy in between) stalls the fleet for a minute at most.
        .map(|secs| rate_limit::capped(Duration::from_secs(secs)));
    StripeError::Api {
        status: status.as_u16(),
        code,
        message,
        retryable,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn a_429_is_transient_and_keeps_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("Retry-After", HeaderValue::from_static("2"));
        let e = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":{"code":"rate_limit","message":"slow down"}}"#,
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn stripe_should_retry_false_makes_a_5xx_permanent() {
        let mut h = HeaderMap::new();
        h.insert("Stripe-Should-Retry", HeaderValue::from_static("false"));
        assert!(!api_error(StatusCode::INTERNAL_SERVER_ERROR, &h, b"").is_transient());
    }

    #[test]
    fn stripe_should_retry_true_makes_a_4xx_transient() {
        let mut h = HeaderMap::new();
        h.insert("Stripe-Should-Retry", HeaderValue::from_static("true"));
        assert!(api_error(StatusCode::CONFLICT, &h, b"").is_transient());
    }

    #[test]
    fn a_404_and_other_4xx_are_permanent() {
        let h = HeaderMap::new();
        let e = api_error(
            StatusCode::NOT_FOUND,
            &h,
            br#"{"error":{"message":"No such checkout.session: 'cs_x'"}}"#,
        );
        assert!(matches!(e, StripeError::NotFound { .. }));
        assert!(!e.is_transient());
        assert!(!api_error(StatusCode::BAD_REQUEST, &h, b"{}").is_transient());
        assert!(!api_error(StatusCode::UNAUTHORIZED, &h, b"{}").is_transient());
    }

    #[test]
    fn a_rejected_key_is_a_401_or_403_but_not_a_connected_accounts_revoked_access() {
        let h = HeaderMap::new();
        assert!(api_error(StatusCode::UNAUTHORIZED, &h, b"{}").is_key_rejected());
        assert!(api_error(StatusCode::FORBIDDEN, &h, b"{}").is_key_rejected());
        let revoked = api_error(
            StatusCode::FORBIDDEN,
            &h,
            br#"{"error":{"code":"account_invalid","message":"no access to acct_1X"}}"#,
        );
        assert!(!revoked.is_key_rejected());
        assert!(!revoked.is_transient(), "dead-lettered with its reason");
    }
}
