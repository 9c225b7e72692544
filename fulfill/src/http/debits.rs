//! `POST /users/{user_id}/debits`: spend credits now.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, http::StatusCode, web};
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
        ledger::{self, NewEntry},
        spending,
    },
    error::ApiError,
    http::AppState,
};

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DebitRequest {
    /// Credits to spend, a positive whole number.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    /// The website's own words, kept as the entry's `memo`.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
    /// At most 50 keys of up to 40 bytes, values of up to 500 bytes; kept on the entry.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Debit {
    pub debit_id: String,
    pub user_id: String,
    pub amount: i64,
    /// The balance after the debit.
    pub credits: i64,
    pub held: i64,
    pub available: i64,
}

#[utoipa::path(
    post,
    path = "/users/{user_id}/debits",
    tag = "spending",
    params(
        ("user_id" = String, Path, description = "The website's user id", pattern = r"^(?=.*\S)[^\u0000-\u001F\u007F-\u009F]{1,500}$"),
        AccountParam,
        ("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters; the same key and request replay the first answer", pattern = "^[!-~]{1,255}$"),
    ),
    request_body = DebitRequest,
    responses(
        (status = 201, description = "Spent", body = Debit,
         headers(("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "Bad body, user id or Idempotency-Key (`idempotency_key_missing`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "`insufficient_credits`, with `available`; nothing recorded", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused` for another request", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]

pub async fn debit(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
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
            if let Some(replay) = idempotency::begin(conn, &account, &key, &fingerprint).await? {
                return Ok(replay);
            }
            let totals = spending::lock_totals(conn, account.key(), user.as_str()).await?;
            if amount > totals.available() {
                return Err(ApiError::InsufficientCredits {
                    available: totals.available(),
                });
            }
            let debit_id = super::new_id("deb");
            let entry_key = format!("debit:{debit_id}");
            let entry = NewEntry {
                account: account.key(),
                user_id: user.as_str(),
                delta: -amount,
                reason: "debit",
                idempotency_key: &entry_key,
                debit_id: Some(&debit_id),
                memo: request.reason.as_deref(),
                metadata: metadata.as_ref(),
                ..NewEntry::default()
            };
            let written = ledger::write_entry(conn, &entry)
                .await?
                .ok_or_else(|| ApiError::BadRequest("duplicate debit id; retry".into()))?;
            let appended = written.appended;
            let body = json!(Debit {
                debit_id: debit_id.clone(),
                user_id: user.as_str().to_owned(),
                amount,
                credits: appended.credits_after,
                held: totals.held,
                available: appended.credits_after - totals.held,
            });
            // The lots, the credit event and the stored answer in one round trip.
            let shared: &AsyncPgConnection = conn;
            let ((), answer) = futures_util::try_join!(
                async {
                    Ok::<_, ApiError>(ledger::announce(shared, &entry, &written, None).await?)
                },
                idempotency::finish(shared, &account, &key, StatusCode::CREATED, body),
            )?;
            Ok(answer)
        })
        .await?;
    Ok(answer.into_response())
}
