//! ingest's configuration, built once from the environment (names per deploy/API.md).

use std::{net::SocketAddr, time::Duration};

use shared::{
    config::{
        AMQP_VARIABLES, AmqpConfig, ConfigError, Env, Variable, millis_or, parsed_or, required,
        seconds_or,
    },
    telemetry::{TELEMETRY_VARIABLES, TelemetryConfig},
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

/// Where ingest listens unless `INGEST_ADDR` says otherwise.
pub const DEFAULT_ADDR: &str = "0.0.0.0:8080";

/// Every variable ingest reads (its own, then the broker's and telemetry's), for `--help`.
pub fn variables() -> Vec<Variable> {
    let own = [
        Variable {
            name: STRIPE_WEBHOOK_SECRET,
            default: "required",
            meaning: "one or more whsec_… signing secrets, comma-separated (rotation)",
        },
        Variable {
            name: STRIPE_WEBHOOK_TOLERANCE_SECS,
            default: "300",
            meaning: "max age (and future skew) of a signature, seconds",
        },
        Variable {
            name: INGEST_ADDR,
            default: DEFAULT_ADDR,
            meaning: "HTTP listen address",
        },
        Variable {
            name: INGEST_BODY_LIMIT_BYTES,
            default: "1048576",
            meaning: "larger bodies get 413",
        },
        Variable {
            name: INGEST_PUBLISH_TIMEOUT_MS,
            default: "5000",
            meaning: "wait this long for the broker's confirm, then answer 503",
        },
        Variable {
            name: INGEST_PUBLISH_CHANNELS,
            default: "4",
            meaning: "confirm channels publishes are spread over",
        },
        Variable {
            name: INGEST_BODY_TIMEOUT_MS,
            default: "10000",
            meaning: "clients that take longer to send the body get 408",
        },
        Variable {
            name: INGEST_WORKERS,
            default: "0",
            meaning: "HTTP worker threads; 0 = one per CPU core the process sees",
        },
    ];
    own.into_iter()
        .chain(AMQP_VARIABLES)
        .chain(TELEMETRY_VARIABLES)
        .collect()
}

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
            addr: parsed_or(env, INGEST_ADDR, default_addr())?,
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

fn default_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
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
    fn the_help_lists_every_variable_with_the_default_address() {
        assert_eq!(default_addr().to_string(), DEFAULT_ADDR);
        let names: Vec<&str> = variables().iter().map(|v| v.name).collect();
        for name in [
            STRIPE_WEBHOOK_SECRET,
            INGEST_ADDR,
            INGEST_WORKERS,
            "AMQP_URL",
            "LOG_FORMAT",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
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
