//! Logging and metrics set-up shared by both services.
//!
//! `init` installs the tracing subscriber once per process: human-readable lines by
//! default, one JSON object per line with `LOG_FORMAT=json`; `RUST_LOG` filters.

pub mod metrics;

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{ConfigError, Env, optional};

pub const LOG_FORMAT: &str = "LOG_FORMAT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
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
        Ok(Self { log_format })
    }
}

/// Kept by `main` for the life of the process; flushes what is buffered when dropped.
#[must_use = "telemetry is flushed when the guard is dropped"]
#[derive(Debug)]
pub struct TelemetryGuard {
    _private: (),
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(service: &'static str, config: &TelemetryConfig) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,actix_server=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
    if let Err(e) = result {
        eprintln!("{service}: tracing subscriber already installed: {e}");
    }
    TelemetryGuard { _private: () }
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
