//! Counts and times every request of fulfill's HTTP API by method, route pattern (never
//! the raw path: user and session ids would make a series each) and status.
//!
//! Wrap the `App` in it with `actix_web::middleware::from_fn(request_metrics::record)`.

use std::time::Instant;

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};

use crate::{http::AppState, metrics::RouteLabels};

pub async fn record<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let result = next.call(request).await;
    if let Some(state) = state {
        let status = match &result {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        let labels = RouteLabels {
            method,
            route,
            status: status.as_u16(),
        };
        state
            .metrics
            .api_request_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        state.metrics.api_requests.get_or_create(&labels).inc();
    }
    result
}
