//! Liveness and readiness (broker + database).

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::http::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let broker = state.consumer_connected();
    let database = crate::db::ping(&state.pool).await;
    let stripe = !state.key_rejected();
    let ready = broker && database && stripe;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "broker": if broker { "up" } else { "down" },
        "database": if database { "up" } else { "down" },
        "stripe": if stripe { "ok" } else { "key_rejected" },
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
