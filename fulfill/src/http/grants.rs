//! `POST /users/{user_id}/grants`: credits an operator gives (goodwill, promotions),
//! optionally expiring at `expires_at`.

use actix_web::{HttpResponse, http::StatusCode, web};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{
    Authorized,
    account::{AccountParam, Scope},
    idempotency::{self, IdempotencyKey},
    openapi::ErrorBody,
};
use crate::{
    db::{
        ledger::{self, LotSpec, NewEntry},
        spending,
    },
    error::ApiError,
    http::AppState,
};

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct GrantRequest {
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    /// Why (goodwill, promotion…); required.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
    /// When the granted credits expire (RFC 3339, in the future); never without it.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Grant {
    pub grant_id: String,
    pub user_id: String,
    pub amount: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub credits: i64,
    pub held: i64,
    pub available: i64,
}

#[utoipa::path(
    post,
    path = "/users/{user_id}/grants",
    tag = "spending",
    params(
        ("user_id" = String, Path, description = "The website's user id", pattern = r"^(?=.*\S)[^\u0000-\u001F\u007F-\u009F]{1,500}$"),
        AccountParam,
        ("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters", pattern = "^[!-~]{1,255}$"),
    ),
    request_body = GrantRequest,
    responses(
        (status = 201, description = "Granted", body = Grant,
         headers(("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "Bad body, user id or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]

pub async fn grant(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
    key: IdempotencyKey,
    body: web::Json<GrantRequest>,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    let request = body.into_inner();
    let amount = super::amount(request.amount)?;
    if request.reason.trim().is_empty() {
        return Err(ApiError::BadRequest("reason is required".into()));
    }
    super::check_reason(Some(&request.reason))?;
    if let Some(at) = request.expires_at
        && at <= Utc::now()
    {
        return Err(ApiError::BadRequest(
            "expires_at must be in the future".into(),
        ));
    }
    let fingerprint = idempotency::fingerprint("grant", user.as_str(), &request);
    let mut conn = state.pool.get().await?;
    let conn: &mut AsyncPgConnection = &mut conn;
    let answer = conn
        .transaction(async |conn: &mut AsyncPgConnection| {
            if let Some(replay) = idempotency::begin(conn, &account, &key, &fingerprint).await? {
                return Ok(replay);
            }
            let totals = spending::lock_totals(conn, account.key(), user.as_str()).await?;
            let grant_id = super::new_id("grant");
            let entry_key = format!("grant:{grant_id}");
            let appended = ledger::append_entry(
                conn,
                &NewEntry {
                    account: account.key(),
                    user_id: user.as_str(),
                    delta: amount,
                    reason: "grant",
                    idempotency_key: &entry_key,
                    grant_id: Some(&grant_id),
                    memo: Some(&request.reason),
                    lots: vec![LotSpec {
                        credits: amount,
                        expires_at: request.expires_at,
                    }],
                    ..NewEntry::default()
                },
            )
            .await?
            .ok_or_else(|| ApiError::BadRequest("duplicate grant id; retry".into()))?;
            let body = json!(Grant {
                grant_id,
                user_id: user.as_str().to_owned(),
                amount,
                expires_at: request.expires_at,
                credits: appended.credits_after,
                held: totals.held,
                available: appended.credits_after - totals.held,
            });
            idempotency::finish(conn, &account, &key, StatusCode::CREATED, body).await
        })
        .await?;
    Ok(answer.into_response())
}
