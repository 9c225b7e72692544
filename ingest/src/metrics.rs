//! ingest's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use shared::telemetry::metrics::LATENCY_BUCKETS;

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
            "Webhook requests by outcome (accepted, bad_signature, bad_payload, too_large, body_timeout, unavailable)",
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
