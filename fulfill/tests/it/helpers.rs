use std::{sync::Arc, time::Duration};

use fake_stripe::{FakeStripe, Knobs, PriceSpec, SessionSpec};
use fulfill::{
    config::{Config, ConsumerConfig},
    startup::Application,
    stripe::StripeConfig,
};
use lapin::{BasicProperties, types::ShortString};
use secrecy::SecretString;
use serde_json::Value;
use shared::telemetry::{LogFormat, TelemetryConfig};
use test_support::{broker::TestBroker, db::TestDb};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const QUIET: Duration = Duration::from_millis(700);
pub const SETTLE: Duration = Duration::from_secs(20);

/// The world a test runs in: broker slice, database, fake Stripe; any number of fulfill
/// instances can be started on it.
pub struct World {
    pub broker: TestBroker,
    pub db: TestDb,
    pub stripe: Arc<FakeStripe>,
    pub client: reqwest::Client,
    pub stripe_key: &'static str,
}

pub struct Instance {
    pub address: String,
    proxy: Option<test_support::proxy::TcpProxy>,
    shutdown: CancellationToken,
    handle: JoinHandle<std::io::Result<()>>,
}

#[derive(Clone)]
pub struct Options {
    pub api_token: Option<String>,
    pub max_attempts: u32,
    pub concurrency: usize,
    pub stripe_timeout: Duration,
    /// Reach the broker through a proxy the test can cut (a crash, seen from the broker).
    pub via_proxy: bool,
    pub refund_policy: fulfill::domain::target::RefundPolicy,
    /// `STRIPE_RATE_LIMIT`: for every instance of this world together.
    pub rate_limit: f64,
    /// `STRIPE_RATE_LIMIT_SCOPE`.
    pub rate_limit_scope: fulfill::stripe::RateLimitScope,
    /// `AMQP_URL` instead of the test broker's (a node list, for failover).
    pub amqp_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            api_token: None,
            max_attempts: 6,
            concurrency: 8,
            stripe_timeout: Duration::from_secs(3),
            via_proxy: false,
            refund_policy: fulfill::domain::target::RefundPolicy::Proportional,
            rate_limit: 2000.0,
            rate_limit_scope: fulfill::stripe::RateLimitScope::Account,
            amqp_url: None,
        }
    }
}

impl World {
    pub async fn new() -> Self {
        Self::with_stripe_key(fake_stripe::DEFAULT_API_KEY).await
    }

    /// A world whose fake Stripe takes `key` (e.g. a live-mode one), as fulfill then does.
    pub async fn with_stripe_key(key: &'static str) -> Self {
        test_support::init_tracing();
        let broker = TestBroker::new().await;
        let db = TestDb::new().await;
        let stripe = Arc::new(FakeStripe::start(key).await.expect("fake Stripe"));
        Self {
            broker,
            db,
            stripe,
            client: test_support::http_client(),
            stripe_key: key,
        }
    }

    pub fn config(&self, options: &Options) -> Config {
        Config {
            database_url: SecretString::from(self.db.url.clone()),
            database_pool_size: 8,
            stripe: StripeConfig {
                secret_key: SecretString::from(self.stripe_key.to_owned()),
                mode: fulfill::stripe::StripeMode::of_key(self.stripe_key)
                    .expect("a test or live key"),
                api_base: self.stripe.base_url(),
                rate_limit: options.rate_limit,
                rate_limit_scope: options.rate_limit_scope,
                timeout: options.stripe_timeout,
                max_retries: 2,
                backoff_base: Duration::from_millis(20),
                backoff_max: Duration::from_millis(200),
            },
            addr: "127.0.0.1:0".parse().unwrap(),
            api_token: options.api_token.clone().map(SecretString::from),
            consumer: ConsumerConfig {
                concurrency: options.concurrency,
                prefetch: 16,
                max_attempts: options.max_attempts,
                retry_base: Duration::from_millis(100),
                retry_max: Duration::from_millis(500),
            },
            refund_policy: options.refund_policy,
            reconcile_interval: None,
            amqp: self.broker.amqp_config(),
            telemetry: TelemetryConfig {
                log_format: LogFormat::Text,
                otlp: None,
            },
        }
    }

    pub async fn start(&self, options: &Options) -> Instance {
        let mut config = self.config(options);
        if let Some(url) = &options.amqp_url {
            config.amqp.url = SecretString::from(url.clone());
        }
        let proxy = if options.via_proxy {
            let proxy =
                test_support::proxy::TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
            config.amqp.url =
                SecretString::from(format!("amqp://guest:guest@{}/%2f", proxy.addr()));
            Some(proxy)
        } else {
            None
        };
        let app = Application::build(config).await.expect("build fulfill");
        let address = format!("http://127.0.0.1:{}", app.port());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let instance = Instance {
            address,
            proxy,
            shutdown,
            handle,
        };
        let ready = test_support::wait_for(Duration::from_secs(15), || async {
            let r = self
                .client
                .get(format!("{}/readyz", instance.address))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        assert!(ready.is_some(), "fulfill never became ready");
        instance
    }

    /// The fulfillment core in-process, on this world's database and fake Stripe (for
    /// reconciliation runs). Start an instance first: it applies the migrations.
    pub fn services(&self, options: &Options) -> fulfill::services::Services {
        let mut config = self.config(options);
        config.database_pool_size = 4;
        fulfill::services::Services::build(&config).unwrap()
    }

    pub fn price(&self, spec: PriceSpec) -> String {
        self.stripe.create_price(spec)
    }

    pub fn session(&self, spec: SessionSpec) -> String {
        self.stripe.create_session(spec).expect("create session")
    }

    /// Builds the event Stripe would send for the session now; returns `(id, body)`.
    pub fn event(&self, session_id: &str, event_type: &str) -> (String, Vec<u8>) {
        self.stripe
            .event_for_session(session_id, event_type)
            .expect("session exists")
    }

    /// Publishes an event body as ingest does.
    pub async fn publish(&self, event_type: &str, event_id: &str, body: &[u8]) {
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(event_id))
            .with_type(ShortString::from(event_type));
        self.broker.publish_event(event_type, body, props).await;
    }

    /// Builds and publishes the event for `session_id`; returns the event id and body.
    pub async fn deliver(&self, session_id: &str, event_type: &str) -> (String, Vec<u8>) {
        let (id, body) = self.event(session_id, event_type);
        self.publish(event_type, &id, &body).await;
        (id, body)
    }

    /// Waits until fulfill recorded `event_id` as processed.
    pub async fn wait_event(&self, event_id: &str) {
        eventually(|| async {
            let conn = self.db.connect().await;
            fulfill::db::events::seen(&conn, event_id)
                .await
                .ok()
                .filter(|seen| *seen)
        })
        .await;
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        self.stripe.set_knobs(knobs);
    }

    pub async fn dead_letters(&self) -> Vec<test_support::broker::Received> {
        self.broker
            .drain(&self.broker.topology.dead_letter_queue(), QUIET)
            .await
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Stop before the broker slice is removed, so nothing re-declares it.
        self.shutdown.cancel();
    }
}

impl Instance {
    pub async fn get(&self, client: &reqwest::Client, path: &str) -> reqwest::Response {
        client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }

    pub async fn balance(&self, client: &reqwest::Client, user: &str) -> i64 {
        let path = format!("/users/{}/balance", encode(user));
        let body: Value = self
            .get(client, &path)
            .await
            .json()
            .await
            .expect("balance JSON");
        body["credits"].as_i64().expect("credits")
    }

    /// Waits for the balance to reach `expected`, then checks it stays there.
    pub async fn assert_balance_settles(
        &self,
        client: &reqwest::Client,
        user: &str,
        expected: i64,
    ) {
        let reached = test_support::wait_for(SETTLE, || async {
            (self.balance(client, user).await == expected).then_some(())
        })
        .await;
        let now = self.balance(client, user).await;
        assert!(
            reached.is_some(),
            "balance of {user} is {now}, expected {expected}"
        );
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            self.balance(client, user).await,
            expected,
            "balance of {user} moved after settling"
        );
    }

    pub async fn session_state(&self, client: &reqwest::Client, session_id: &str) -> Option<Value> {
        let r = self
            .get(client, &format!("/checkout/sessions/{session_id}"))
            .await;
        if r.status() == 404 {
            return None;
        }
        Some(r.json().await.expect("session JSON"))
    }

    pub async fn wait_state(
        &self,
        client: &reqwest::Client,
        session_id: &str,
        state: &str,
    ) -> Value {
        let found = test_support::wait_for(SETTLE, || async {
            self.session_state(client, session_id)
                .await
                .filter(|s| s["state"] == state)
        })
        .await;
        match found {
            Some(s) => s,
            None => panic!(
                "session {session_id} never reached {state}; now {:?}",
                self.session_state(client, session_id).await
            ),
        }
    }

    pub async fn fulfill(&self, client: &reqwest::Client, session_id: &str) -> (u16, Value) {
        let r = client
            .post(format!(
                "{}/checkout/sessions/{session_id}/fulfill",
                self.address
            ))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        self.get(client, "/metrics")
            .await
            .text()
            .await
            .expect("metrics")
    }

    pub async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        let handle = std::mem::replace(&mut self.handle, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("fulfill did not stop in time")
            .expect("fulfill task panicked")
    }

    /// Cuts this instance off the broker mid-work, as a crash looks to the broker: its
    /// unacked deliveries go back to the queue for other consumers. Needs `via_proxy`.
    pub fn cut_broker(&self) {
        self.proxy.as_ref().expect("started with via_proxy").cut();
    }

    /// Lets this instance reach the broker again after [`cut_broker`](Self::cut_broker).
    pub fn restore_broker(&self) {
        self.proxy
            .as_ref()
            .expect("started with via_proxy")
            .restore();
    }
}

/// Percent-encodes a path segment.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn metric(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` until it returns `Some` (within [`SETTLE`]).
pub async fn eventually<T, F, Fut>(check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    test_support::wait_for(SETTLE, check)
        .await
        .expect("condition never met")
}
