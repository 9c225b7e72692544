//! Domain newtypes: once built, they are valid.
//!
//! Stripe ids carry a type prefix (`evt_`, `cs_`, …) and are ASCII; checking both
//! keeps hostile strings out of URLs, SQL parameters and log lines.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must start with {prefix:?}")]
    Prefix {
        kind: &'static str,
        prefix: &'static str,
    },
    #[error("{kind} must be 1 to {max} characters of [A-Za-z0-9_]")]
    Charset { kind: &'static str, max: usize },
}

/// Longest Stripe id we accept; real ones are well under this.
const MAX_STRIPE_ID_LEN: usize = 255;

macro_rules! stripe_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                if !raw.starts_with($prefix) {
                    return Err(IdError::Prefix { kind: $kind, prefix: $prefix });
                }
                let valid = raw.len() <= MAX_STRIPE_ID_LEN
                    && raw.len() > $prefix.len()
                    && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(IdError::Charset { kind: $kind, max: MAX_STRIPE_ID_LEN });
                }
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

stripe_id!(
    /// A Stripe event id (`evt_…`).
    EventId, "event id", "evt_"
);
stripe_id!(
    /// A Checkout Session id (`cs_test_…` or `cs_live_…`).
    CheckoutSessionId, "checkout session id", "cs_"
);
stripe_id!(
    /// A PaymentIntent id (`pi_…`).
    PaymentIntentId, "payment intent id", "pi_"
);
stripe_id!(
    /// A Stripe Connect account id (`acct_…`): an event's top-level `account`.
    AccountId, "account id", "acct_"
);

/// Who receives credits: the session's `client_reference_id` (else `metadata.user_id`).
///
/// Any text Stripe accepts there is allowed except what PostgreSQL `text` or a log line
/// cannot hold safely: NUL and other control characters. Stripe caps
/// `client_reference_id` at 200 characters; metadata values at 500.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("user id is empty")]
    Empty,
    #[error("user id is longer than {max} characters")]
    TooLong { max: usize },
    #[error("user id contains a control character")]
    ControlCharacter,
}

impl UserId {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(raw: impl Into<String>) -> Result<Self, UserIdError> {
        let raw = raw.into();
        if raw.trim().is_empty() {
            return Err(UserIdError::Empty);
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(UserIdError::TooLong {
                max: Self::MAX_CHARS,
            });
        }
        if raw.chars().any(char::is_control) {
            return Err(UserIdError::ControlCharacter);
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_ids_of_the_real_event() {
        assert!(EventId::parse("evt_1RL4opGMYJBaxnOIgMhDDV71").is_ok());
        assert!(
            CheckoutSessionId::parse(
                "cs_test_a1IOx43WOHxmIybohUjT6JUZge8HMHzX0ocHsIfShUENY4l8M7F9FY4zT4"
            )
            .is_ok()
        );
    }

    #[test]
    fn rejects_an_id_with_the_wrong_prefix() {
        assert!(matches!(
            CheckoutSessionId::parse("evt_123"),
            Err(IdError::Prefix { .. })
        ));
    }

    #[test]
    fn rejects_an_id_that_would_escape_a_url_path() {
        assert!(CheckoutSessionId::parse("cs_../../v1/charges").is_err());
        assert!(CheckoutSessionId::parse("cs_a?expand[]=x").is_err());
        assert!(CheckoutSessionId::parse("cs_").is_err());
    }

    #[test]
    fn user_id_rejects_nul_and_blank_but_keeps_unicode_and_quotes() {
        assert_eq!(UserId::parse("a\0b"), Err(UserIdError::ControlCharacter));
        assert_eq!(UserId::parse("   "), Err(UserIdError::Empty));
        assert!(UserId::parse("o'brien; DROP TABLE x; -- ünïcødé 🚀").is_ok());
        assert!(matches!(
            UserId::parse("x".repeat(501)),
            Err(UserIdError::TooLong { .. })
        ));
    }
}
