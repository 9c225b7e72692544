//! `GET /attention[?limit=…]`: sessions an operator should look at — not credited, with
//! the reason (no user, an item without credits…), or flagged after a reversal (a
//! negative balance). After fixing the cause in Stripe, `POST /checkout/sessions/{id}/fulfill`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::Authorized;
use crate::{db::sessions, error::ApiError, http::AppState};

#[derive(Deserialize)]
pub struct Page {
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

pub async fn attention(
    _: Authorized,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    if !(1..=1000).contains(&page.limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let mut conn = state.pool.get().await?;
    let rows = sessions::needing_attention(&mut conn, page.limit).await?;
    Ok(HttpResponse::Ok().json(rows))
}
