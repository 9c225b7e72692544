//! fulfill's configuration, built once from the environment (names per deploy/API.md).

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use shared::{
    config::{
        AMQP_VARIABLES, AmqpConfig, ConfigError, Env, Variable, millis_or, optional, parsed_or,
        required, required_secret,
    },
    telemetry::{TELEMETRY_VARIABLES, TelemetryConfig},
};

use crate::{
    domain::target::RefundPolicy,
    stripe::{RateLimitScope, StripeConfig, StripeMode},
};

pub const DATABASE_URL: &str = "DATABASE_URL";
pub const DATABASE_POOL_SIZE: &str = "DATABASE_POOL_SIZE";
pub const STRIPE_SECRET_KEY: &str = "STRIPE_SECRET_KEY";
pub const STRIPE_API_BASE: &str = "STRIPE_API_BASE";
pub const STRIPE_RATE_LIMIT: &str = "STRIPE_RATE_LIMIT";
pub const STRIPE_RATE_LIMIT_SCOPE: &str = "STRIPE_RATE_LIMIT_SCOPE";
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

/// Where fulfill listens unless `FULFILL_ADDR` says otherwise.
pub const DEFAULT_ADDR: &str = "0.0.0.0:8081";
/// Deliveries in progress per process. Most of a delivery's time is Stripe's answer
/// (a few hundred milliseconds with the expansions) and the wait for budget: at 0.5 s a
/// call, using live mode's 100 calls/s takes 50 calls in flight across the fleet, which
/// 16 per process (the earlier default) gave only with four processes. Redeliveries of
/// settled sessions cost one shared read each and drain as fast as many are in flight.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Unacknowledged deliveries per consumer: twice the concurrency, so the next deliveries
/// are at hand when one finishes, and a quarter of it (the ack window) acks in one frame.
pub const DEFAULT_PREFETCH: u16 = 128;
/// The Stripe API unless `STRIPE_API_BASE` says otherwise.
pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";

/// Every variable fulfill reads (its own, then the broker's and telemetry's), for `--help`.
pub fn variables() -> Vec<Variable> {
    let v = |name, default, meaning| Variable {
        name,
        default,
        meaning,
    };
    [
        v(STRIPE_SECRET_KEY, "required", "sk_… or restricted rk_… key"),
        v(
            STRIPE_API_BASE,
            DEFAULT_STRIPE_API_BASE,
            "Stripe API base URL",
        ),
        v(
            STRIPE_RATE_LIMIT,
            "25",
            "Stripe operations/s for all fulfill processes together (shared through PostgreSQL)",
        ),
        v(
            STRIPE_RATE_LIMIT_SCOPE,
            "account",
            "whose budget a Connect call spends: account (each connected account its own) or platform (one for all)",
        ),
        v(STRIPE_TIMEOUT_MS, "10000", "timeout of one Stripe call"),
        v(
            STRIPE_MAX_RETRIES,
            "3",
            "in-process retries of a transient Stripe failure",
        ),
        v(STRIPE_BACKOFF_BASE_MS, "500", "first retry delay, doubling"),
        v(DATABASE_URL, "required", "postgres://…"),
        v(
            DATABASE_POOL_SIZE,
            "10",
            "PostgreSQL connections per process, at least 1",
        ),
        v(FULFILL_ADDR, DEFAULT_ADDR, "HTTP listen address"),
        v(
            FULFILL_API_TOKEN,
            "unset",
            "when set, /users/*, /checkout/* and /attention need Authorization: Bearer …",
        ),
        v(
            FULFILL_CONCURRENCY,
            "64",
            "deliveries processed at once",
        ),
        v(
            FULFILL_PREFETCH,
            "128",
            "unacknowledged deliveries the broker may push ahead",
        ),
        v(
            FULFILL_MAX_ATTEMPTS,
            "30",
            "attempts before a transiently failing message is dead-lettered",
        ),
        v(
            FULFILL_RETRY_BASE_MS,
            "1000",
            "first retry-queue delay, doubling",
        ),
        v(FULFILL_RETRY_MAX_MS, "60000", "longest retry-queue delay"),
        v(
            FULFILL_REFUND_POLICY,
            "proportional",
            "proportional or all_or_nothing",
        ),
        v(
            FULFILL_RECONCILE_INTERVAL_SECS,
            "0",
            "also reconcile in the background this often (one process at a time); 0 = off",
        ),
    ]
    .into_iter()
    .chain(AMQP_VARIABLES)
    .chain(TELEMETRY_VARIABLES)
    .collect()
}

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
        let mode = {
            use secrecy::ExposeSecret;
            StripeMode::of_key(secret_key.expose_secret()).ok_or_else(|| {
                ConfigError::invalid(
                    STRIPE_SECRET_KEY,
                    "must be a live or test secret key (sk_live_…, sk_test_…) or restricted key (rk_live_…, rk_test_…)",
                )
            })?
        };
        let api_base =
            optional(env, STRIPE_API_BASE).unwrap_or_else(|| DEFAULT_STRIPE_API_BASE.to_owned());
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
        let concurrency: usize = parsed_or(env, FULFILL_CONCURRENCY, DEFAULT_CONCURRENCY)?;
        if concurrency == 0 {
            return Err(ConfigError::invalid(
                FULFILL_CONCURRENCY,
                "must be at least 1",
            ));
        }
        let prefetch: u16 = parsed_or(env, FULFILL_PREFETCH, DEFAULT_PREFETCH)?;
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
        let database_pool_size: u32 = parsed_or(env, DATABASE_POOL_SIZE, 10)?;
        if database_pool_size == 0 {
            return Err(ConfigError::invalid(
                DATABASE_POOL_SIZE,
                "must be at least 1",
            ));
        }
        Ok(Self {
            database_url: SecretString::from(database_url),
            database_pool_size,
            stripe: StripeConfig {
                secret_key,
                mode,
                api_base,
                // For all fulfill processes together: shared through PostgreSQL.
                rate_limit: total_rate,
                rate_limit_scope: parsed_or(
                    env,
                    STRIPE_RATE_LIMIT_SCOPE,
                    RateLimitScope::default(),
                )?,
                timeout: millis_or(env, STRIPE_TIMEOUT_MS, 10_000)?,
                max_retries: parsed_or(env, STRIPE_MAX_RETRIES, 3)?,
                backoff_base: millis_or(env, STRIPE_BACKOFF_BASE_MS, 500)?,
                backoff_max: Duration::from_secs(10),
            },
            addr: parsed_or(env, FULFILL_ADDR, default_addr())?,
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

fn default_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8081))
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
    fn knows_the_mode_from_the_key_and_refuses_a_key_without_one() {
        let live = Config::from_env(&env(&[(STRIPE_SECRET_KEY, "rk_live_abc")])).unwrap();
        assert_eq!(live.stripe.mode, StripeMode::Live);
        let test = Config::from_env(&env(&[])).unwrap();
        assert_eq!(test.stripe.mode, StripeMode::Test);
        let err = Config::from_env(&env(&[(STRIPE_SECRET_KEY, "sk_SOMEKEY")])).unwrap_err();
        assert!(err.to_string().contains(STRIPE_SECRET_KEY), "{err}");
        assert!(!err.to_string().contains("SOMEKEY"));
    }

    #[test]
    fn refuses_an_empty_pool_by_name() {
        let err = Config::from_env(&env(&[(DATABASE_POOL_SIZE, "0")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: DATABASE_POOL_SIZE,
                ..
            }
        ));
    }

    #[test]
    fn the_help_lists_every_variable_with_the_default_address() {
        assert_eq!(default_addr().to_string(), DEFAULT_ADDR);
        let names: Vec<&str> = variables().iter().map(|v| v.name).collect();
        for name in [
            DATABASE_URL,
            DATABASE_POOL_SIZE,
            FULFILL_RECONCILE_INTERVAL_SECS,
            "AMQP_URL",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    #[test]
    fn the_help_states_the_concurrency_and_prefetch_in_force() {
        let cfg = Config::from_env(&env(&[])).unwrap();
        assert_eq!(cfg.consumer.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(cfg.consumer.prefetch, DEFAULT_PREFETCH);
        let default_of = |name: &str| {
            variables()
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.default)
                .unwrap()
        };
        assert_eq!(
            default_of(FULFILL_CONCURRENCY),
            DEFAULT_CONCURRENCY.to_string()
        );
        assert_eq!(default_of(FULFILL_PREFETCH), DEFAULT_PREFETCH.to_string());
    }

    #[test]
    fn the_budget_is_per_account_unless_the_scope_says_platform() {
        let cfg = Config::from_env(&env(&[])).unwrap();
        assert_eq!(cfg.stripe.rate_limit_scope, RateLimitScope::Account);
        let cfg = Config::from_env(&env(&[(STRIPE_RATE_LIMIT_SCOPE, "platform")])).unwrap();
        assert_eq!(cfg.stripe.rate_limit_scope, RateLimitScope::Platform);
        let cfg = Config::from_env(&env(&[(STRIPE_RATE_LIMIT_SCOPE, "account")])).unwrap();
        assert_eq!(cfg.stripe.rate_limit_scope, RateLimitScope::Account);
        for bad in ["global", "Platform", "accounts"] {
            let err = Config::from_env(&env(&[(STRIPE_RATE_LIMIT_SCOPE, bad)])).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        name: STRIPE_RATE_LIMIT_SCOPE,
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn refuses_a_zero_or_malformed_rate() {
        for bad in ["0", "-1", "fast", "NaN"] {
            let err = Config::from_env(&env(&[(STRIPE_RATE_LIMIT, bad)])).unwrap_err();
            assert!(err.to_string().contains(STRIPE_RATE_LIMIT), "{bad}: {err}");
        }
    }
}
