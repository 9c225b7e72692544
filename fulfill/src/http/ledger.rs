//! `GET /users/{user_id}/ledger[?after=<entry id>&limit=<1..=1000>]`: entries, oldest first.
//!
//! The body stays the contract's JSON list; a full page names the next one in the
//! headers `Next-Cursor: <entry id>` and `Link: <…?after=<id>&limit=<n>>; rel="next"`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::Authorized;
use crate::{db::ledger, error::ApiError, startup::AppState};

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
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    if !(1..=1000).contains(&page.limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let mut conn = state.pool.get().await?;
    let entries = ledger::entries(&mut conn, user.as_str(), page.after, page.limit).await?;
    let mut response = HttpResponse::Ok();
    if let Some(last) = entries.last()
        && i64::try_from(entries.len()).unwrap_or(i64::MAX) == page.limit
    {
        response.insert_header(("Next-Cursor", last.id.to_string()));
        response.insert_header((
            "Link",
            format!(
                "<{}?after={}&limit={}>; rel=\"next\"",
                request.path(),
                last.id,
                page.limit
            ),
        ));
    }
    Ok(response.json(entries))
}
