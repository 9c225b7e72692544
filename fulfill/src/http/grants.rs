//! `POST /users/{user_id}/grants`: credits an operator gives (goodwill, promotions),
//! optionally expiring at `expires_at`.

use actix_web::{HttpResponse, http::StatusCode, web};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Authorized,
    idempotency::{self, IdempotencyKey},
};
use crate::{
    db::{
        ledger::{self, LotSpec, NewEntry},
        spending,
    },
    error::ApiError,
    startup::AppState,
};

#[derive(Debug, Deserialize, Serialize)]
pub struct GrantRequest {
    pub amount: i64,
    pub reason: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn grant(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
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
            if let Some(replay) = idempotency::begin(conn, &key, &fingerprint).await? {
                return Ok(replay);
            }
            let totals = spending::lock_totals(conn, user.as_str()).await?;
            let grant_id = super::new_id("grant");
            let entry_key = format!("grant:{grant_id}");
            let appended = ledger::append_entry(
                conn,
                &NewEntry {
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
            let body = json!({
                "grant_id": grant_id,
                "user_id": user.as_str(),
                "amount": amount,
                "expires_at": request.expires_at.map(super::rfc3339),
                "credits": appended.credits_after,
                "held": totals.held,
                "available": appended.credits_after - totals.held,
            });
            idempotency::finish(conn, &key, StatusCode::CREATED, body).await
        })
        .await?;
    Ok(answer.into_response())
}
