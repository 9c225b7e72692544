//! Liveness and readiness. `/readyz`: everything (broker + database), for compose and
//! anything that wants the whole pod. `/readyz/api`: what the HTTP API needs (the
//! database), so that a pod keeps serving balances, ledgers and the success page while
//! the broker is down; its body still says which dependencies are up.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::http::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    readiness(&state, true).await
}

pub async fn readyz_api(state: web::Data<AppState>) -> HttpResponse {
    readiness(&state, false).await
}

async fn readiness(state: &AppState, needs_broker: bool) -> HttpResponse {
    let broker = state.consumer_connected();
    let database = crate::db::ping(&state.pool).await;
    // Consuming needs the broker and a key Stripe accepts; the API needs the database.
    let stripe = !state.key_rejected();
    let consuming = broker && stripe;
    let ready = database && (consuming || !needs_broker);
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "broker": if broker { "up" } else { "down" },
        "database": if database { "up" } else { "down" },
        "stripe": if stripe { "ok" } else { "key_rejected" },
        "consuming": consuming,
        "serving_api": database,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
