//! The fake's HTTP surface: Stripe's API under `/v1`, the control API under `/_fake`.

use std::{net::TcpListener, sync::Arc};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::Server, http::StatusCode, web};
use serde_json::{Value, json};

use crate::{
    control,
    objects::{error_json, list_json},
    state::{State, Verdict},
};

pub(crate) fn build(listener: TcpListener, state: Arc<State>) -> std::io::Result<Server> {
    let data = web::Data::from(state);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/checkout/sessions", web::get().to(list_sessions))
            .route(
                "/v1/checkout/sessions/{id}",
                web::get().to(retrieve_session),
            )
            .route(
                "/v1/checkout/sessions/{id}/line_items",
                web::get().to(list_line_items),
            )
            .route("/v1/events", web::get().to(list_events))
            .route("/v1/charges/{id}", web::get().to(retrieve_charge))
            .route("/v1/refunds", web::get().to(list_refunds))
            .route("/v1/refunds/{id}", web::get().to(retrieve_refund))
            .route("/v1/disputes", web::get().to(list_disputes))
            .route("/v1/disputes/{id}", web::get().to(retrieve_dispute))
            .configure(control::configure)
    })
    .listen(listener)?
    .disable_signals()
    .workers(2)
    .shutdown_timeout(1)
    .run())
}

/// Decodes a query string into pairs, keeping repeated keys (`expand[]=a&expand[]=b`).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn values<'a>(pairs: &'a [(String, String)], key: &str) -> impl Iterator<Item = &'a str> {
    pairs
        .iter()
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    values(pairs, key).next()
}

fn stripe_error(
    status: StatusCode,
    error_type: &str,
    code: Option<&str>,
    message: &str,
) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.insert_header(("Request-Id", crate::state::random_id("req_", 14)));
    if status.is_server_error() {
        r.insert_header(("Stripe-Should-Retry", "true"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        r.insert_header(("Retry-After", "1"));
    }
    r.json(error_json(error_type, code, message))
}

/// Applies auth, limits, faults and latency. `Err` is the answer to send instead.
async fn gate(state: &State, req: &HttpRequest) -> Result<(), HttpResponse> {
    let auth = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok());
    let (verdict, delay) = state.gate(auth);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match verdict {
        Verdict::Proceed => Ok(()),
        Verdict::Unauthorized => Err(stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided",
        )),
        Verdict::Forbidden => Err(stripe_error(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            Some("secret_key_required"),
            "The provided key does not have the required permissions for this endpoint.",
        )),
        Verdict::RateLimited | Verdict::Inject429 => Err(stripe_error(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            Some("rate_limit"),
            "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
        )),
        Verdict::Inject5xx => {
            let status = if rand::random::<bool>() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Err(stripe_error(
                status,
                "api_error",
                None,
                "An unknown error occurred",
            ))
        }
    }
}

fn not_found(state: &State, kind: &str, id: &str, param: &str) -> HttpResponse {
    state.count(|s| s.not_found += 1);
    let mut body = error_json(
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {kind}: '{id}'"),
    );
    body["error"]["param"] = json!(param);
    HttpResponse::NotFound()
        .insert_header(("Request-Id", crate::state::random_id("req_", 14)))
        .json(body)
}

/// Page size as Stripe takes it: `limit` 1..=100, default 10.
fn limit(pairs: &[(String, String)]) -> Result<usize, Box<HttpResponse>> {
    match value(pairs, "limit") {
        None => Ok(10),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(Box::new(stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_invalid_integer"),
                "Invalid limit: must be an integer between 1 and 100",
            ))),
        },
    }
}

/// One page of `items` after the `starting_after` id.
fn page(items: Vec<Value>, pairs: &[(String, String)], limit: usize) -> (Vec<Value>, bool) {
    let start = match value(pairs, "starting_after") {
        Some(after) => items
            .iter()
            .position(|i| i["id"] == after)
            .map_or(items.len(), |p| p + 1),
        None => 0,
    };
    let rest: Vec<Value> = items.into_iter().skip(start).collect();
    let has_more = rest.len() > limit;
    (rest.into_iter().take(limit).collect(), has_more)
}

async fn retrieve_session(
    req: HttpRequest,
    state: web::Data<State>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(r) = gate(&state, &req).await {
        return r;
    }
    let id = path.into_inner();
    let Some(session) = state.session(&id).filter(|_| visible(&state, &req, &id)) else {
        return not_found(&state, "checkout.session", &id, "session");
    };
    let pairs = query_pairs(req.query_string());
    let expand: Vec<&str> = values(&pairs, "expand[]").collect();
    let mut body = session.to_json();
    if expand.contains(&"line_items") || expand.iter().any(|e| e.starts_with("line_items.")) {
        let expand_product = expand.contains(&"line_items.data.price.product");
        let items: Vec<Value> = session
            .line_items
            .iter()
            .map(|i| state.item_json(i, expand_product))
            .collect();
        // Stripe includes the first 10 line items of an expanded list.
        let (data, has_more) = page(items, &[], 10);
        body["line_items"] = list_json(
            data,
            has_more,
            &format!("/v1/checkout/sessions/{id}/line_items"),
        );
    }
    if expand
        .iter()
        .any(|e| *e == "payment_intent" || e.starts_with("payment_intent."))
    {
        let expand_charge = expand.contains(&"payment_intent.latest_charge");
        body["payment_intent"] = state.payment_intent_json(&session, expand_charge);
    }
    state.count(|s| {
        s.session_fetches += 1;
        *s.fetches_by_session.entry(id.clone()).or_default() += 1;
    });
    HttpResponse::Ok()
        .insert_header(("Request-Id", crate::state::random_id("req_", 14)))
        .json(body)
}

async fn list_line_items(
    req: HttpRequest,
    state: web::Data<State>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(r) = gate(&state, &req).await {
        return r;
    }
    let id = path.into_inner();
    let Some(session) = state.session(&id).filter(|_| visible(&state, &req, &id)) else {
        return not_found(&state, "checkout.session", &id, "session");
    };
    let pairs = query_pairs(req.query_string());
    let limit = match limit(&pairs) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let expand_product = values(&pairs, "expand[]").any(|e| e == "data.price.product");
    let items: Vec<Value> = session
        .line_items
        .iter()
        .map(|i| state.item_json(i, expand_product))
        .collect();
    let (data, has_more) = page(items, &pairs, limit);
    state.count(|s| s.line_item_pages += 1);
    HttpResponse::Ok().json(list_json(
        data,
        has_more,
        &format!("/v1/checkout/sessions/{id}/line_items"),
    ))
}

/// `created[gte]` (and `created` as an exact value) filters.
fn created_at_least(pairs: &[(String, String)]) -> i64 {
    value(pairs, "created[gte]")
        .or_else(|| value(pairs, "created[gt]"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(i64::MIN)
}

/// Newest first, as Stripe lists.
async fn list_sessions(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if let Err(r) = gate(&state, &req).await {
        return r;
    }
    let pairs = query_pairs(req.query_string());
    let limit = match limit(&pairs) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let since = created_at_least(&pairs);
    let status = value(&pairs, "status");
    let payment_intent = value(&pairs, "payment_intent");
    let mut sessions: Vec<Value> = state
        .sessions_in_order()
        .into_iter()
        .filter(|s| s.created >= since && status.is_none_or(|st| s.status == st))
        .filter(|s| payment_intent.is_none_or(|pi| s.payment_intent == pi))
        .filter(|s| s.account == acting_for(&req))
        .map(|s| s.to_json())
        .collect();
    sessions.reverse();
    let (data, has_more) = page(sessions, &pairs, limit);
    state.count(|s| s.other_fetches += 1);
    HttpResponse::Ok().json(list_json(data, has_more, "/v1/checkout/sessions"))
}

/// The connected account a request acts for (`Stripe-Account`), `None` for the platform.
fn acting_for(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("Stripe-Account")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether the request may see the object `id`: it exists and belongs to the account the
/// request acts for (a connected account's objects are invisible to the platform and the
/// other way round, as on Stripe).
fn visible(state: &State, req: &HttpRequest, id: &str) -> bool {
    state
        .owner_of(id)
        .is_some_and(|owner| owner == acting_for(req))
}

/// A plain retrieve: the object `lookup` finds by id, or Stripe's 404 for `kind`.
async fn retrieve(
    req: &HttpRequest,
    state: &State,
    id: &str,
    kind: &str,
    lookup: impl Fn(&State, &str) -> Option<Value>,
) -> HttpResponse {
    if let Err(r) = gate(state, req).await {
        return r;
    }
    match lookup(state, id).filter(|_| visible(state, req, id)) {
        Some(object) => {
            state.count(|s| s.other_fetches += 1);
            HttpResponse::Ok().json(object)
        }
        None => not_found(state, kind, id, kind),
    }
}

async fn retrieve_charge(
    req: HttpRequest,
    state: web::Data<State>,
    path: web::Path<String>,
) -> HttpResponse {
    retrieve(&req, &state, &path, "charge", State::charge_json).await
}

async fn retrieve_dispute(
    req: HttpRequest,
    state: web::Data<State>,
    path: web::Path<String>,
) -> HttpResponse {
    retrieve(&req, &state, &path, "dispute", State::dispute_json).await
}

async fn retrieve_refund(
    req: HttpRequest,
    state: web::Data<State>,
    path: web::Path<String>,
) -> HttpResponse {
    retrieve(&req, &state, &path, "refund", State::refund_json).await
}

/// A list of a charge's objects (`GET {url}?charge=…`), newest first; empty for a charge
/// the request may not see.
async fn list_by_charge(
    req: &HttpRequest,
    state: &State,
    url: &str,
    list: impl Fn(&State, &str) -> Vec<Value>,
) -> HttpResponse {
    if let Err(r) = gate(state, req).await {
        return r;
    }
    let pairs = query_pairs(req.query_string());
    let limit = match limit(&pairs) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let objects = match value(&pairs, "charge") {
        Some(charge) if visible(state, req, charge) => list(state, charge),
        _ => Vec::new(),
    };
    let (data, has_more) = page(objects, &pairs, limit);
    state.count(|s| s.other_fetches += 1);
    HttpResponse::Ok().json(list_json(data, has_more, url))
}

async fn list_disputes(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list_by_charge(&req, &state, "/v1/disputes", State::disputes_json).await
}

async fn list_refunds(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list_by_charge(&req, &state, "/v1/refunds", State::refunds_json).await
}

/// Newest first; `types[]` and `type` filter, `created[gte]` bounds.
async fn list_events(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if let Err(r) = gate(&state, &req).await {
        return r;
    }
    let pairs = query_pairs(req.query_string());
    let limit = match limit(&pairs) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let since = created_at_least(&pairs);
    let types: Vec<&str> = values(&pairs, "types[]")
        .chain(values(&pairs, "type"))
        .collect();
    let mut events: Vec<Value> = state
        .events()
        .into_iter()
        .filter(|e| e["created"].as_i64().unwrap_or(0) >= since)
        .filter(|e| types.is_empty() || types.iter().any(|t| e["type"] == *t))
        .filter(|e| e["account"].as_str().map(str::to_owned) == acting_for(&req))
        .collect();
    events.reverse();
    let (data, has_more) = page(events, &pairs, limit);
    state.count(|s| s.other_fetches += 1);
    HttpResponse::Ok().json(list_json(data, has_more, "/v1/events"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_repeated_bracketed_keys() {
        let pairs =
            query_pairs("expand%5B%5D=line_items&expand[]=line_items.data.price.product&limit=3");
        let expand: Vec<&str> = values(&pairs, "expand[]").collect();
        assert_eq!(expand, ["line_items", "line_items.data.price.product"]);
        assert_eq!(value(&pairs, "limit"), Some("3"));
    }
}
