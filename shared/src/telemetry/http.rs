//! The server span of an HTTP request, named and described by the OpenTelemetry HTTP
//! semantic conventions: `{method} {route}`, kind server, `http.request.method`,
//! `http.route`, `url.path`, `url.scheme`, `server.address`, `server.port`,
//! `http.response.status_code`; status ERROR on 5xx only (a 4xx is the client's doing).
//! <https://opentelemetry.io/docs/specs/semconv/http/http-spans/#http-server>
//!
//! No header is recorded (`Stripe-Signature`, `Authorization` stay out of traces), nor the
//! query string. No parent is taken from request headers: these endpoints face the
//! internet (Stripe sends no trace context), and a caller must not choose our trace.
//!
//! Those attributes are set on the exported span only ([`super::set_attributes`]): the
//! tracing span holds what its log lines show (`otel.name`, `trace_id`, `span_id`, and
//! `error.type` on a 5xx), so nothing is formatted for them when traces are off.
//!
//! Wrap an `App` in it with `actix_web::middleware::from_fn(server_span)`.

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
};
use tracing::{Instrument, field::Empty};

use super::KeyValue;

/// Probes and scrapes, every few seconds each: spans for them would bury the requests
/// that matter. They are still counted in logs by nothing and in metrics by the scraper.
const UNTRACED: [&str; 4] = ["/healthz", "/readyz", "/readyz/api", "/metrics"];

pub async fn server_span<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    if UNTRACED.contains(&request.path()) {
        return next.call(request).await;
    }
    let method = request.method().as_str();
    let route = request.match_pattern();
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    // Only what a log line inside the request needs is a tracing field; the semantic
    // conventions' attributes go to the exported span alone (super::set_attributes).
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        error.type = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    super::record_trace_ids(&span);
    super::set_attributes(&span, || {
        let (scheme, host) = {
            let info = request.connection_info();
            (info.scheme().to_owned(), info.host().to_owned())
        };
        let (address, port) = match host.rsplit_once(':') {
            Some((address, port)) if port.parse::<u16>().is_ok() => {
                (address.to_owned(), port.parse::<u16>().ok())
            }
            _ => (host, None),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("url.path", request.path().to_owned()),
            KeyValue::new("url.scheme", scheme),
            KeyValue::new("server.address", address),
        ];
        attributes.extend(route.clone().map(|r| KeyValue::new("http.route", r)));
        attributes.extend(port.map(|p| KeyValue::new("server.port", i64::from(p))));
        attributes
    });
    let result = next.call(request).instrument(span.clone()).await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    super::set_attributes(&span, || {
        [KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        )]
    });
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.as_str());
    }
    result
}
