use std::{net::SocketAddr, time::Duration};

use ingest::{config::Config, signature::WebhookSecret, startup::Application};
use secrecy::SecretString;
use shared::{config::AmqpConfig, telemetry::TelemetryConfig};
use test_support::{broker::TestBroker, proxy::TcpProxy};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_test_ingest_secret_1";
pub const ROTATED_SECRET: &str = "whsec_test_ingest_secret_2";
pub const REAL_EVENT: &[u8] =
    include_bytes!("../../../tests/fixtures/stripe/event_checkout_session_completed_basil.json");
pub const QUIET: Duration = Duration::from_millis(700);

pub struct TestApp {
    pub address: String,
    pub broker: TestBroker,
    pub proxy: Option<TcpProxy>,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: JoinHandle<std::io::Result<()>>,
}

#[derive(Default)]
pub struct Options {
    /// Reach the broker through a proxy the test can cut.
    pub via_proxy: bool,
    /// Point at an address where no broker listens.
    pub unreachable_broker: bool,
    pub body_limit: Option<usize>,
    pub body_timeout: Option<Duration>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    test_support::init_tracing();
    let broker = TestBroker::new().await;
    let proxy = if options.via_proxy {
        let target: SocketAddr = "127.0.0.1:5672".parse().unwrap();
        Some(TcpProxy::start(target).await)
    } else {
        None
    };
    let amqp = match (&proxy, options.unreachable_broker) {
        (_, true) => AmqpConfig {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:1/%2f".to_owned()),
            topology_prefix: broker.prefix.clone(),
        },
        (Some(p), false) => AmqpConfig {
            url: SecretString::from(format!("amqp://guest:guest@{}/%2f", p.addr())),
            topology_prefix: broker.prefix.clone(),
        },
        (None, false) => broker.amqp_config(),
    };
    let config = Config {
        webhook_secrets: vec![
            WebhookSecret::parse(SECRET).unwrap(),
            WebhookSecret::parse(ROTATED_SECRET).unwrap(),
        ],
        tolerance: Duration::from_secs(300),
        addr: "127.0.0.1:0".parse().unwrap(),
        body_limit: options.body_limit.unwrap_or(1024 * 1024),
        publish_timeout: Duration::from_secs(3),
        publish_channels: 2,
        body_timeout: options.body_timeout.unwrap_or(Duration::from_secs(5)),
        workers: 2,
        amqp,
        telemetry: TelemetryConfig {
            log_format: shared::telemetry::LogFormat::Text,
            otlp: None,
            metrics: None,
        },
    };
    let app = Application::build(config).expect("build ingest");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let test_app = TestApp {
        address,
        broker,
        proxy,
        client: test_support::http_client(),
        shutdown,
        handle,
    };
    if !options.unreachable_broker {
        assert!(
            test_app.wait_ready(Duration::from_secs(15)).await,
            "ingest never became ready"
        );
    }
    test_app
}

pub fn now() -> i64 {
    fake_stripe::now()
}

/// The header Stripe would send for `body`, signed with `secret` now.
pub fn signature(body: &[u8], secret: &str) -> String {
    fake_stripe::sign_webhook(body, secret, now())
}

/// A pretty-printed event like Stripe sends, of `event_type`, with a fresh id.
pub fn event(event_type: &str) -> (String, Vec<u8>) {
    let mut v: serde_json::Value = serde_json::from_slice(REAL_EVENT).unwrap();
    let id = format!("evt_test{:016x}", rand_u64());
    v["id"] = serde_json::json!(id);
    v["type"] = serde_json::json!(event_type);
    (id, serde_json::to_vec_pretty(&v).unwrap())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop before the broker slice is removed, so nothing re-declares it.
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub async fn post_webhook(&self, body: Vec<u8>, signature: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/webhooks/stripe", self.address))
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body);
        if let Some(sig) = signature {
            request = request.header("Stripe-Signature", sig);
        }
        request.send().await.expect("request to ingest")
    }

    pub async fn post_signed(&self, body: Vec<u8>) -> reqwest::Response {
        let sig = signature(&body, SECRET);
        self.post_webhook(body, Some(&sig)).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request to ingest")
    }

    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        test_support::wait_for(timeout, || async {
            (self.get("/readyz").await.status() == 200).then_some(())
        })
        .await
        .is_some()
    }

    pub async fn wait_not_ready(&self, timeout: Duration) -> bool {
        test_support::wait_for(timeout, || async {
            (self.get("/readyz").await.status() == 503).then_some(())
        })
        .await
        .is_some()
    }

    /// Stops like SIGTERM would and returns how the server ended.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        let handle = std::mem::replace(&mut self.handle, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("ingest did not stop in time")
            .expect("ingest task panicked")
    }
}
