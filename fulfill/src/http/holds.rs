//! Holds: `POST /users/{user_id}/holds` reserves credits; `POST /holds/{id}/capture`
//! takes up to the reserved amount (always, before `expires_at`: a hold is a promise) and
//! releases the rest; `POST /holds/{id}/release` gives them back; `GET /holds/{id}`.
//!
//! Lock order, the same everywhere: the hold row, then the balance row.

use actix_web::{HttpResponse, http::StatusCode, web};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{
    Authorized,
    account::{AccountParam, Scope},
    idempotency::{self, Answer, IdempotencyKey},
    openapi::ErrorBody,
};
use crate::{
    db::{
        holds::{self, Hold},
        ledger::{self, NewEntry},
        spending,
    },
    domain::account::Account,
    error::ApiError,
    http::AppState,
};

pub const DEFAULT_TTL_SECS: i64 = 900;
pub const MAX_TTL_SECS: i64 = 604_800;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct HoldRequest {
    #[schema(minimum = 1, maximum = 1000000000000_i64)]
    pub amount: i64,
    /// Seconds until the hold expires by itself (default 900).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub ttl_secs: Option<i64>,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CaptureRequest {
    /// How much of the hold to take (1..amount held); default all. The rest is released.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub amount: Option<i64>,
}

/// `active` until captured or released; `expired` once past `expires_at` unsettled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Active,
    Captured,
    Released,
    Expired,
}

impl HoldStatus {
    fn of(stored: &str, unexpired: bool) -> Self {
        match holds::effective_status(stored, unexpired) {
            "captured" => Self::Captured,
            "released" => Self::Released,
            "expired" => Self::Expired,
            _ => Self::Active,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Captured => "captured",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewHold {
    pub hold_id: String,
    pub user_id: String,
    pub amount: i64,
    pub status: HoldStatus,
    pub expires_at: DateTime<Utc>,
    pub credits: i64,
    pub held: i64,
    pub available: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Captured {
    pub hold_id: String,
    pub status: HoldStatus,
    pub captured: i64,
    pub credits: i64,
    pub held: i64,
    pub available: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    pub hold_id: String,
    /// `released`, or `expired` when the hold had expired first.
    pub status: HoldStatus,
    pub credits: i64,
    pub held: i64,
    pub available: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldView {
    pub hold_id: String,
    pub user_id: String,
    pub amount: i64,
    pub status: HoldStatus,
    pub captured: Option<i64>,
    pub reason: Option<String>,
    pub expires_at: DateTime<Utc>,
}

#[utoipa::path(
    post,
    path = "/users/{user_id}/holds",
    tag = "spending",
    params(
        ("user_id" = String, Path, description = "The website's user id", pattern = r"^(?=.*\S)[^\u0000-\u001F\u007F-\u009F]{1,500}$"),
        AccountParam,
        ("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters", pattern = "^[!-~]{1,255}$"),
    ),
    request_body = HoldRequest,
    responses(
        (status = 201, description = "Reserved", body = NewHold,
         headers(("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "Bad body, user id, account or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "`insufficient_credits`, with `available`", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]

pub async fn create(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
    key: IdempotencyKey,
    body: web::Json<HoldRequest>,
) -> Result<HttpResponse, ApiError> {
    let user = super::user_id(path.into_inner())?;
    let request = body.into_inner();
    let amount = super::amount(request.amount)?;
    let ttl = request.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )));
    }
    super::check_reason(request.reason.as_deref())?;
    let fingerprint = idempotency::fingerprint("hold", user.as_str(), &request);
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
            let hold_id = super::new_id("hold");
            let hold = holds::insert(
                conn,
                &hold_id,
                account.key(),
                user.as_str(),
                amount,
                ttl,
                request.reason.as_deref(),
            )
            .await?;
            let held = totals.held + amount;
            let body = json!(NewHold {
                hold_id: hold.hold_id,
                user_id: hold.user_id,
                amount: hold.amount,
                status: HoldStatus::Active,
                expires_at: hold.expires_at,
                credits: totals.credits,
                held,
                available: totals.credits - held,
            });
            idempotency::finish(conn, &account, &key, StatusCode::CREATED, body).await
        })
        .await?;
    Ok(answer.into_response())
}

#[utoipa::path(
    post,
    path = "/holds/{hold_id}/capture",
    tag = "spending",
    params(("hold_id" = String, Path), AccountParam),
    request_body(content = Option<CaptureRequest>, description = "Optional; empty takes the whole hold"),
    responses(
        (status = 200, description = "Captured (again: the same answer, nothing more taken)", body = Captured),
        (status = 400, description = "Bad body, amount or account", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`hold_not_active`, with `status` (released, expired)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn capture(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let hold_id = path.into_inner();
    // No body, or `null`, takes the whole hold.
    let request: CaptureRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CaptureRequest::default()
    } else {
        serde_json::from_slice::<Option<CaptureRequest>>(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
            .unwrap_or_default()
    };
    let mut conn = state.pool.get().await?;
    let conn: &mut AsyncPgConnection = &mut conn;
    let answer = conn
        .transaction(async |conn: &mut AsyncPgConnection| {
            let (hold, unexpired) = locked(conn, &account, &hold_id).await?;
            match HoldStatus::of(&hold.status, unexpired) {
                HoldStatus::Captured => return Ok(settled(&hold)),
                HoldStatus::Active => {}
                other => {
                    return Err(ApiError::HoldNotActive {
                        status: other.as_str().to_owned(),
                    });
                }
            }
            let take = request.amount.unwrap_or(hold.amount);
            if !(1..=hold.amount).contains(&take) {
                return Err(ApiError::BadRequest(format!(
                    "amount must be between 1 and the held {}",
                    hold.amount
                )));
            }
            let entry_key = format!("capture:{}", hold.hold_id);
            let appended = ledger::append_entry(
                conn,
                &NewEntry {
                    account: &hold.account,
                    user_id: &hold.user_id,
                    delta: -take,
                    reason: "debit",
                    idempotency_key: &entry_key,
                    hold_id: Some(&hold.hold_id),
                    memo: hold.reason.as_deref(),
                    ..NewEntry::default()
                },
            )
            .await?;
            let credits = match appended {
                Some(a) => a.credits_after,
                None => {
                    spending::totals(conn, &hold.account, &hold.user_id)
                        .await?
                        .credits
                }
            };
            // This hold still counts in `held` until it is settled below.
            let held = spending::held(conn, &hold.account, &hold.user_id).await? - hold.amount;
            let body = json!(Captured {
                hold_id: hold.hold_id.clone(),
                status: HoldStatus::Captured,
                captured: take,
                credits,
                held,
                available: credits - held,
            });
            holds::settle(conn, &hold.hold_id, "captured", Some(take), &body).await?;
            Ok(Answer::new(StatusCode::OK, body))
        })
        .await?;
    Ok(answer.into_response())
}

#[utoipa::path(
    post,
    path = "/holds/{hold_id}/release",
    tag = "spending",
    params(("hold_id" = String, Path), AccountParam),
    responses(
        (status = 200, description = "Released, or already expired (again: the same answer)", body = Released),
        (status = 400, description = "Not a usable account", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`hold_not_active` (captured), with `status`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn release(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
) -> Result<HttpResponse, ApiError> {
    let hold_id = path.into_inner();
    let mut conn = state.pool.get().await?;
    let conn: &mut AsyncPgConnection = &mut conn;
    let answer = conn
        .transaction(async |conn: &mut AsyncPgConnection| {
            let (hold, unexpired) = locked(conn, &account, &hold_id).await?;
            let status = HoldStatus::of(&hold.status, unexpired);
            match status {
                HoldStatus::Released => return Ok(settled(&hold)),
                HoldStatus::Captured => {
                    return Err(ApiError::HoldNotActive {
                        status: status.as_str().to_owned(),
                    });
                }
                HoldStatus::Active | HoldStatus::Expired => {}
            }
            let mut totals = spending::totals(conn, &hold.account, &hold.user_id).await?;
            if status == HoldStatus::Active {
                // Still counted until it is settled below.
                totals.held -= hold.amount;
            }
            let body = json!(Released {
                hold_id: hold.hold_id.clone(),
                status: if status == HoldStatus::Active {
                    HoldStatus::Released
                } else {
                    HoldStatus::Expired
                },
                credits: totals.credits,
                held: totals.held,
                available: totals.available(),
            });
            if status == HoldStatus::Active {
                holds::settle(conn, &hold.hold_id, "released", None, &body).await?;
            }
            Ok(Answer::new(StatusCode::OK, body))
        })
        .await?;
    Ok(answer.into_response())
}

#[utoipa::path(
    get,
    path = "/holds/{hold_id}",
    tag = "spending",
    params(("hold_id" = String, Path), AccountParam),
    responses(
        (status = 200, description = "The hold", body = HoldView),
        (status = 400, description = "Not a usable account", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn show(
    _: Authorized,
    state: web::Data<AppState>,
    path: web::Path<String>,
    Scope(account): Scope,
) -> Result<HttpResponse, ApiError> {
    let hold_id = path.into_inner();
    let mut conn = state.pool.get().await?;
    let (hold, unexpired) = holds::find(&mut conn, &hold_id)
        .await?
        .filter(|(hold, _)| hold.account == account.key())
        .ok_or_else(|| not_found(&hold_id))?;
    Ok(HttpResponse::Ok().json(HoldView {
        status: HoldStatus::of(&hold.status, unexpired),
        hold_id: hold.hold_id,
        user_id: hold.user_id,
        amount: hold.amount,
        captured: hold.captured,
        reason: hold.reason,
        expires_at: hold.expires_at,
    }))
}

fn not_found(hold_id: &str) -> ApiError {
    ApiError::NotFound(format!("no hold {hold_id:?}"))
}

/// The hold, locked, if it is `account`'s (another account's hold is not found).
async fn locked(
    conn: &mut AsyncPgConnection,
    account: &Account,
    hold_id: &str,
) -> Result<(Hold, bool), ApiError> {
    holds::lock(conn, hold_id)
        .await?
        .filter(|(hold, _)| hold.account == account.key())
        .ok_or_else(|| not_found(hold_id))
}

/// The answer a settled hold gave the first time.
fn settled(hold: &Hold) -> Answer {
    Answer::new(StatusCode::OK, hold.settled.clone().unwrap_or(Value::Null))
}
