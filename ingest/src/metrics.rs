//! ingest's Prometheus metrics, every family registered (and every known label value
//! created) up front, so a fresh scrape lists them all.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use shared::telemetry::metrics::{LATENCY_BUCKETS, register_build_info};

/// The `outcome` of a webhook request: accepted, or which rejection
/// ([`crate::error::WebhookError::outcome`]).
pub const OUTCOMES: [&str; 7] = [
    "accepted",
    "bad_signature",
    "bad_payload",
    "too_large",
    "body_timeout",
    "bad_body",
    "unavailable",
];

/// The `result` of a publish ([`crate::publisher`]).
pub const PUBLISH_RESULTS: [&str; 6] =
    ["ack", "nack", "returned", "timeout", "error", "unavailable"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<OutcomeLabels, Counter>,
    pub verification_failures: Family<ReasonLabels, Counter>,
    pub publish_seconds: Family<ResultLabels, Histogram>,
    pub broker_connected: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ingest");
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by outcome (accepted; rejected: bad_signature, bad_payload, too_large, body_timeout, bad_body; unavailable: answered 503)",
            requests.clone(),
        );
        let verification_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "signature_failures",
            "Signature verification failures by reason",
            verification_failures.clone(),
        );
        let publish_seconds = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "publish_duration_seconds",
            "Time from publish to the broker's confirm, by result (ack, nack, returned, timeout, error, unavailable)",
            publish_seconds.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 when a confirm channel to RabbitMQ is open",
            broker_connected.clone(),
        );
        register_build_info(&mut registry, env!("CARGO_PKG_VERSION"));
        for outcome in OUTCOMES {
            drop(requests.get_or_create(&OutcomeLabels { outcome }));
        }
        for result in PUBLISH_RESULTS {
            drop(publish_seconds.get_or_create(&ResultLabels { result }));
        }
        Self {
            registry,
            requests,
            verification_failures,
            publish_seconds,
            broker_connected,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
