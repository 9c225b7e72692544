//! `GET /users/{user_id}/balance`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::Authorized;
use crate::{db::ledger, error::ApiError, http::AppState};

pub async fn balance(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    let mut conn = state.pool.get().await?;
    let credits = ledger::balance(&mut conn, user.as_str()).await?;
    Ok(HttpResponse::Ok().json(json!({"user_id": user.as_str(), "credits": credits})))
}
