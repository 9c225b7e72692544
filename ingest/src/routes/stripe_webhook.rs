//! `POST /webhooks/stripe`: raw bytes → verify → envelope → publish → `{"received":true}`.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{CONTENT_LENGTH, ContentType, HeaderName},
    web,
};
use futures_util::StreamExt;
use shared::envelope::EventHead;

use crate::{error::WebhookError, metrics::ReasonLabels, signature, startup::AppState};

/// What a 2xx says, always the same bytes (CONTRACT.md).
const RECEIVED: &str = r#"{"received":true}"#;

const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");

pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, WebhookError> {
    let result = handle(&request, payload, &state).await;
    let outcome = match &result {
        Ok(()) => "accepted",
        Err(e) => e.outcome(),
    };
    state.metrics.count_request(outcome);
    match result {
        Ok(()) => Ok(HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(RECEIVED)),
        Err(e) => {
            if let WebhookError::Signature(reason) = &e {
                state
                    .metrics
                    .verification_failures
                    .get_or_create(&ReasonLabels {
                        reason: reason.reason(),
                    })
                    .inc();
            }
            log_rejection(&e);
            Err(e)
        }
    }
}

async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<(), WebhookError> {
    let body = read_body(request, payload, state).await?;
    let header = request
        .headers()
        .get(STRIPE_SIGNATURE)
        .map(|v| v.to_str().unwrap_or(""));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    signature::verify(&body, header, &state.webhook_secrets, now, state.tolerance)?;
    let event = EventHead::parse(&body)?;
    state.publisher.publish(&event, &body).await?;
    // Debug, not info: one line per accepted event is the access log of a service that
    // serves thousands a second, and formatting it was a visible share of each request's
    // CPU. The event stays findable: `RUST_LOG=ingest=debug` shows these lines, the publish
    // span carries event_id when traces are exported, the metrics count every outcome,
    // and fulfill logs each credited session at info. Rejections are still logged at info.
    tracing::debug!(event_id = %event.id, event_type = %event.event_type, "event accepted");
    Ok(())
}

/// Reads the body as bytes, refusing more than the limit (by `Content-Length` at once,
/// else while streaming) and bounding how long a slow client may take.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    state: &AppState,
) -> Result<web::Bytes, WebhookError> {
    let limit = state.body_limit;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(WebhookError::TooLarge { limit });
    }
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(WebhookError::Body)?;
            if body.len() + chunk.len() > limit {
                return Err(WebhookError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(state.body_timeout, read)
        .await
        .map_err(|_| WebhookError::BodyTimeout)?
}

fn log_rejection(error: &WebhookError) {
    match error {
        WebhookError::Publish(cause) => {
            tracing::warn!(error = %error, cause = ?shared::telemetry::error_chain(cause), "event not accepted; answered 503");
        }
        other => tracing::info!(error = %other, "webhook rejected"),
    }
}
