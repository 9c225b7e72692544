//! The JSON error answers of routing and extraction: 404 for unknown routes, 405 for a
//! known path with the wrong method, 400 for a bad path, query string or body (actix
//! answers those in plain text unless told otherwise).

use actix_web::{HttpRequest, HttpResponse, ResponseError, error::Error as ActixError, web};

use crate::error::ApiError;

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::NotFound(format!("no route {} {}", req.method(), req.path())).error_response()
}

/// 405 with `Allow` naming the method the path does answer (RFC 9110 §15.5.6).
pub async fn method_not_allowed(allow: String) -> HttpResponse {
    let mut response = ApiError::MethodNotAllowed.error_response();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    response
}

fn bad_request(what: &str, cause: &dyn std::fmt::Display) -> ActixError {
    ApiError::BadRequest(format!("invalid {what}: {cause}")).into()
}

/// Registers the error handlers of the JSON, query and path extractors.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .content_type_required(false)
            .limit(64 * 1024)
            .error_handler(|e, _| bad_request("JSON body", &e)),
    )
    .app_data(web::QueryConfig::default().error_handler(|e, _| bad_request("query string", &e)))
    .app_data(web::PathConfig::default().error_handler(|e, _| bad_request("path", &e)));
}
