//! Prometheus text exposition shared by both services' `/metrics`.

use prometheus_client::{encoding::text::encode, metrics::info::Info, registry::Registry};

/// What [`render`] writes: prometheus-client encodes the OpenMetrics text format (`# EOF`
/// at the end, counters as `_total`), which Prometheus negotiates and parses as such.
/// <https://prometheus.io/docs/specs/om/open_metrics_spec/#overall-structure>
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds, from sub-millisecond publishes to slow Stripe calls.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// `{prefix}_build_info{version="…"} 1`: which build a process runs (an OpenMetrics info
/// metric, which Prometheus reads as a gauge).
pub fn register_build_info(registry: &mut Registry, version: &'static str) {
    registry.register(
        "build",
        "The running build: the crate version",
        Info::new(vec![("version", version)]),
    );
}
