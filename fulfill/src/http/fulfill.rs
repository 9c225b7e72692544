//! `POST /checkout/sessions/{id}/fulfill`: the success-page path. Runs the same
//! idempotent fulfillment as the webhook path, synchronously; safe to race with it.
//! `GET /checkout/sessions/{id}`: what fulfill has recorded, without asking Stripe.
//! Both take `?account=acct_…` for a connected account's session.

use actix_web::{HttpResponse, web};
use shared::ids::CheckoutSessionId;

use super::{Authorized, account::Scope};
use crate::{error::ApiError, http::AppState};

/// How long the success page may wait for a Stripe budget slot before answering 503.
pub const SUCCESS_PAGE_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn session_id(raw: String) -> Result<CheckoutSessionId, ApiError> {
    CheckoutSessionId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub async fn fulfill(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(path.into_inner())?;
    // A customer waits at most this for budget; beyond it, 503 with Retry-After.
    let fulfiller = std::sync::Arc::clone(&state.fulfiller);
    let result = state
        .on_main_runtime(async move {
            fulfiller
                .fulfill_session_within(&account, &id, SUCCESS_PAGE_MAX_WAIT)
                .await
        })
        .await?;
    Ok(HttpResponse::Ok().json(result))
}

pub async fn state(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(path.into_inner())?;
    match state.fulfiller.recorded_state(&account, &id).await? {
        Some(s) => Ok(HttpResponse::Ok().json(s)),
        None => Err(ApiError::NotFound(format!("no record of session {id}"))),
    }
}
