//! `GET /users/{user_id}/balance`: `credits` (the ledger's sum), `held` (what active holds
//! reserve) and `available` = credits - held.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::Authorized;
use crate::{db::spending, error::ApiError, startup::AppState};

pub async fn balance(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    let mut conn = state.pool.get().await?;
    let totals = spending::totals(&mut conn, user.as_str()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": user.as_str(),
        "credits": totals.credits,
        "held": totals.held,
        "available": totals.available(),
    })))
}
