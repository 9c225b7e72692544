//! fulfill's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use shared::telemetry::metrics::LATENCY_BUCKETS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StripeLabels {
    pub endpoint: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub events: Family<EventLabels, Counter>,
    pub credits_granted: Counter,
    pub sessions_credited: Counter,
    pub needs_attention: Counter,
    pub stripe_requests: Family<StripeLabels, Counter>,
    pub stripe_retries: Counter,
    pub stripe_key_rejections: Counter,
    pub stripe_key_rejected: Gauge,
    pub processing_seconds: Histogram,
    pub dead_letters: Family<KindLabels, Counter>,
    pub requeued: Counter,
    pub in_flight: Gauge,
    pub reconcile_healed: Counter,
    pub broker_connected: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fulfill");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Events processed, by type and outcome",
            events.clone(),
        );
        let credits_granted = Counter::default();
        registry.register(
            "credits_granted",
            "Credits added to balances",
            credits_granted.clone(),
        );
        let sessions_credited = Counter::default();
        registry.register(
            "sessions_credited",
            "Checkout Sessions credited",
            sessions_credited.clone(),
        );
        let needs_attention = Counter::default();
        registry.register(
            "needs_attention",
            "Fulfillments that ended with the session needing attention",
            needs_attention.clone(),
        );
        let stripe_requests = Family::<StripeLabels, Counter>::default();
        registry.register(
            "stripe_requests",
            "Stripe API requests by endpoint and status (HTTP status, timeout, transport)",
            stripe_requests.clone(),
        );
        let stripe_retries = Counter::default();
        registry.register(
            "stripe_retries",
            "Stripe API requests retried after a transient failure",
            stripe_retries.clone(),
        );
        let stripe_key_rejections = Counter::default();
        registry.register(
            "stripe_key_rejections",
            "Stripe answers 401 or 403: the API key revoked, rolled or lacking a permission",
            stripe_key_rejections.clone(),
        );
        let stripe_key_rejected = Gauge::default();
        registry.register(
            "stripe_key_rejected",
            "1 while Stripe rejects the API key (consuming is stopped)",
            stripe_key_rejected.clone(),
        );
        let processing_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "processing_duration_seconds",
            "Time to process one delivery, from receipt to ack",
            processing_seconds.clone(),
        );
        let dead_letters = Family::<KindLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Messages dead-lettered, by kind (poison, permanent, exhausted)",
            dead_letters.clone(),
        );
        let requeued = Counter::default();
        registry.register(
            "requeued",
            "Messages sent to the retry queue after a transient failure",
            requeued.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight",
            "Deliveries being processed now",
            in_flight.clone(),
        );
        let reconcile_healed = Counter::default();
        registry.register(
            "reconcile_healed",
            "Sessions credited by reconciliation (missed by webhooks)",
            reconcile_healed.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while consuming from RabbitMQ",
            broker_connected.clone(),
        );
        Self {
            registry,
            events,
            credits_granted,
            sessions_credited,
            needs_attention,
            stripe_requests,
            stripe_retries,
            stripe_key_rejections,
            stripe_key_rejected,
            processing_seconds,
            dead_letters,
            requeued,
            in_flight,
            reconcile_healed,
            broker_connected,
        }
    }

    pub fn event(&self, event_type: &str, outcome: &'static str) {
        let event_type = shared::topology::consumed_event_types()
            .find(|t| *t == event_type)
            .unwrap_or("other");
        self.events
            .get_or_create(&EventLabels {
                event_type,
                outcome,
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
