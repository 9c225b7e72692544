//! ingest's configuration, built once from the environment (names per deploy/API.md).

use std::{net::SocketAddr, time::Duration};

use shared::{
    config::{AmqpConfig, ConfigError, Env, millis_or, parsed_or, required, seconds_or},
    telemetry::TelemetryConfig,
};

use crate::signature::WebhookSecret;

pub const STRIPE_WEBHOOK_SECRET: &str = "STRIPE_WEBHOOK_SECRET";
pub const STRIPE_WEBHOOK_TOLERANCE_SECS: &str = "STRIPE_WEBHOOK_TOLERANCE_SECS";
pub const INGEST_ADDR: &str = "INGEST_ADDR";
pub const INGEST_BODY_LIMIT_BYTES: &str = "INGEST_BODY_LIMIT_BYTES";
pub const INGEST_PUBLISH_TIMEOUT_MS: &str = "INGEST_PUBLISH_TIMEOUT_MS";
pub const INGEST_PUBLISH_CHANNELS: &str = "INGEST_PUBLISH_CHANNELS";
pub const INGEST_BODY_TIMEOUT_MS: &str = "INGEST_BODY_TIMEOUT_MS";
pub const INGEST_WORKERS: &str = "INGEST_WORKERS";

#[derive(Debug, Clone)]
pub struct Config {
    /// One or more signing secrets; any may match (rotation).
    pub webhook_secrets: Vec<WebhookSecret>,
    pub tolerance: Duration,
    pub addr: SocketAddr,
    pub body_limit: usize,
    /// How long a request waits for the broker's confirm before answering 503.
    pub publish_timeout: Duration,
    /// Confirm-mode channels publishes are spread over.
    pub publish_channels: usize,
    /// How long a client may take to send its body.
    pub body_timeout: Duration,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    pub amqp: AmqpConfig,
    pub telemetry: TelemetryConfig,
}

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let raw_secrets = required(env, STRIPE_WEBHOOK_SECRET)?;
        let webhook_secrets = raw_secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(WebhookSecret::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::invalid(STRIPE_WEBHOOK_SECRET, e))?;
        if webhook_secrets.is_empty() {
            return Err(ConfigError::Missing {
                name: STRIPE_WEBHOOK_SECRET,
            });
        }
        let publish_channels = parsed_or(env, INGEST_PUBLISH_CHANNELS, 4usize)?;
        if publish_channels == 0 {
            return Err(ConfigError::invalid(
                INGEST_PUBLISH_CHANNELS,
                "must be at least 1",
            ));
        }
        Ok(Self {
            webhook_secrets,
            tolerance: seconds_or(env, STRIPE_WEBHOOK_TOLERANCE_SECS, 300)?,
            addr: parsed_or(env, INGEST_ADDR, SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            body_limit: parsed_or(env, INGEST_BODY_LIMIT_BYTES, 1024 * 1024)?,
            publish_timeout: millis_or(env, INGEST_PUBLISH_TIMEOUT_MS, 5_000)?,
            publish_channels,
            body_timeout: millis_or(env, INGEST_BODY_TIMEOUT_MS, 10_000)?,
            workers: parsed_or(env, INGEST_WORKERS, 0usize)?,
            amqp: AmqpConfig::from_env(env)?,
            telemetry: TelemetryConfig::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn reads_several_secrets_and_the_contract_defaults() {
        let env = HashMap::from([(STRIPE_WEBHOOK_SECRET, "whsec_a, whsec_b")]);
        let cfg = Config::from_env(&env).unwrap();
        assert_eq!(cfg.webhook_secrets.len(), 2);
        assert_eq!(cfg.tolerance, Duration::from_secs(300));
        assert_eq!(cfg.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(cfg.body_limit, 1024 * 1024);
    }

    #[test]
    fn a_missing_secret_is_named() {
        let env: HashMap<&str, &str> = HashMap::new();
        let err = Config::from_env(&env).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing {
                name: STRIPE_WEBHOOK_SECRET
            }
        );
    }

    #[test]
    fn a_secret_of_the_wrong_kind_is_refused_without_echoing_it() {
        let env = HashMap::from([(STRIPE_WEBHOOK_SECRET, "whsec_ok,sk_live_SECRETVALUE")]);
        let err = Config::from_env(&env).unwrap_err().to_string();
        assert!(err.contains(STRIPE_WEBHOOK_SECRET), "{err}");
        assert!(!err.contains("SECRETVALUE"), "{err}");
    }

    #[test]
    fn a_malformed_tolerance_is_named() {
        let env = HashMap::from([
            (STRIPE_WEBHOOK_SECRET, "whsec_a"),
            (STRIPE_WEBHOOK_TOLERANCE_SECS, "-5"),
        ]);
        let err = Config::from_env(&env).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: STRIPE_WEBHOOK_TOLERANCE_SECS,
                ..
            }
        ));
    }
}
