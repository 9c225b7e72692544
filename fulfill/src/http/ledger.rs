//! `GET /users/{user_id}/ledger[?after=<entry id>&limit=<1..=1000>]`: entries, oldest first.
//!
//! The body stays the contract's JSON list; a full page names the next one in the
//! headers `Next-Cursor: <entry id>` and `Link: <…?after=<id>&limit=<n>>; rel="next"`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    Authorized,
    account::{AccountParam, Scope},
    openapi::ErrorBody,
};
use crate::{db::ledger, error::ApiError, http::AppState};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// The cursor: entries after this entry id (the `Next-Cursor` of the previous page).
    #[serde(default)]
    #[param(minimum = 0)]
    after: i64,
    /// Entries per page, 1 to 1000 (default 100).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

#[utoipa::path(
    get,
    path = "/users/{user_id}/ledger",
    tag = "spending",
    params(("user_id" = String, Path, description = "The website's user id", pattern = r"^(?=.*\S)[^\u0000-\u001F\u007F-\u009F]{1,500}$"), Page, AccountParam),
    responses(
        (status = 200, description = "Entries, oldest first", body = Vec<ledger::Entry>,
         headers(
             ("Next-Cursor" = String, description = "Present on a full page: pass as `after`"),
             ("Link" = String, description = "The next page, `rel=\"next\"`"),
         )),
        (status = 400, description = "Bad user id or query string", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn ledger(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    page: web::Query<Page>,
    scope: Scope,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    if page.after < 0 {
        return Err(ApiError::BadRequest("after must not be negative".into()));
    }
    if !(1..=1000).contains(&page.limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let mut conn = state.pool.get().await?;
    let entries = ledger::entries(
        &mut conn,
        scope.0.key(),
        user.as_str(),
        page.after,
        page.limit,
    )
    .await?;
    let mut response = HttpResponse::Ok();
    if let Some(last) = entries.last()
        && i64::try_from(entries.len()).unwrap_or(i64::MAX) == page.limit
    {
        response.insert_header(("Next-Cursor", last.id.to_string()));
        response.insert_header((
            "Link",
            format!(
                "<{}?after={}&limit={}{}>; rel=\"next\"",
                request.path(),
                last.id,
                page.limit,
                scope.query_suffix()
            ),
        ));
    }
    Ok(response.json(entries))
}
