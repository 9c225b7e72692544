//! `GET /users/{user_id}/balance`: `credits` (the ledger's sum), `held` (what active holds
//! reserve) and `available` = credits - held.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    Authorized,
    account::{AccountParam, Scope},
    openapi::ErrorBody,
};
use crate::{db::spending, error::ApiError, http::AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct Balance {
    pub user_id: String,
    /// The ledger's sum (may be negative after a reversal of spent credits).
    pub credits: i64,
    /// What active holds reserve.
    pub held: i64,
    /// `credits - held`: what a debit or hold may take.
    pub available: i64,
}

#[utoipa::path(
    get,
    path = "/users/{user_id}/balance",
    tag = "spending",
    params(("user_id" = String, Path, description = "The website's user id", pattern = r"^(?=.*\S)[^\u0000-\u001F\u007F-\u009F]{1,500}$"), AccountParam),
    responses(
        (status = 200, description = "The balance (0 for a user never credited)", body = Balance),
        (status = 400, description = "Not a usable user id or account", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]

pub async fn balance(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    let mut conn = state.pool.get().await?;
    let totals = spending::totals(&mut conn, account.key(), user.as_str()).await?;
    Ok(HttpResponse::Ok().json(Balance {
        user_id: user.as_str().to_owned(),
        credits: totals.credits,
        held: totals.held,
        available: totals.available(),
    }))
}
