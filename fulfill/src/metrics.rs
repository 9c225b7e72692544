//! fulfill's Prometheus metrics: every family is registered here, up front, so a fresh
//! scrape lists them all (a labelled family with no series yet shows its HELP and TYPE).
//! The gauges of what waits in the broker and the database are refreshed by
//! [`crate::gauges`]; API requests are counted by [`crate::http::request_metrics`].

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use shared::telemetry::metrics::{LATENCY_BUCKETS, register_build_info};

/// The `endpoint` label of every Stripe call fulfill makes, created up front (with the
/// statuses dashboards and alerts read: 200 and 429): prometheus-client leaves a family
/// out of the scrape until it has a series.
pub const STRIPE_ENDPOINTS: [&str; 7] = [
    "checkout_sessions.retrieve",
    "checkout_sessions.line_items",
    "checkout_sessions.list",
    "charges.retrieve",
    "refunds.list",
    "disputes.retrieve",
    "events.list",
];

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route pattern (`/users/{user_id}/balance`), `unmatched` for unknown paths.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The queue's name without any `AMQP_TOPOLOGY_PREFIX`.
    pub queue: &'static str,
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
    /// Sessions written by one ledger transaction (group commit).
    pub transaction_sessions: Histogram,
    pub group_retries: Counter,
    /// Group transactions whose sessions were written by one statement per table.
    pub group_shared_statements: Counter,
    pub in_flight: Gauge,
    pub reconcile_healed: Counter,
    pub broker_connected: Gauge,
    pub api_requests: Family<RouteLabels, Counter>,
    pub api_request_seconds: Family<RouteLabels, Histogram>,
    pub stripe_request_seconds: Family<StripeLabels, Histogram>,
    pub stripe_budget_wait_seconds: Histogram,
    pub credits_reversed: Counter,
    pub reconcile_last_success: Gauge<f64, AtomicU64>,
    pub sessions_needing_attention: Gauge,
    pub dead_letters_queued: Gauge,
    pub queue_messages: Family<QueueLabels, Gauge>,
    pub database_up: Gauge,
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
        let transaction_sessions = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0]);
        registry.register(
            "transaction_sessions",
            "Sessions written by one ledger transaction (more than one while deliveries converge faster than one transaction at a time can write them)",
            transaction_sessions.clone(),
        );
        let group_retries = Counter::default();
        registry.register(
            "group_retries",
            "Ledger transactions of several sessions that failed, whose sessions were then written one by one",
            group_retries.clone(),
        );
        let group_shared_statements = Counter::default();
        registry.register(
            "group_shared_statements",
            "Ledger transactions of several sessions written by one statement per table (the others wrote each session's rows by statements of its own)",
            group_shared_statements.clone(),
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
        let api_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "api_requests",
            "HTTP API requests by method, route pattern and status",
            api_requests.clone(),
        );
        let api_request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "api_request_duration_seconds",
            "HTTP API request latency by method, route pattern and status",
            api_request_seconds.clone(),
        );
        let stripe_request_seconds =
            Family::<StripeLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS)
            });
        registry.register(
            "stripe_request_duration_seconds",
            "Stripe API call latency (one attempt, after the rate budget granted it) by endpoint and status",
            stripe_request_seconds.clone(),
        );
        let stripe_budget_wait_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "stripe_budget_wait_duration_seconds",
            "Time a Stripe call waited for its slot in the shared rate budget (STRIPE_RATE_LIMIT, 429 pauses)",
            stripe_budget_wait_seconds.clone(),
        );
        let credits_reversed = Counter::default();
        registry.register(
            "credits_reversed",
            "Credits taken back by refunds and disputes (a dispute won gives them back and does not count)",
            credits_reversed.clone(),
        );
        let reconcile_last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "reconcile_last_success_timestamp_seconds",
            "When the last reconciliation that went through without errors started (Unix time, any process; 0 = never)",
            reconcile_last_success.clone(),
        );
        let sessions_needing_attention = Gauge::default();
        registry.register(
            "sessions_needing_attention",
            "Sessions in GET /attention now (not credited, or flagged after a reversal)",
            sessions_needing_attention.clone(),
        );
        let dead_letters_queued = Gauge::default();
        registry.register(
            "dead_letters_queued",
            "Messages waiting in the dead-letter queue now",
            dead_letters_queued.clone(),
        );
        let queue_messages = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_messages",
            "Messages ready in fulfill's queues (checkout, retry, dead), by queue",
            queue_messages.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 while PostgreSQL answers (what /readyz/api needs)",
            database_up.clone(),
        );
        register_build_info(&mut registry, env!("CARGO_PKG_VERSION"));
        for endpoint in STRIPE_ENDPOINTS {
            for status in ["200", "429"] {
                let labels = StripeLabels {
                    endpoint,
                    status: status.to_owned(),
                };
                drop(stripe_requests.get_or_create(&labels));
                drop(stripe_request_seconds.get_or_create(&labels));
            }
        }
        for event_type in shared::topology::consumed_event_types() {
            for outcome in ["retry", "dead_lettered"] {
                drop(events.get_or_create(&EventLabels {
                    event_type,
                    outcome,
                }));
            }
        }
        for queue in ["fulfill.checkout", "fulfill.retry", "fulfill.dead"] {
            drop(queue_messages.get_or_create(&QueueLabels { queue }));
        }
        for kind in ["poison", "permanent", "exhausted"] {
            drop(dead_letters.get_or_create(&KindLabels { kind }));
        }
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
            transaction_sessions,
            group_retries,
            group_shared_statements,
            in_flight,
            reconcile_healed,
            broker_connected,
            api_requests,
            api_request_seconds,
            stripe_request_seconds,
            stripe_budget_wait_seconds,
            credits_reversed,
            reconcile_last_success,
            sessions_needing_attention,
            dead_letters_queued,
            queue_messages,
            database_up,
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
