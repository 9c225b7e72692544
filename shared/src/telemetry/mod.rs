//! Logging, tracing and metrics set-up shared by both services.
//!
//! [`init`] installs the tracing subscriber once per process: human-readable lines by
//! default, one JSON object per line with `LOG_FORMAT=json`; `RUST_LOG` filters.
//!
//! When an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), spans are also exported to it through
//! OpenTelemetry: a `tracing-opentelemetry` layer feeding a batch span processor that
//! sends OTLP over HTTP (protobuf unless `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`). The
//! other standard variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, …) are read by
//! the SDK itself. Without an endpoint the layer is not installed at all, so spans cost
//! what they cost before. W3C trace context crosses the broker in AMQP headers
//! ([`propagation`]). Metrics are not exported over OTLP: they are scraped from
//! `/metrics` ([`metrics`]); an OpenTelemetry Collector's `prometheus` receiver can scrape
//! them for an OTLP pipeline.
//! <https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/>

pub mod http;
pub mod metrics;
pub mod propagation;

use std::{io::IsTerminal, time::Duration};

pub use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{ConfigError, Env, Variable, optional};

pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";

/// The telemetry variables of both services: those our code reads, then the standard ones
/// the OpenTelemetry SDK reads itself when traces are exported.
pub const TELEMETRY_VARIABLES: [Variable; 17] = [
    Variable {
        name: LOG_FORMAT,
        default: "text",
        meaning: "`json` for one JSON object per line",
    },
    Variable {
        name: "RUST_LOG",
        default: "info,lapin=warn,actix_server=warn",
        meaning: "log filter (tracing-subscriber EnvFilter)",
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_ENDPOINT,
        default: "unset",
        meaning: "collector base URL: traces go to {endpoint}/v1/traces (off when unset)",
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        default: "unset",
        meaning: "full traces URL, wins over OTEL_EXPORTER_OTLP_ENDPOINT",
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_PROTOCOL,
        default: "http/protobuf",
        meaning: "or http/json (gRPC is not built in)",
    },
    Variable {
        name: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
        default: "unset",
        meaning: "wins over OTEL_EXPORTER_OTLP_PROTOCOL for traces",
    },
    Variable {
        name: OTEL_SERVICE_NAME,
        default: "the binary's name",
        meaning: "service.name of the spans",
    },
    Variable {
        name: OTEL_SDK_DISABLED,
        default: "false",
        meaning: "`true`: no export, even with an endpoint",
    },
    Variable {
        name: OTEL_TRACES_EXPORTER,
        default: "otlp",
        meaning: "`none`: no trace export, even with an endpoint",
    },
    Variable {
        name: "OTEL_RESOURCE_ATTRIBUTES",
        default: "unset",
        meaning: "e.g. deployment.environment.name=staging (read by the OpenTelemetry SDK)",
    },
    Variable {
        name: "OTEL_TRACES_SAMPLER",
        default: "parentbased_always_on",
        meaning: "e.g. parentbased_traceidratio (read by the SDK)",
    },
    Variable {
        name: "OTEL_TRACES_SAMPLER_ARG",
        default: "unset",
        meaning: "e.g. 0.1 for the ratio samplers (read by the SDK)",
    },
    Variable {
        name: "OTEL_EXPORTER_OTLP_HEADERS",
        default: "unset",
        meaning: "key=value,… sent with every export, e.g. an API key (read by the SDK)",
    },
    Variable {
        name: "OTEL_EXPORTER_OTLP_TIMEOUT",
        default: "10000",
        meaning: "export timeout, ms (read by the SDK)",
    },
    Variable {
        name: "OTEL_BSP_SCHEDULE_DELAY",
        default: "5000",
        meaning: "batch span processor delay, ms (read by the SDK)",
    },
    Variable {
        name: "OTEL_BSP_MAX_QUEUE_SIZE",
        default: "2048",
        meaning: "spans buffered before new ones are dropped (read by the SDK)",
    },
    Variable {
        name: "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        default: "512",
        meaning: "spans per export (read by the SDK)",
    },
];

/// How long shutdown waits for the last spans to reach the collector.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    HttpJson,
}

impl OtlpProtocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL` that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::HttpJson => "http/json",
        }
    }
}

/// Where and how spans are exported; only what our code decides on; the SDK reads the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The endpoint as configured (base URL, or the full traces URL), for the start-up log.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Whether `OTEL_SERVICE_NAME` names the service; else it is named after the binary.
    pub service_name_set: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `None`: no endpoint (or the SDK disabled), traces are not exported.
    pub otlp: Option<OtlpConfig>,
}

impl TelemetryConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let log_format = match optional(env, LOG_FORMAT).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::invalid(
                    LOG_FORMAT,
                    format!("{other:?}: expected \"text\" or \"json\""),
                ));
            }
        };
        Ok(Self {
            log_format,
            otlp: OtlpConfig::from_env(env)?,
        })
    }
}

impl OtlpConfig {
    /// `None` when no endpoint is set: an empty value (as docker-compose passes for an
    /// unset `${OTEL_EXPORTER_OTLP_ENDPOINT:-}`) counts as unset.
    fn from_env(env: &dyn Env) -> Result<Option<Self>, ConfigError> {
        let disabled =
            optional(env, OTEL_SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        match optional(env, OTEL_TRACES_EXPORTER).as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(ConfigError::invalid(
                    OTEL_TRACES_EXPORTER,
                    format!("{other:?}: only \"otlp\" and \"none\" are built in"),
                ));
            }
        }
        let (name, endpoint) = match (
            optional(env, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
            optional(env, OTEL_EXPORTER_OTLP_ENDPOINT),
        ) {
            (Some(traces), _) => (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, traces),
            (None, Some(base)) => (OTEL_EXPORTER_OTLP_ENDPOINT, base),
            (None, None) => return Ok(None),
        };
        if disabled {
            return Ok(None);
        }
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::invalid(
                name,
                "must be an http(s) URL (OTLP over HTTP; gRPC is not built in)",
            ));
        }
        let protocol = protocol(env, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)?
            .or(protocol(env, OTEL_EXPORTER_OTLP_PROTOCOL)?)
            .unwrap_or(OtlpProtocol::HttpProtobuf);
        Ok(Some(Self {
            endpoint,
            protocol,
            service_name_set: optional(env, OTEL_SERVICE_NAME).is_some(),
        }))
    }
}

fn protocol(env: &dyn Env, name: &'static str) -> Result<Option<OtlpProtocol>, ConfigError> {
    match optional(env, name).as_deref() {
        None => Ok(None),
        Some("http/protobuf") => Ok(Some(OtlpProtocol::HttpProtobuf)),
        Some("http/json") => Ok(Some(OtlpProtocol::HttpJson)),
        Some(other) => Err(ConfigError::invalid(
            name,
            format!(
                "{other:?}: expected \"http/protobuf\" or \"http/json\" (gRPC is not built in)"
            ),
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP span exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Kept by `main` for the life of the process. [`TelemetryGuard::shutdown`] (or, failing
/// that, drop) exports the spans still buffered and stops the exporter.
#[must_use = "buffered spans are exported when the guard is shut down or dropped"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is buffered and stops the exporter: the last step of shutdown, after
    /// the service has finished its in-flight work (whose spans are then complete).
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            flush(provider);
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            flush(provider);
        }
    }
}

/// The batch processor exports from a task on the tokio runtime while `shutdown` blocks
/// waiting for it, so this thread must not be one that task needs.
fn flush(provider: SdkTracerProvider) {
    let shut = move || provider.shutdown_with_timeout(FLUSH_TIMEOUT);
    let result = match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread => {
            // The only thread that could run the export is this one: blocking would hang.
            tracing::warn!("not flushing traces from a current-thread runtime");
            return;
        }
        Ok(_) => tokio::task::block_in_place(shut),
        Err(_) => shut(),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not export the last spans");
    }
}

/// The registry under the EnvFilter, which every other layer sits on.
type Filtered = tracing_subscriber::layer::Layered<EnvFilter, Registry>;

/// Installs the global subscriber (and, when configured, the OTLP span exporter and the
/// W3C trace-context propagator). Call once, first thing in `main`, inside the tokio
/// runtime: the batch span processor runs as a task on it.
pub fn init(service: &'static str, config: &TelemetryConfig) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,actix_server=warn"));
    let mut layers: Vec<Box<dyn Layer<Filtered> + Send + Sync>> = vec![match config.log_format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            // Every enclosing span with its fields: the root span's `trace_id` joins
            // each line to its trace.
            .with_span_list(true)
            .boxed(),
        // Colours only for a person at a terminal: into a pipe or a file (a container's
        // log, journald) the escape codes are noise to read and to search, and writing them
        // was a visible part of the per-request CPU (tests/bench/BENCHMARKS.md).
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    }];
    let (provider, failure) = match config
        .otlp
        .as_ref()
        .map(|otlp| tracer_provider(service, otlp))
    {
        None => (None, None),
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(e)) => (None, Some(e)),
    };
    if let Some(provider) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                // Thread names and ids say nothing about a request on a work-stealing runtime.
                .with_threads(false)
                .boxed(),
        );
    }
    if let Err(e) = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
    {
        eprintln!("{service}: tracing subscriber already installed: {e}");
    }
    match (&config.otlp, &failure) {
        (Some(otlp), None) => tracing::info!(
            endpoint = %without_userinfo(&otlp.endpoint),
            protocol = otlp.protocol.as_str(),
            "exporting traces over OTLP"
        ),
        (Some(_), Some(TelemetryError::Exporter(cause))) => {
            tracing::warn!(error = %cause, "cannot build the OTLP span exporter; traces will not be exported");
        }
        (None, _) => {}
    }
    TelemetryGuard { provider }
}

fn tracer_provider(
    service: &'static str,
    otlp: &OtlpConfig,
) -> Result<SdkTracerProvider, TelemetryError> {
    // The exporter's reqwest client is built without a default TLS provider; use ring's,
    // as everything else here does. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        // Explicit, because with both encodings compiled in the exporter would default to
        // JSON, where the specification's default is protobuf.
        .with_protocol(match otlp.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        })
        .build()?;
    // The async-runtime processor, because the exporter's HTTP client is async reqwest;
    // its delay, queue and batch sizes come from OTEL_BSP_*.
    let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
    let mut resource = Resource::builder();
    if !otlp.service_name_set {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}

/// `scheme://host…` without any `user:password@`, for logging.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// Sets OpenTelemetry attributes on the span exported for `span`, computing them only when
/// there is one (traces exported, this trace sampled).
///
/// For attributes that only the trace backend reads (the semantic conventions' `http.*`,
/// `url.*`, `messaging.*`, …): as tracing fields the log layer would also format them, on
/// every request, into the span prefix of log lines that never need them.
pub fn set_attributes<I>(span: &tracing::Span, attributes: impl FnOnce() -> I)
where
    I: IntoIterator<Item = KeyValue>,
{
    let context = span.context();
    let otel = context.span();
    if otel.is_recording() {
        for attribute in attributes() {
            otel.set_attribute(attribute);
        }
    }
}

/// Records `trace_id` and `span_id` (declared `tracing::field::Empty` on `span`) once the
/// span's OpenTelemetry context is known, so that log lines inside it name their trace.
/// Call it after any `set_parent`. Nothing happens when traces are not exported.
pub fn record_trace_ids(span: &tracing::Span) {
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

/// For tests: log through the test harness's capture, at most once per process.
/// `TEST_LOG=1` shows the lines of passing tests too.
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,actix_server=warn"));
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().with_test_writer())
            .try_init();
    });
}

/// An error with its whole cause chain, `outer: cause: root`, for log lines and
/// dead-letter headers (never for HTTP bodies).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&'static str, &'static str)]) -> Result<TelemetryConfig, ConfigError> {
        TelemetryConfig::from_env(&vars.iter().copied().collect::<HashMap<_, _>>())
    }

    #[test]
    fn traces_are_off_without_an_endpoint_or_with_an_empty_one() {
        assert_eq!(config(&[]).unwrap().otlp, None);
        assert_eq!(
            config(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "")]).unwrap().otlp,
            None
        );
    }

    #[test]
    fn an_endpoint_turns_traces_on_with_protobuf_by_default() {
        let otlp = config(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://jaeger:4318")])
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(otlp.endpoint, "http://jaeger:4318");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert!(!otlp.service_name_set);
    }

    #[test]
    fn the_traces_endpoint_and_protocol_win_over_the_general_ones() {
        let otlp = config(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://a:4318"),
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "http://b:4318/v1/traces",
            ),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/json"),
            (OTEL_SERVICE_NAME, "ingest-eu"),
        ])
        .unwrap()
        .otlp
        .unwrap();
        assert_eq!(otlp.endpoint, "http://b:4318/v1/traces");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpJson);
        assert!(otlp.service_name_set);
    }

    #[test]
    fn the_sdk_can_be_disabled_or_the_exporter_set_to_none() {
        let endpoint = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://jaeger:4318");
        assert_eq!(
            config(&[endpoint, (OTEL_SDK_DISABLED, "true")])
                .unwrap()
                .otlp,
            None
        );
        assert_eq!(
            config(&[endpoint, (OTEL_TRACES_EXPORTER, "none")])
                .unwrap()
                .otlp,
            None
        );
    }

    #[test]
    fn grpc_and_unknown_exporters_are_refused_by_name() {
        let endpoint = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://jaeger:4318");
        assert!(matches!(
            config(&[endpoint, (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc")]),
            Err(ConfigError::Invalid {
                name: OTEL_EXPORTER_OTLP_PROTOCOL,
                ..
            })
        ));
        assert!(matches!(
            config(&[endpoint, (OTEL_TRACES_EXPORTER, "zipkin")]),
            Err(ConfigError::Invalid {
                name: OTEL_TRACES_EXPORTER,
                ..
            })
        ));
        assert!(matches!(
            config(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "jaeger:4317")]),
            Err(ConfigError::Invalid {
                name: OTEL_EXPORTER_OTLP_ENDPOINT,
                ..
            })
        ));
    }

    #[test]
    fn the_logged_endpoint_keeps_no_credentials() {
        assert_eq!(
            without_userinfo("https://user:pw@collector:4318/v1/traces"),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(without_userinfo("http://jaeger:4318"), "http://jaeger:4318");
    }
}
