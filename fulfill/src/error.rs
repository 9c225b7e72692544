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
    /// An object of the other Stripe mode (a live session for a test key, or the reverse).
    #[error("{object} belongs to Stripe's {livemode} mode, this deployment to the other", livemode = if *livemode { "live" } else { "test" })]
    WrongMode { object: String, livemode: bool },
    /// A session recorded for one account (or the platform) named by another: money is
    /// never moved for a guessed owner.
    #[error("session {session_id} belongs to {recorded}, not to {asked}")]
    OtherAccount {
        session_id: String,
        recorded: String,
        asked: String,
    },
    /// A ledger key already taken under the session lock: a bug, never retried.
    #[error("ledger entry {0} already exists")]
    Conflict(String),
    /// The process is shutting down and dropped the work before it ended.
    #[error("shutting down")]
    ShuttingDown,
}

impl FulfillError {
    /// Worth trying again later (the retry queue); otherwise dead-lettered at once.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind as Kind, Error as Db};
        match self {
            Self::Malformed(_)
            | Self::UnsupportedEvent(_)
            | Self::Conflict(_)
            | Self::OtherAccount { .. }
            | Self::WrongMode { .. } => false,
            Self::Stripe(e) => e.is_transient(),
            Self::Pool(_) | Self::NotYetVisible { .. } | Self::ShuttingDown => true,
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
            Self::WrongMode { .. } => "wrong_mode",
            Self::OtherAccount { .. } => "other_account",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// How the delivery that failed with this is settled.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Malformed(_) | Self::UnsupportedEvent(_) => Failure::Poison,
            Self::Stripe(e) if e.is_key_rejected() => Failure::KeyRejected,
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

/// Every failure of fulfill's API, each with its HTTP status and machine `code`; the body
/// is `{"error": "<for people>", "code": "<for machines>"}` plus the fields a variant names.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The object belongs to the other Stripe mode.
    #[error("{0}")]
    WrongMode(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the Idempotency-Key header is required")]
    IdempotencyKeyMissing,
    #[error("the Idempotency-Key header must be 1-255 visible ASCII characters")]
    IdempotencyKeyInvalid,
    #[error("this Idempotency-Key was used for another request")]
    IdempotencyKeyReused,
    #[error("not enough credits available ({available})")]
    InsufficientCredits { available: i64 },
    #[error("the hold is {status}")]
    HoldNotActive { status: String },
    #[error("temporarily unavailable; retry later")]
    Unavailable(#[source] FulfillError),
    #[error("internal error")]
    Internal(#[source] FulfillError),
}

impl ApiError {
    /// The machine-readable `code` of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::BadRequest(_) => "bad_request",
            Self::NotFound(_) => "not_found",
            Self::WrongMode(_) => "wrong_mode",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::IdempotencyKeyMissing => "idempotency_key_missing",
            Self::IdempotencyKeyInvalid => "idempotency_key_invalid",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::InsufficientCredits { .. } => "insufficient_credits",
            Self::HoldNotActive { .. } => "hold_not_active",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The error body.
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({ "error": self.to_string(), "code": self.code() });
        match self {
            Self::InsufficientCredits { available } => body["available"] = json!(available),
            Self::HoldNotActive { status } => body["status"] = json!(status),
            _ => {}
        }
        body
    }
}

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

impl From<FulfillError> for ApiError {
    fn from(e: FulfillError) -> Self {
        match e {
            FulfillError::Stripe(StripeError::NotFound { message }) => Self::NotFound(message),
            e @ FulfillError::WrongMode { .. } => Self::WrongMode(e.to_string()),
            // Another account's session does not exist for the caller.
            FulfillError::OtherAccount { session_id, .. } => {
                Self::NotFound(format!("no session {session_id} for this account"))
            }
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
            Self::BadRequest(_) | Self::IdempotencyKeyMissing | Self::IdempotencyKeyInvalid => {
                StatusCode::BAD_REQUEST
            }
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::WrongMode(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InsufficientCredits { .. } | Self::HoldNotActive { .. } => StatusCode::CONFLICT,
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
        response.json(self.body())
    }
}
