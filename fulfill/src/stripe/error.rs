//! What can go wrong talking to Stripe, and which of it is worth retrying.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with an error status.
    #[error("Stripe answered {status}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
        /// 429, 5xx, or `Stripe-Should-Retry: true`.
        retryable: bool,
        retry_after: Option<Duration>,
    },
    /// 404: the object does not exist (in this account and mode).
    #[error("Stripe has no such object: {message}")]
    NotFound { message: String },
    /// Connection refused or reset, timeout, TLS failure…
    #[error("request to Stripe failed")]
    Transport(#[source] reqwest::Error),
    /// A 2xx body that does not have the shape we rely on.
    #[error("Stripe's answer could not be read")]
    Decode(#[source] serde_json::Error),
    /// The shared rate budget (in PostgreSQL) could not be read.
    #[error("the Stripe rate budget is unavailable: {0}")]
    Budget(String),
    /// The next free slot of the budget is further away than the caller may wait (the
    /// success page): nothing was taken; try again after `retry_after`.
    #[error("the Stripe rate budget is taken for the next {retry_after:?}")]
    BudgetBusy { retry_after: Duration },
    /// A list that claims more pages but returns none, or never ends.
    #[error("Stripe list paging is inconsistent: {0}")]
    Paging(String),
}

impl StripeError {
    /// Worth trying again later: rate limits, Stripe's 5xx, network trouble.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { retryable, .. } => *retryable,
            Self::Transport(_) | Self::Budget(_) | Self::BudgetBusy { .. } => true,
            Self::NotFound { .. } | Self::Decode(_) | Self::Paging(_) => false,
        }
    }

    /// 401 (key revoked or rolled) or 403 (restricted key lacking a permission). Not
    /// `account_invalid`: a connected account that revoked the platform's access (or
    /// never granted it) is that account's fault, not the key's, and must not stop the
    /// whole stream.
    pub fn is_key_rejected(&self) -> bool {
        matches!(
            self,
            Self::Api {
                status: 401 | 403,
                code,
                ..
            } if code.as_deref() != Some("account_invalid")
        )
    }

    /// The wait Stripe asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            Self::BudgetBusy { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// A short label for metrics.
    pub fn status_label(&self) -> String {
        match self {
            Self::Api { status, .. } => status.to_string(),
            Self::NotFound { .. } => "404".to_owned(),
            Self::Transport(e) if e.is_timeout() => "timeout".to_owned(),
            Self::Transport(_) => "transport".to_owned(),
            Self::Decode(_) => "decode".to_owned(),
            Self::Paging(_) => "paging".to_owned(),
            Self::Budget(_) => "budget".to_owned(),
            Self::BudgetBusy { .. } => "budget_busy".to_owned(),
        }
    }
}
