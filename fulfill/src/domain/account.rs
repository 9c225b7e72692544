//! Whose credits: the platform's own users, or those of a Stripe Connect account.
//!
//! An event with a top-level `account` (`acct_…`) happened on that connected account:
//! every Stripe call for it carries `Stripe-Account`, and its sessions, ledger, balances,
//! holds, grants and credit events are that account's. Stored as text, `''` for the
//! platform (so the platform's rows from before Connect need no rewrite).

use std::fmt;

use shared::ids::{AccountId, IdError};

/// The platform, or one connected account.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account(Option<AccountId>);

impl Account {
    /// The platform's own users (no `Stripe-Account`).
    pub const PLATFORM: Self = Self(None);

    pub fn connected(id: AccountId) -> Self {
        Self(Some(id))
    }

    /// An `acct_…` id, or none (the platform); an empty or malformed id is an error, never
    /// the platform: money is never moved for a guessed owner.
    pub fn parse(raw: Option<&str>) -> Result<Self, IdError> {
        raw.map(AccountId::parse).transpose().map(Self)
    }

    /// The stored form: `''` for the platform.
    pub fn from_stored(stored: &str) -> Result<Self, IdError> {
        Self::parse((!stored.is_empty()).then_some(stored))
    }

    /// The stored form: `''` for the platform, else the `acct_…` id.
    pub fn key(&self) -> &str {
        self.id().unwrap_or_default()
    }

    /// The connected account's id (the `Stripe-Account` header), `None` for the platform.
    pub fn id(&self) -> Option<&str> {
        self.0.as_ref().map(AccountId::as_str)
    }

    pub fn is_platform(&self) -> bool {
        self.0.is_none()
    }

    /// The name of the account's row in the shared Stripe budget (the connected
    /// account's own with `STRIPE_RATE_LIMIT_SCOPE=account`, see `stripe::rate_limit`).
    pub fn budget_name(&self) -> String {
        match self.id() {
            None => "stripe".to_owned(),
            Some(id) => format!("stripe:{id}"),
        }
    }
}

/// A stored account as the API and credit events show it: `None` (`null`) for the
/// platform's `''`, else the `acct_…` id.
pub fn shown(stored: &str) -> Option<&str> {
    (!stored.is_empty()).then_some(stored)
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id().unwrap_or("platform"))
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn no_account_is_the_platform_and_is_stored_as_empty() {
        let platform = Account::parse(None).unwrap();
        assert_eq!(platform, Account::PLATFORM);
        assert!(platform.is_platform());
        assert_eq!(platform.key(), "");
        assert_eq!(platform.id(), None);
        assert_eq!(platform.budget_name(), "stripe");
        assert_eq!(Account::from_stored("").unwrap(), Account::PLATFORM);
        assert_eq!(shown(""), None);
        assert_eq!(shown("acct_1X"), Some("acct_1X"));
    }

    #[test]
    fn a_connected_account_keeps_its_id() {
        let a = Account::parse(Some("acct_1Nv0FGQ9RKHgCVdK")).unwrap();
        assert_eq!(a.key(), "acct_1Nv0FGQ9RKHgCVdK");
        assert_eq!(a.id(), Some("acct_1Nv0FGQ9RKHgCVdK"));
        assert_eq!(a.budget_name(), "stripe:acct_1Nv0FGQ9RKHgCVdK");
        assert_eq!(a.to_string(), "acct_1Nv0FGQ9RKHgCVdK");
    }

    #[test]
    fn an_empty_or_malformed_account_is_refused_never_read_as_the_platform() {
        for bad in ["", "acct_", "cus_123", "acct_1 2", "acct_1/../x", "ACCT_1"] {
            assert!(Account::parse(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(Account::from_stored("nonsense").is_err());
    }

    proptest! {
        #[test]
        fn the_stored_form_round_trips(id in "acct_[A-Za-z0-9]{1,40}") {
            let a = Account::parse(Some(&id)).unwrap();
            prop_assert_eq!(Account::from_stored(a.key()).unwrap(), a);
        }
    }
}
