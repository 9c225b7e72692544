//! The Prometheus registries, also pushed over OTLP/HTTP when an endpoint is configured.
//!
//! `/metrics` stays the source of truth: a background task renders the same registry
//! every `OTEL_METRIC_EXPORT_INTERVAL` ms (60 000 by default), converts the text
//! exposition into an `ExportMetricsServiceRequest` and POSTs it to
//! `{OTEL_EXPORTER_OTLP_ENDPOINT}/v1/metrics` (or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`
//! as given), protobuf unless the protocol is `http/json`. Counters become monotonic
//! cumulative sums (named without `_total`, as the OpenTelemetry/Prometheus
//! compatibility specification says), gauges gauges, histograms explicit-bucket
//! histograms; labels become attributes. [`MetricsExporter::shutdown`] exports one last
//! time. Failures are logged, never fatal. Without an endpoint there is no task at all.
//!
//! Only what `prometheus-client` emits is understood: `# HELP`/`# TYPE`/`# UNIT` lines,
//! `name{labels} value` samples (an exemplar after ` # ` is ignored) and `# EOF`.

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{OtlpProtocol, protocol, without_userinfo};
use crate::config::{ConfigError, Env, optional};

pub const OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
pub const OTEL_METRICS_EXPORTER: &str = "OTEL_METRICS_EXPORTER";
pub const OTEL_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
pub const OTEL_METRIC_EXPORT_TIMEOUT: &str = "OTEL_METRIC_EXPORT_TIMEOUT";

/// How long shutdown waits for the last export.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where, how and how often metrics are pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpMetricsConfig {
    /// The full URL the requests are POSTed to.
    pub url: String,
    pub protocol: OtlpProtocol,
    pub interval: Duration,
    pub timeout: Duration,
    /// Whether `OTEL_SERVICE_NAME` names the service; else it is named after the binary.
    pub service_name_set: bool,
}

impl OtlpMetricsConfig {
    /// `None` when no endpoint is set (empty counts as unset), the SDK is disabled or
    /// `OTEL_METRICS_EXPORTER` does not ask for OTLP.
    pub fn from_env(env: &dyn Env) -> Result<Option<Self>, ConfigError> {
        if let Some(exporters) = optional(env, OTEL_METRICS_EXPORTER) {
            let mut otlp = false;
            for exporter in exporters.split(',').map(str::trim) {
                match exporter {
                    "otlp" => otlp = true,
                    // `/metrics` is always served: "prometheus" asks for nothing more.
                    "none" | "prometheus" => {}
                    other => {
                        return Err(ConfigError::invalid(
                            OTEL_METRICS_EXPORTER,
                            format!(
                                "{other:?}: only \"otlp\", \"prometheus\" and \"none\" are built in"
                            ),
                        ));
                    }
                }
            }
            if !otlp {
                return Ok(None);
            }
        }
        let (name, url) = match (
            optional(env, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT),
            optional(env, super::OTEL_EXPORTER_OTLP_ENDPOINT),
        ) {
            (Some(metrics), _) => (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, metrics),
            (None, Some(base)) => (
                super::OTEL_EXPORTER_OTLP_ENDPOINT,
                format!("{}/v1/metrics", base.trim_end_matches('/')),
            ),
            (None, None) => return Ok(None),
        };
        if optional(env, super::OTEL_SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                name,
                "must be an http(s) URL (OTLP over HTTP; gRPC is not built in)",
            ));
        }
        let protocol = protocol(env, OTEL_EXPORTER_OTLP_METRICS_PROTOCOL)?
            .or(protocol(env, super::OTEL_EXPORTER_OTLP_PROTOCOL)?)
            .unwrap_or(OtlpProtocol::HttpProtobuf);
        Ok(Some(Self {
            url,
            protocol,
            interval: millis(env, OTEL_METRIC_EXPORT_INTERVAL, 60_000)?,
            timeout: millis(env, OTEL_METRIC_EXPORT_TIMEOUT, 30_000)?,
            service_name_set: optional(env, super::OTEL_SERVICE_NAME).is_some(),
        }))
    }
}

fn millis(env: &dyn Env, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    match crate::config::parsed_or(env, name, default)? {
        0 => Err(ConfigError::invalid(
            name,
            "must be a positive number of milliseconds",
        )),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// The running export task; [`shutdown`](Self::shutdown) exports one last time.
#[must_use = "dropping the exporter stops it without waiting for the last export"]
#[derive(Debug)]
pub struct MetricsExporter {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MetricsExporter {
    /// Exports once more, now, and stops: call it after the service's in-flight work is
    /// done, so the last counts include it.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && tokio::time::timeout(FLUSH_TIMEOUT, task).await.is_err()
        {
            tracing::warn!("the last OTLP metrics export did not finish in time");
        }
    }
}

impl Drop for MetricsExporter {
    fn drop(&mut self) {
        // The task still makes its last export if the runtime lets it.
        self.stop.cancel();
    }
}

/// Starts pushing what `render` returns (a Prometheus text exposition, e.g.
/// `move || metrics::render(&metrics.registry)`) when `config` is `Some`. Call inside
/// the tokio runtime. `None`, and nothing running, otherwise or when the HTTP client
/// cannot be built (logged).
pub fn spawn(
    service: &'static str,
    config: Option<&OtlpMetricsConfig>,
    render: impl Fn() -> String + Send + 'static,
) -> Option<MetricsExporter> {
    let config = config?.clone();
    let start = process_start();
    // The reqwest client is built without a default TLS provider; use ring's, as
    // everything else here does. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder().timeout(config.timeout).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %super::error_chain(&e), "cannot build the OTLP metrics client; metrics will not be exported");
            return None;
        }
    };
    let resource = resource(service, config.service_name_set);
    tracing::info!(
        endpoint = %without_userinfo(&config.url),
        protocol = config.protocol.as_str(),
        interval_ms = config.interval.as_millis() as u64,
        "exporting metrics over OTLP"
    );
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + config.interval,
            config.interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                () = stopped.cancelled() => true,
                _ = ticks.tick() => false,
            };
            let request = to_otlp(&render(), &resource, start, unix_nanos(SystemTime::now()));
            send(&client, &config, &request).await;
            if last {
                return;
            }
        }
    });
    Some(MetricsExporter {
        stop,
        task: Some(task),
    })
}

/// Nanoseconds since the epoch when telemetry first asked: start-up, for the services.
fn process_start() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(|| unix_nanos(SystemTime::now()))
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn send(
    client: &reqwest::Client,
    config: &OtlpMetricsConfig,
    request: &ExportMetricsServiceRequest,
) {
    let (content_type, body) = match config.protocol {
        OtlpProtocol::HttpProtobuf => ("application/x-protobuf", request.encode_to_vec()),
        OtlpProtocol::HttpJson => match serde_json::to_vec(request) {
            Ok(body) => ("application/json", body),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode metrics as OTLP JSON");
                return;
            }
        },
    };
    match client
        .post(&config.url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => tracing::warn!(
            status = response.status().as_u16(),
            "the OTLP collector refused the metrics"
        ),
        Err(e) => {
            tracing::warn!(error = %super::error_chain(&e), "cannot export metrics over OTLP");
        }
    }
}

/// The resource the traces have: `service.name`, `OTEL_RESOURCE_ATTRIBUTES`, the SDK's.
fn resource(service: &'static str, service_name_set: bool) -> Resource {
    let mut builder = opentelemetry_sdk::Resource::builder();
    if !service_name_set {
        builder = builder.with_service_name(service);
    }
    let sdk = builder.build();
    Resource {
        attributes: sdk
            .iter()
            .map(|(key, value)| KeyValue {
                key: key.to_string(),
                value: Some(AnyValue {
                    value: Some(match value {
                        opentelemetry::Value::Bool(b) => any_value::Value::BoolValue(*b),
                        opentelemetry::Value::I64(i) => any_value::Value::IntValue(*i),
                        opentelemetry::Value::F64(f) => any_value::Value::DoubleValue(*f),
                        other => any_value::Value::StringValue(other.to_string()),
                    }),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Info, state sets, summaries…: not emitted by our registries; skipped.
    Other,
}

/// One family while its samples are read.
struct Family {
    name: String,
    help: String,
    unit: String,
    kind: Kind,
    /// Counters and gauges.
    numbers: Vec<NumberDataPoint>,
    /// Histograms: label set (without `le`) → (cumulative buckets, sum, count).
    histograms: Vec<(Labels, HistogramParts)>,
}

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct HistogramParts {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// Converts a `prometheus-client` text exposition into one OTLP export request.
pub fn to_otlp(
    text: &str,
    resource: &Resource,
    start_unix_nano: u64,
    time_unix_nano: u64,
) -> ExportMetricsServiceRequest {
    let mut families: Vec<Family> = Vec::new();
    for line in text.lines() {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let rest = parts.next().unwrap_or_default();
            if families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name: name.to_owned(),
                    help: String::new(),
                    unit: String::new(),
                    kind: Kind::Other,
                    numbers: Vec::new(),
                    histograms: Vec::new(),
                });
            }
            let Some(family) = families.last_mut() else {
                continue;
            };
            match keyword {
                "HELP" => family.help = unescape(rest),
                "UNIT" => rest.clone_into(&mut family.unit),
                "TYPE" => {
                    family.kind = match rest {
                        "counter" => Kind::Counter,
                        "gauge" | "unknown" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        _ => Kind::Other,
                    }
                }
                _ => {}
            }
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let Some(family) = families.last_mut() else {
            continue;
        };
        let suffix = name.strip_prefix(family.name.as_str()).unwrap_or(name);
        match (family.kind, suffix) {
            (Kind::Counter, "_total") | (Kind::Gauge, "") => {
                family.numbers.push(NumberDataPoint {
                    attributes: attributes(&labels),
                    start_time_unix_nano: if family.kind == Kind::Counter {
                        start_unix_nano
                    } else {
                        0
                    },
                    time_unix_nano,
                    value: Some(match value.parse::<i64>() {
                        Ok(i) => number_data_point::Value::AsInt(i),
                        Err(_) => number_data_point::Value::AsDouble(number(value)),
                    }),
                    ..Default::default()
                });
            }
            (Kind::Histogram, "_bucket" | "_sum" | "_count") => {
                let (le, labels): (Labels, Labels) =
                    labels.into_iter().partition(|(k, _)| k == "le");
                let parts = match family.histograms.iter().position(|(l, _)| *l == labels) {
                    Some(i) => &mut family.histograms[i].1,
                    None => {
                        family.histograms.push((labels, HistogramParts::default()));
                        let last = family.histograms.len() - 1;
                        &mut family.histograms[last].1
                    }
                };
                let value = number(value);
                match suffix {
                    "_sum" => parts.sum = value,
                    "_count" => parts.count = value as u64,
                    _ => {
                        if let Some((_, bound)) = le.first() {
                            parts.buckets.push((number(bound), value as u64));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let metrics = families
        .into_iter()
        .filter_map(|family| {
            let data = match family.kind {
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points: family.numbers,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                Kind::Gauge => metric::Data::Gauge(Gauge {
                    data_points: family.numbers,
                }),
                Kind::Histogram => metric::Data::Histogram(Histogram {
                    data_points: family
                        .histograms
                        .into_iter()
                        .map(|(labels, parts)| {
                            histogram_point(&labels, parts, start_unix_nano, time_unix_nano)
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
                Kind::Other => return None,
            };
            Some(Metric {
                name: family.name,
                description: family.help,
                unit: family.unit,
                data: Some(data),
                ..Default::default()
            })
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "prometheus-client".to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Cumulative `le` buckets → per-bucket counts; `+Inf` is the implicit last bound.
fn histogram_point(
    labels: &Labels,
    mut parts: HistogramParts,
    start_unix_nano: u64,
    time_unix_nano: u64,
) -> HistogramDataPoint {
    parts
        .buckets
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut explicit_bounds = Vec::with_capacity(parts.buckets.len());
    let mut bucket_counts = Vec::with_capacity(parts.buckets.len() + 1);
    let mut below = 0;
    for (bound, cumulative) in &parts.buckets {
        if bound.is_finite() {
            explicit_bounds.push(*bound);
        }
        bucket_counts.push(cumulative.saturating_sub(below));
        below = *cumulative;
    }
    if parts
        .buckets
        .last()
        .is_none_or(|(bound, _)| bound.is_finite())
    {
        // No `+Inf` bucket: whatever `_count` has beyond the last bound.
        bucket_counts.push(parts.count.saturating_sub(below));
    }
    HistogramDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start_unix_nano,
        time_unix_nano,
        count: parts.count,
        sum: Some(parts.sum),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.clone(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.clone())),
            }),
            ..Default::default()
        })
        .collect()
}

fn number(text: &str) -> f64 {
    text.parse().unwrap_or(f64::NAN)
}

/// `name{a="x",b="y"} value [# exemplar]` → (name, labels, value).
fn sample(line: &str) -> Option<(&str, Labels, &str)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after_key.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.trim().to_owned(), value));
            inner = &after_key[end + 1..];
        }
    }
    let value = rest.split(" # ").next()?.split_whitespace().next()?;
    Some((name, labels, value))
}

/// `# HELP` text escapes `\\` and `\n`.
fn unescape(text: &str) -> String {
    text.replace("\\n", "\n").replace("\\\\", "\\")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
        registry::Registry,
    };

    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Outcome {
        outcome: &'static str,
    }

    fn by_name<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        request.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in {request:#?}"))
    }

    fn attrs(list: &[KeyValue]) -> Vec<(String, String)> {
        list.iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), value)
            })
            .collect()
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn a_rendered_registry_becomes_sums_gauges_and_histograms() {
        let mut registry = Registry::with_prefix("svc");
        let requests = Family::<Outcome, Counter>::default();
        registry.register("requests", "Requests by \"outcome\"", requests.clone());
        let connected = Gauge::<i64>::default();
        registry.register("connected", "Whether connected", connected.clone());
        let latency =
            Family::<Outcome, Histogram>::new_with_constructor(|| Histogram::new([0.1, 0.5, 1.0]));
        registry.register("latency_seconds", "Latency", latency.clone());
        requests
            .get_or_create(&Outcome {
                outcome: "accepted",
            })
            .inc_by(3);
        requests
            .get_or_create(&Outcome {
                outcome: "bad_signature",
            })
            .inc();
        connected.set(1);
        let ok = latency.get_or_create(&Outcome { outcome: "ok" });
        for v in [0.05, 0.2, 0.3, 0.7, 5.0] {
            ok.observe(v);
        }

        let text = crate::telemetry::metrics::render(&registry);
        let resource = resource("svc", false);
        let request = to_otlp(&text, &resource, 10, 20);

        let service = &request.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert!(
            attrs(service).contains(&pair("service.name", "svc")),
            "{service:?}"
        );

        let counter = by_name(&request, "svc_requests");
        // prometheus-client ends each HELP text with a full stop.
        assert_eq!(counter.description, "Requests by \"outcome\".");
        let Some(metric::Data::Sum(sum)) = &counter.data else {
            panic!("{counter:#?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let values: HashMap<Vec<(String, String)>, _> = sum
            .data_points
            .iter()
            .map(|p| {
                assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (10, 20));
                (attrs(&p.attributes), p.value)
            })
            .collect();
        assert_eq!(values.len(), 2);
        assert_eq!(
            values[&vec![pair("outcome", "accepted")]],
            Some(number_data_point::Value::AsInt(3))
        );
        assert_eq!(
            values[&vec![pair("outcome", "bad_signature")]],
            Some(number_data_point::Value::AsInt(1))
        );

        let gauge = by_name(&request, "svc_connected");
        let Some(metric::Data::Gauge(gauge)) = &gauge.data else {
            panic!("{gauge:#?}")
        };
        assert_eq!(gauge.data_points.len(), 1);
        assert!(gauge.data_points[0].attributes.is_empty());
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );

        let histogram = by_name(&request, "svc_latency_seconds");
        let Some(metric::Data::Histogram(histogram)) = &histogram.data else {
            panic!("{histogram:#?}")
        };
        assert_eq!(
            histogram.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let [point] = histogram.data_points.as_slice() else {
            panic!("{histogram:#?}")
        };
        assert_eq!(attrs(&point.attributes), vec![pair("outcome", "ok")]);
        assert_eq!(point.explicit_bounds, vec![0.1, 0.5, 1.0]);
        assert_eq!(point.bucket_counts, vec![1, 2, 1, 1]);
        assert_eq!(point.count, 5);
        assert!((point.sum.unwrap() - 6.25).abs() < 1e-9, "{point:?}");
        assert_eq!(point.start_time_unix_nano, 10);

        // Both encodings accept it.
        assert!(!request.encode_to_vec().is_empty());
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["name"],
            "svc_requests"
        );
    }

    fn config(
        vars: &[(&'static str, &'static str)],
    ) -> Result<Option<OtlpMetricsConfig>, ConfigError> {
        OtlpMetricsConfig::from_env(&vars.iter().copied().collect::<HashMap<_, _>>())
    }

    #[test]
    fn metrics_follow_the_endpoint_rules_of_the_traces() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(
            config(&[(super::super::OTEL_EXPORTER_OTLP_ENDPOINT, "")]).unwrap(),
            None
        );
        let base = (
            super::super::OTEL_EXPORTER_OTLP_ENDPOINT,
            "http://collector:4318/",
        );
        let on = config(&[base]).unwrap().unwrap();
        assert_eq!(on.url, "http://collector:4318/v1/metrics");
        assert_eq!(on.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(on.interval, Duration::from_secs(60));
        let own = config(&[
            base,
            (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "http://m:4318/custom"),
            (super::super::OTEL_EXPORTER_OTLP_PROTOCOL, "http/json"),
            (OTEL_METRIC_EXPORT_INTERVAL, "500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(own.url, "http://m:4318/custom");
        assert_eq!(own.protocol, OtlpProtocol::HttpJson);
        assert_eq!(own.interval, Duration::from_millis(500));
        assert_eq!(
            config(&[base, (super::super::OTEL_SDK_DISABLED, "true")]).unwrap(),
            None
        );
        assert_eq!(
            config(&[base, (OTEL_METRICS_EXPORTER, "none")]).unwrap(),
            None
        );
        assert!(
            config(&[base, (OTEL_METRICS_EXPORTER, "otlp,prometheus")])
                .unwrap()
                .is_some()
        );
        assert!(config(&[base, (OTEL_METRICS_EXPORTER, "statsd")]).is_err());
        assert!(config(&[base, (OTEL_METRIC_EXPORT_INTERVAL, "0")]).is_err());
    }

    #[test]
    fn nothing_runs_without_a_configuration() {
        assert!(spawn("svc", None, String::new).is_none());
    }
}
