//! Live or test: the key's mode decides which events and objects count.
//! <https://docs.stripe.com/keys#obtain-api-keys>

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StripeMode {
    Live,
    Test,
}

impl StripeMode {
    /// The mode of a secret (`sk_`) or restricted (`rk_`) key; `None` for anything else.
    pub fn of_key(key: &str) -> Option<Self> {
        match key.get(..8) {
            Some("sk_live_" | "rk_live_") => Some(Self::Live),
            Some("sk_test_" | "rk_test_") => Some(Self::Test),
            _ => None,
        }
    }

    /// Whether an object or event with this `livemode` belongs to this mode.
    pub fn matches(self, livemode: bool) -> bool {
        livemode == (self == Self::Live)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_mode_from_secret_and_restricted_keys() {
        assert_eq!(StripeMode::of_key("sk_live_abc"), Some(StripeMode::Live));
        assert_eq!(StripeMode::of_key("rk_live_abc"), Some(StripeMode::Live));
        assert_eq!(StripeMode::of_key("sk_test_abc"), Some(StripeMode::Test));
        assert_eq!(StripeMode::of_key("rk_test_abc"), Some(StripeMode::Test));
        for other in ["pk_live_abc", "sk_abc", "whsec_x", "", "sk_live"] {
            assert_eq!(StripeMode::of_key(other), None, "{other}");
        }
    }

    #[test]
    fn a_test_key_counts_only_test_objects() {
        assert!(StripeMode::Test.matches(false));
        assert!(!StripeMode::Test.matches(true));
        assert!(StripeMode::Live.matches(true));
    }
}
