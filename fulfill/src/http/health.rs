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
    let body = json!({
        "status": if broker && database { "ready" } else { "not_ready" },
        "broker": if broker { "up" } else { "down" },
        "database": if database { "up" } else { "down" },
    });
    if broker && database {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
