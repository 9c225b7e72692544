//! The one place where ingest's failures become HTTP answers.
//!
//! 4xx tell Stripe (and whoever else is calling) what was wrong with the request; Stripe
//! does not retry them. 503 carries `Retry-After` and says nothing internal; the log line
//! carries the cause chain.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;
use shared::envelope::EnvelopeError;

use crate::{publisher::PublishError, signature::SignatureError};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body was not received in time")]
    BodyTimeout,
    #[error("request body could not be read")]
    Body(#[source] actix_web::error::PayloadError),
    #[error("event could not be handed to the broker")]
    Publish(#[from] PublishError),
}

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 10;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl WebhookError {
    /// A short label for the requests metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Signature(_) => "bad_signature",
            Self::Envelope(_) => "bad_payload",
            Self::TooLarge { .. } => "too_large",
            Self::BodyTimeout => "body_timeout",
            Self::Body(_) => "bad_body",
            Self::Publish(_) => "unavailable",
        }
    }
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Signature(_) | Self::Envelope(_) | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Publish(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = match self {
            // Nothing internal in 5xx bodies.
            Self::Publish(_) => "temporarily unable to accept events; retry later".to_owned(),
            other => other.to_string(),
        };
        let mut response = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header(("Retry-After", RETRY_AFTER_SECS.to_string()));
        }
        response.json(ErrorBody { error: &message })
    }
}
