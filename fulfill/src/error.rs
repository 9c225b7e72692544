//! fulfill's failures: `FulfillError` for processing (with its retry classification) and
//! `ApiError`, the one place where failures become HTTP answers.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde_json::json;

use crate::{db::PoolError, domain::settlement::Failure, stripe::StripeError};

#[derive(Debug, thiserror::Error)]
pub enum FulfillError {
    /// A message that is not something fulfill can ever process (poison).
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("event type {0:?} is not one fulfill handles")]
    UnsupportedEvent(String),
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error("database error")]
    Database(#[from] diesel::result::Error),
    #[error("no database connection")]
    Pool(#[from] PoolError),
    /// Stripe's view does not yet show what the event announced (its reads can lag its
    /// webhooks): retried later, never recorded as done.
    #[error("Stripe does not show what {cue} announced for session {session_id} yet")]
    NotYetVisible { session_id: String, cue: String },
    /// A ledger key already taken under the session lock: a bug, never retried.
    #[error("ledger entry {0} already exists")]
    Conflict(String),
}

impl FulfillError {
    /// Worth trying again later (the retry queue); otherwise dead-lettered at once.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind as Kind, Error as Db};
        match self {
            Self::Malformed(_) | Self::UnsupportedEvent(_) | Self::Conflict(_) => false,
            Self::Stripe(e) => e.is_transient(),
            Self::Pool(_) | Self::NotYetVisible { .. } => true,
            // Constraint violations are bugs no retry will fix; everything else
            // (lost connections, serialization failures, restarts) passes.
            Self::Database(Db::DatabaseError(
                Kind::NotNullViolation | Kind::CheckViolation | Kind::ForeignKeyViolation,
                _,
            )) => false,
            Self::Database(_) => true,
        }
    }

    /// Which kind of failure, for a span's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnsupportedEvent(_) => "unsupported_event",
            Self::Stripe(_) => "stripe",
            Self::Database(_) => "database",
            Self::Pool(_) => "pool",
            Self::NotYetVisible { .. } => "not_yet_visible",
            Self::Conflict(_) => "conflict",
        }
    }

    /// How the delivery that failed with this is settled.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Malformed(_) | Self::UnsupportedEvent(_) => Failure::Poison,
            e if e.is_transient() => Failure::Transient,
            _ => Failure::Permanent,
        }
    }

    /// Marks `span` (declaring `otel.status_code` and `error.type`) as failed by this.
    pub fn record_on(&self, span: &tracing::Span) {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", self.kind());
    }
}

pub use shared::telemetry::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("temporarily unavailable; retry later")]
    Unavailable(#[source] FulfillError),
    #[error("internal error")]
    Internal(#[source] FulfillError),
}

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

impl From<FulfillError> for ApiError {
    fn from(e: FulfillError) -> Self {
        match e {
            FulfillError::Stripe(StripeError::NotFound { message }) => Self::NotFound(message),
            e if e.is_transient() => Self::Unavailable(e),
            e => Self::Internal(e),
        }
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        FulfillError::from(e).into()
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        FulfillError::from(e).into()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Unavailable(cause) | Self::Internal(cause) = self {
            tracing::warn!(error = %error_chain(cause), status = %self.status_code(), "API request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unavailable(cause) => {
                // The budget knows when its next slot is free; anything else: a fixed wait.
                let secs = match cause {
                    FulfillError::Stripe(StripeError::BudgetBusy { retry_after }) => {
                        retry_after.as_secs_f64().ceil().max(1.0) as u64
                    }
                    _ => RETRY_AFTER_SECS,
                };
                response.insert_header(("Retry-After", secs.to_string()));
            }
            Self::Unauthorized => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            _ => {}
        }
        response.json(json!({ "error": self.to_string() }))
    }
}
