//! `POST /users/{user_id}/debits`: spend credits now.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, http::StatusCode, web};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Authorized,
    idempotency::{self, IdempotencyKey},
};
use crate::{
    db::{
        ledger::{self, NewEntry},
        spending,
    },
    error::ApiError,
    startup::AppState,
};

#[derive(Debug, Deserialize, Serialize)]
pub struct DebitRequest {
    pub amount: i64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

pub async fn debit(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    key: IdempotencyKey,
    body: web::Json<DebitRequest>,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    let request = body.into_inner();
    let amount = super::amount(request.amount)?;
    super::check_reason(request.reason.as_deref())?;
    super::check_metadata(request.metadata.as_ref())?;
    let fingerprint = idempotency::fingerprint("debit", user.as_str(), &request);
    let metadata = request.metadata.as_ref().map(|m| json!(m));
    let mut conn = state.pool.get().await?;
    let conn: &mut AsyncPgConnection = &mut conn;
    let answer = conn
        .transaction(async |conn: &mut AsyncPgConnection| {
            if let Some(replay) = idempotency::begin(conn, &key, &fingerprint).await? {
                return Ok(replay);
            }
            let totals = spending::lock_totals(conn, user.as_str()).await?;
            if amount > totals.available() {
                return Err(ApiError::InsufficientCredits {
                    available: totals.available(),
                });
            }
            let debit_id = super::new_id("deb");
            let entry_key = format!("debit:{debit_id}");
            let appended = ledger::append_entry(
                conn,
                &NewEntry {
                    user_id: user.as_str(),
                    delta: -amount,
                    reason: "debit",
                    idempotency_key: &entry_key,
                    debit_id: Some(&debit_id),
                    memo: request.reason.as_deref(),
                    metadata: metadata.as_ref(),
                    ..NewEntry::default()
                },
            )
            .await?
            .ok_or_else(|| ApiError::BadRequest("duplicate debit id; retry".into()))?;
            let body = json!({
                "debit_id": debit_id,
                "user_id": user.as_str(),
                "amount": amount,
                "credits": appended.credits_after,
                "held": totals.held,
                "available": appended.credits_after - totals.held,
            });
            idempotency::finish(conn, &key, StatusCode::CREATED, body).await
        })
        .await?;
    Ok(answer.into_response())
}
