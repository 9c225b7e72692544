//! Liveness and readiness.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::startup::AppState;

/// The process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready to accept webhooks: a confirm channel to the broker is open.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.publisher.is_ready() {
        HttpResponse::Ok().json(json!({"status": "ready", "broker": "up"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "broker": "down"}))
    }
}
