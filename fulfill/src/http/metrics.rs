//! Prometheus scrape endpoint.

use actix_web::{HttpResponse, web};
use shared::telemetry::metrics::{CONTENT_TYPE, render};

use crate::http::AppState;

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(render(&state.metrics.registry))
}
