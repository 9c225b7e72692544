//! `GET /users/{user_id}/ledger[?after=<entry id>&limit=<1..=1000>]`: entries, oldest first.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::Authorized;
use crate::{db::ledger, error::ApiError, http::AppState};

#[derive(Deserialize)]
pub struct Page {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

pub async fn ledger(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    if !(1..=1000).contains(&page.limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let mut conn = state.pool.get().await?;
    let entries = ledger::entries(&mut conn, user.as_str(), page.after, page.limit).await?;
    Ok(HttpResponse::Ok().json(entries))
}
