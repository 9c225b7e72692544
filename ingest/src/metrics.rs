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
    /// The series of `requests` for each of [`OUTCOMES`] and of `publish_seconds` for each
    /// of [`PUBLISH_RESULTS`], in their order, looked up once: `Family::get_or_create`
    /// takes the family's lock and hashes the labels on every call.
    request_series: [Counter; OUTCOMES.len()],
    publish_series: [Histogram; PUBLISH_RESULTS.len()],
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
        // Every known series exists from the start (and so is in the first scrape).
        let request_series =
            OUTCOMES.map(|outcome| requests.get_or_create(&OutcomeLabels { outcome }).clone());
        let publish_series = PUBLISH_RESULTS.map(|result| {
            publish_seconds
                .get_or_create(&ResultLabels { result })
                .clone()
        });
        Self {
            registry,
            requests,
            verification_failures,
            publish_seconds,
            broker_connected,
            request_series,
            publish_series,
        }
    }

    /// Counts a webhook request by its outcome (one of [`OUTCOMES`]).
    pub fn count_request(&self, outcome: &'static str) {
        match OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.request_series[i].inc(),
            None => self
                .requests
                .get_or_create(&OutcomeLabels { outcome })
                .inc(),
        };
    }

    /// Records how long a publish took to its result (one of [`PUBLISH_RESULTS`]).
    pub fn observe_publish(&self, result: &'static str, seconds: f64) {
        match PUBLISH_RESULTS.iter().position(|r| *r == result) {
            Some(i) => self.publish_series[i].observe(seconds),
            None => self
                .publish_seconds
                .get_or_create(&ResultLabels { result })
                .observe(seconds),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use shared::telemetry::metrics::render;

    use super::*;

    #[test]
    fn the_series_looked_up_once_are_those_of_the_families() {
        let metrics = Metrics::new();
        metrics.count_request("accepted");
        metrics.count_request("accepted");
        metrics.count_request("unavailable");
        metrics.observe_publish("ack", 0.002);
        let text = render(&metrics.registry);
        assert!(
            text.contains("ingest_webhook_requests_total{outcome=\"accepted\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ingest_webhook_requests_total{outcome=\"unavailable\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ingest_publish_duration_seconds_count{result=\"ack\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ingest_publish_duration_seconds_count{result=\"nack\"} 0"),
            "{text}"
        );
    }
}
