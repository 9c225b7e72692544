//! Reading configuration from the environment.
//!
//! Every helper names the variable in its error, so an operator sees at once which
//! setting is missing or malformed. Services build their typed `Config` once at
//! start-up from an [`Env`] (the process environment in `main`, a map in tests).

use std::{collections::HashMap, fmt::Display, str::FromStr, time::Duration};

use secrecy::SecretString;

/// Where configuration values come from.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| (*v).to_owned())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {name} is required but not set")]
    Missing { name: &'static str },
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl ConfigError {
    pub fn invalid(name: &'static str, reason: impl Display) -> Self {
        Self::Invalid {
            name,
            reason: reason.to_string(),
        }
    }
}

/// A variable's value, `None` when unset or blank.
pub fn optional(env: &dyn Env, name: &'static str) -> Option<String> {
    env.get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

pub fn required(env: &dyn Env, name: &'static str) -> Result<String, ConfigError> {
    optional(env, name).ok_or(ConfigError::Missing { name })
}

pub fn required_secret(env: &dyn Env, name: &'static str) -> Result<SecretString, ConfigError> {
    required(env, name).map(SecretString::from)
}

/// A parsed value, or `default` when the variable is unset.
pub fn parsed_or<T>(env: &dyn Env, name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match optional(env, name) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|e| ConfigError::invalid(name, format!("{raw:?}: {e}"))),
    }
}

/// A whole number of seconds, or `default` when unset.
pub fn seconds_or(
    env: &dyn Env,
    name: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    parsed_or(env, name, default).map(Duration::from_secs)
}

/// A whole number of milliseconds, or `default` when unset.
pub fn millis_or(env: &dyn Env, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    parsed_or(env, name, default).map(Duration::from_millis)
}

/// One environment variable a binary reads: what `--help` lists, and what the deploy
/// checks compare the deployment files with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    /// The default as people write it; `"required"` or `"unset"` when there is none.
    pub default: &'static str,
    pub meaning: &'static str,
}

/// The `--help` text of a service configured by environment only: `usage`, then one
/// line per variable (`  NAME  [default]  meaning`).
pub fn help(usage: &str, variables: &[Variable]) -> String {
    let width = variables.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut out = format!("{usage}\n\nEnvironment variables:\n");
    for v in variables {
        out.push_str(&format!(
            "  {:width$}  [{}]  {}\n",
            v.name, v.default, v.meaning
        ));
    }
    out
}

pub const AMQP_URL: &str = "AMQP_URL";
pub const AMQP_TOPOLOGY_PREFIX: &str = "AMQP_TOPOLOGY_PREFIX";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker variables both services read.
pub const AMQP_VARIABLES: [Variable; 2] = [
    Variable {
        name: AMQP_URL,
        default: DEFAULT_AMQP_URL,
        meaning: "RabbitMQ (amqp:// or amqps://)",
    },
    Variable {
        name: AMQP_TOPOLOGY_PREFIX,
        default: "empty",
        meaning: "prefix for every exchange and queue name (for tests)",
    },
];

/// How to reach RabbitMQ and which names to use there.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Holds the broker password, hence secret.
    pub url: SecretString,
    /// Prepended to every exchange and queue name; empty in production, unique per test.
    pub topology_prefix: String,
}

impl AmqpConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let url = optional(env, AMQP_URL).unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
        // One node, or several comma-separated (a cluster: see amqp::failover).
        let nodes = crate::amqp::failover::nodes(&url);
        if nodes.is_empty()
            || !nodes
                .iter()
                .all(|u| u.starts_with("amqp://") || u.starts_with("amqps://"))
        {
            return Err(ConfigError::invalid(
                AMQP_URL,
                "must be amqp:// or amqps:// URLs, comma-separated for several nodes",
            ));
        }
        let topology_prefix = optional(env, AMQP_TOPOLOGY_PREFIX).unwrap_or_default();
        if !topology_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(ConfigError::invalid(
                AMQP_TOPOLOGY_PREFIX,
                "only ASCII letters, digits, '.', '_' and '-' are allowed",
            ));
        }
        Ok(Self {
            url: SecretString::from(url),
            topology_prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_variable_when_a_number_is_malformed() {
        let env = HashMap::from([("X_SECS", "soon")]);
        let err = seconds_or(&env, "X_SECS", 5).unwrap_err();
        assert!(err.to_string().contains("X_SECS"), "{err}");
        assert!(matches!(err, ConfigError::Invalid { name: "X_SECS", .. }));
    }

    #[test]
    fn falls_back_to_the_default_when_unset_or_blank() {
        let env = HashMap::from([("BLANK", "  ")]);
        assert_eq!(seconds_or(&env, "BLANK", 7), Ok(Duration::from_secs(7)));
        assert_eq!(seconds_or(&env, "UNSET", 9), Ok(Duration::from_secs(9)));
    }

    #[test]
    fn names_the_missing_required_variable() {
        let env: HashMap<&str, &str> = HashMap::new();
        assert_eq!(
            required(&env, "STRIPE_SECRET_KEY"),
            Err(ConfigError::Missing {
                name: "STRIPE_SECRET_KEY"
            })
        );
    }

    #[test]
    fn amqp_defaults_to_the_local_broker() {
        let env: HashMap<&str, &str> = HashMap::new();
        let cfg = AmqpConfig::from_env(&env).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(cfg.url.expose_secret(), DEFAULT_AMQP_URL);
        assert_eq!(cfg.topology_prefix, "");
    }

    #[test]
    fn amqp_rejects_a_url_of_another_scheme() {
        let env = HashMap::from([(AMQP_URL, "http://x")]);
        assert!(matches!(
            AmqpConfig::from_env(&env),
            Err(ConfigError::Invalid { name: AMQP_URL, .. })
        ));
    }
}
