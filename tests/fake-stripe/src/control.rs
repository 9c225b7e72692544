//! The control API, for processes that drive the fake from outside (trigger tool, e2e,
//! chaos, benchmarks). Not part of Stripe's API; never needs the API key.
//!
//! | request | effect |
//! |---|---|
//! | `POST /_fake/prices` [`PriceSpec`] | creates a price (and its product) → the price object |
//! | `POST /_fake/sessions` [`SessionSpec`] | creates a session → the session object |
//! | `POST /_fake/sessions/{id}` `{"status"?, "payment_status"?}` | changes its state |
//! | `POST /_fake/sessions/{id}/events` `{"type"}` | builds (and records) the webhook event → `{"id","body"}` with `body` the exact pretty-printed bytes as a string |
//! | `POST /_fake/prices/{id}` `{"credits": "10" or null}` | changes `price.metadata.credits` |
//! | `POST /_fake/sessions/{id}/refunds` `{"amount"?}` | refunds (the rest of) its payment → `{"refund","event_id","body"}` (`charge.refunded`) |
//! | `POST /_fake/sessions/{id}/disputes` | opens a dispute → `{"dispute","event_id","body"}` (`charge.dispute.created`) |
//! | `POST /_fake/disputes/{id}/close` `{"status":"won"/"lost"}` | → `{"event_id","body"}` (`charge.dispute.closed`) |
//! | `GET /_fake/events/{id}` | a recorded event → `{"id","type","body"}` (for replays) |
//! | `GET/PUT /_fake/knobs` [`Knobs`] | reads or sets faults and latency |
//! | `GET /_fake/stats`, `DELETE /_fake/stats` | counters [`Stats`], reset |

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::state::{Knobs, PriceSpec, SessionSpec, State};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/_fake/prices", web::post().to(create_price))
        .route("/_fake/prices/{id}", web::post().to(update_price))
        .route("/_fake/sessions", web::post().to(create_session))
        .route("/_fake/sessions/{id}", web::post().to(update_session))
        .route("/_fake/sessions/{id}/events", web::post().to(create_event))
        .route("/_fake/sessions/{id}/refunds", web::post().to(refund))
        .route("/_fake/sessions/{id}/disputes", web::post().to(dispute))
        .route("/_fake/disputes/{id}/close", web::post().to(close_dispute))
        .route("/_fake/disputes/{id}", web::post().to(update_dispute))
        .route("/_fake/refunds/{id}", web::post().to(update_refund))
        .route("/_fake/events/{id}", web::get().to(get_event))
        .route("/_fake/knobs", web::get().to(get_knobs))
        .route("/_fake/knobs", web::put().to(put_knobs))
        .route("/_fake/stats", web::get().to(get_stats))
        .route("/_fake/stats", web::delete().to(reset_stats));
}

async fn create_price(state: web::Data<State>, spec: web::Json<PriceSpec>) -> HttpResponse {
    let id = state.create_price(spec.into_inner());
    HttpResponse::Ok().json(state.price_json(&id, true))
}

#[derive(Deserialize)]
struct PriceUpdate {
    credits: Option<String>,
}

async fn update_price(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<PriceUpdate>,
) -> HttpResponse {
    let id = path.into_inner();
    if state.set_price_credits(&id, body.credits.as_deref()) {
        HttpResponse::Ok().json(state.price_json(&id, true))
    } else {
        HttpResponse::NotFound().json(json!({"error": format!("no price {id}")}))
    }
}

async fn create_session(state: web::Data<State>, spec: web::Json<SessionSpec>) -> HttpResponse {
    match state.create_session(spec.into_inner()) {
        Ok(id) => match state.session(&id) {
            Some(s) => HttpResponse::Ok().json(s.to_json()),
            None => HttpResponse::InternalServerError().finish(),
        },
        Err(message) => HttpResponse::BadRequest().json(json!({"error": message})),
    }
}

#[derive(Deserialize)]
struct SessionUpdate {
    status: Option<String>,
    payment_status: Option<String>,
}

async fn update_session(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<SessionUpdate>,
) -> HttpResponse {
    let id = path.into_inner();
    if state.update_session(&id, body.status.as_deref(), body.payment_status.as_deref()) {
        match state.session(&id) {
            Some(s) => HttpResponse::Ok().json(s.to_json()),
            None => HttpResponse::InternalServerError().finish(),
        }
    } else {
        HttpResponse::NotFound().json(json!({"error": format!("no session {id}")}))
    }
}

#[derive(Deserialize)]
struct EventRequest {
    #[serde(rename = "type")]
    event_type: String,
}

async fn create_event(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<EventRequest>,
) -> HttpResponse {
    let id = path.into_inner();
    match state.event_for_session(&id, &body.event_type) {
        Some((event_id, bytes)) => HttpResponse::Ok().json(json!({
            "id": event_id,
            "body": String::from_utf8_lossy(&bytes),
        })),
        None => HttpResponse::NotFound().json(json!({"error": format!("no session {id}")})),
    }
}

#[derive(Deserialize)]
struct RefundRequest {
    amount: Option<i64>,
    /// The refund's initial status; `succeeded` by default.
    #[serde(default)]
    status: Option<String>,
}

fn event_reply(
    object_key: &str,
    object_id: Option<String>,
    event_id: String,
    body: &[u8],
) -> HttpResponse {
    let mut reply = json!({"event_id": event_id, "body": String::from_utf8_lossy(body)});
    if let Some(id) = object_id {
        reply[object_key] = json!(id);
    }
    HttpResponse::Ok().json(reply)
}

async fn refund(
    state: web::Data<State>,
    path: web::Path<String>,
    body: Option<web::Json<RefundRequest>>,
) -> HttpResponse {
    let (amount, status) = body.map_or((None, None), |b| (b.amount, b.status.clone()));
    let status = status.as_deref().unwrap_or("succeeded");
    match state.refund_session_with(&path.into_inner(), amount, status) {
        Ok((id, event_id, bytes)) => event_reply("refund", Some(id), event_id, &bytes),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": e})),
    }
}

async fn dispute(state: web::Data<State>, path: web::Path<String>) -> HttpResponse {
    match state.dispute_session(&path.into_inner()) {
        Ok((id, event_id, bytes)) => event_reply("dispute", Some(id), event_id, &bytes),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": e})),
    }
}

#[derive(Deserialize)]
struct CloseRequest {
    status: String,
}

async fn close_dispute(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<CloseRequest>,
) -> HttpResponse {
    match state.close_dispute(&path.into_inner(), &body.status) {
        Ok((event_id, bytes)) => event_reply("dispute", None, event_id, &bytes),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": e})),
    }
}

#[derive(Deserialize)]
struct DisputeUpdate {
    status: String,
    /// The event to record; `charge.dispute.updated` by default.
    #[serde(default)]
    event_type: Option<String>,
}

async fn update_dispute(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<DisputeUpdate>,
) -> HttpResponse {
    let event_type = body
        .event_type
        .clone()
        .unwrap_or_else(|| "charge.dispute.updated".to_owned());
    match state.set_dispute_status(&path.into_inner(), &body.status, &event_type) {
        Ok((event_id, bytes)) => event_reply("dispute", None, event_id, &bytes),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": e})),
    }
}

async fn update_refund(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<CloseRequest>,
) -> HttpResponse {
    match state.set_refund_status(&path.into_inner(), &body.status) {
        Ok((event_id, bytes)) => event_reply("refund", None, event_id, &bytes),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": e})),
    }
}

async fn get_event(state: web::Data<State>, path: web::Path<String>) -> HttpResponse {
    let id = path.into_inner();
    match state.event(&id) {
        Some(event) => {
            let body = serde_json::to_vec_pretty(&event).unwrap_or_default();
            HttpResponse::Ok().json(json!({
                "id": id,
                "type": event["type"],
                "body": String::from_utf8_lossy(&body),
            }))
        }
        None => HttpResponse::NotFound().json(json!({"error": format!("no event {id}")})),
    }
}

async fn get_knobs(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(state.knobs())
}

async fn put_knobs(state: web::Data<State>, knobs: web::Json<Knobs>) -> HttpResponse {
    state.set_knobs(knobs.into_inner());
    HttpResponse::Ok().json(state.knobs())
}

async fn get_stats(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

async fn reset_stats(state: web::Data<State>) -> HttpResponse {
    state.reset_stats();
    HttpResponse::NoContent().finish()
}
