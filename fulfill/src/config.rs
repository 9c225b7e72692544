//! fulfill's configuration, built once from the environment (names per deploy/API.md).

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use shared::{
    config::{
        AmqpConfig, ConfigError, Env, millis_or, optional, parsed_or, required, required_secret,
    },
    telemetry::TelemetryConfig,
};

use crate::{fulfillment::reversal::RefundPolicy, stripe::StripeConfig};

pub const DATABASE_URL: &str = "DATABASE_URL";
pub const DATABASE_POOL_SIZE: &str = "DATABASE_POOL_SIZE";
pub const STRIPE_SECRET_KEY: &str = "STRIPE_SECRET_KEY";
pub const STRIPE_API_BASE: &str = "STRIPE_API_BASE";
pub const STRIPE_RATE_LIMIT: &str = "STRIPE_RATE_LIMIT";
pub const STRIPE_TIMEOUT_MS: &str = "STRIPE_TIMEOUT_MS";
pub const STRIPE_MAX_RETRIES: &str = "STRIPE_MAX_RETRIES";
pub const STRIPE_BACKOFF_BASE_MS: &str = "STRIPE_BACKOFF_BASE_MS";
pub const FULFILL_ADDR: &str = "FULFILL_ADDR";
pub const FULFILL_API_TOKEN: &str = "FULFILL_API_TOKEN";
pub const FULFILL_CONCURRENCY: &str = "FULFILL_CONCURRENCY";
pub const FULFILL_PREFETCH: &str = "FULFILL_PREFETCH";
pub const FULFILL_MAX_ATTEMPTS: &str = "FULFILL_MAX_ATTEMPTS";
pub const FULFILL_RETRY_BASE_MS: &str = "FULFILL_RETRY_BASE_MS";
pub const FULFILL_RETRY_MAX_MS: &str = "FULFILL_RETRY_MAX_MS";
pub const FULFILL_REFUND_POLICY: &str = "FULFILL_REFUND_POLICY";
pub const FULFILL_RECONCILE_INTERVAL_SECS: &str = "FULFILL_RECONCILE_INTERVAL_SECS";

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Deliveries processed at once.
    pub concurrency: usize,
    /// Unacknowledged deliveries the broker may push ahead (basic.qos).
    pub prefetch: u16,
    /// Attempts (first + retries through the retry queue) before dead-lettering.
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: SecretString,
    pub database_pool_size: u32,
    pub stripe: StripeConfig,
    pub addr: SocketAddr,
    pub api_token: Option<SecretString>,
    pub consumer: ConsumerConfig,
    pub refund_policy: RefundPolicy,
    /// Run reconciliation in the background this often; `None`: only by the subcommand.
    pub reconcile_interval: Option<Duration>,
    pub amqp: AmqpConfig,
    pub telemetry: TelemetryConfig,
}

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let database_url = required(env, DATABASE_URL)?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                DATABASE_URL,
                "must start with postgres:// or postgresql://",
            ));
        }
        let secret_key = required_secret(env, STRIPE_SECRET_KEY)?;
        {
            use secrecy::ExposeSecret;
            let key = secret_key.expose_secret();
            if !(key.starts_with("sk_") || key.starts_with("rk_")) {
                return Err(ConfigError::invalid(
                    STRIPE_SECRET_KEY,
                    "must be a secret (sk_…) or restricted (rk_…) key",
                ));
            }
        }
        let api_base =
            optional(env, STRIPE_API_BASE).unwrap_or_else(|| "https://api.stripe.com".to_owned());
        if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
            return Err(ConfigError::invalid(
                STRIPE_API_BASE,
                "must be an http(s) URL",
            ));
        }
        let total_rate: f64 = parsed_or(env, STRIPE_RATE_LIMIT, 25.0)?;
        if !(total_rate.is_finite() && total_rate > 0.0) {
            return Err(ConfigError::invalid(
                STRIPE_RATE_LIMIT,
                "must be a positive number",
            ));
        }
        let concurrency: usize = parsed_or(env, FULFILL_CONCURRENCY, 16)?;
        if concurrency == 0 {
            return Err(ConfigError::invalid(
                FULFILL_CONCURRENCY,
                "must be at least 1",
            ));
        }
        let prefetch: u16 = parsed_or(env, FULFILL_PREFETCH, 32)?;
        if prefetch == 0 {
            return Err(ConfigError::invalid(FULFILL_PREFETCH, "must be at least 1"));
        }
        let max_attempts: u32 = parsed_or(env, FULFILL_MAX_ATTEMPTS, 30)?;
        if max_attempts == 0 {
            return Err(ConfigError::invalid(
                FULFILL_MAX_ATTEMPTS,
                "must be at least 1",
            ));
        }
        Ok(Self {
            database_url: SecretString::from(database_url),
            database_pool_size: parsed_or(env, DATABASE_POOL_SIZE, 10)?,
            stripe: StripeConfig {
                secret_key,
                api_base,
                // For all fulfill processes together: shared through PostgreSQL.
                rate_limit: total_rate,
                timeout: millis_or(env, STRIPE_TIMEOUT_MS, 10_000)?,
                max_retries: parsed_or(env, STRIPE_MAX_RETRIES, 3)?,
                backoff_base: millis_or(env, STRIPE_BACKOFF_BASE_MS, 500)?,
                backoff_max: Duration::from_secs(10),
            },
            addr: parsed_or(env, FULFILL_ADDR, SocketAddr::from(([0, 0, 0, 0], 8081)))?,
            api_token: optional(env, FULFILL_API_TOKEN).map(SecretString::from),
            consumer: ConsumerConfig {
                concurrency,
                prefetch,
                max_attempts,
                retry_base: millis_or(env, FULFILL_RETRY_BASE_MS, 1_000)?,
                retry_max: millis_or(env, FULFILL_RETRY_MAX_MS, 60_000)?,
            },
            refund_policy: parsed_or(env, FULFILL_REFUND_POLICY, RefundPolicy::Proportional)?,
            reconcile_interval: match parsed_or(env, FULFILL_RECONCILE_INTERVAL_SECS, 0u64)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            amqp: AmqpConfig::from_env(env)?,
            telemetry: TelemetryConfig::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(extra: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        let mut m = HashMap::from([
            (DATABASE_URL, "postgres://postgres@127.0.0.1/x"),
            (STRIPE_SECRET_KEY, "sk_test_123"),
        ]);
        m.extend(extra.iter().copied());
        m
    }

    #[test]
    fn uses_the_contract_defaults() {
        let cfg = Config::from_env(&env(&[])).unwrap();
        assert_eq!(cfg.stripe.api_base, "https://api.stripe.com");
        assert_eq!(cfg.stripe.rate_limit, 25.0);
        assert_eq!(cfg.addr, "0.0.0.0:8081".parse().unwrap());
        assert!(cfg.api_token.is_none());
    }

    #[test]
    fn names_each_missing_required_variable() {
        let mut e = env(&[]);
        e.remove(STRIPE_SECRET_KEY);
        assert_eq!(
            Config::from_env(&e).unwrap_err(),
            ConfigError::Missing {
                name: STRIPE_SECRET_KEY
            }
        );
        let mut e = env(&[]);
        e.remove(DATABASE_URL);
        assert_eq!(
            Config::from_env(&e).unwrap_err(),
            ConfigError::Missing { name: DATABASE_URL }
        );
    }

    #[test]
    fn refuses_a_publishable_key_without_echoing_it() {
        let err = Config::from_env(&env(&[(STRIPE_SECRET_KEY, "pk_live_VISIBLE")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: STRIPE_SECRET_KEY,
                ..
            }
        ));
        assert!(!err.to_string().contains("VISIBLE"));
    }

    #[test]
    fn refuses_a_zero_or_malformed_rate() {
        for bad in ["0", "-1", "fast", "NaN"] {
            let err = Config::from_env(&env(&[(STRIPE_RATE_LIMIT, bad)])).unwrap_err();
            assert!(err.to_string().contains(STRIPE_RATE_LIMIT), "{bad}: {err}");
        }
    }
}
