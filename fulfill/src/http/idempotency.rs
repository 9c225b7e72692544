//! `Idempotency-Key` for the endpoints that create something: the header, the request
//! fingerprint, and the first answer replayed (`Idempotent-Replayed: true`). The key row
//! is written in the request's transaction ([`crate::db::idempotency`]).

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, HttpResponse, dev::Payload, http::StatusCode};
use diesel_async::AsyncPgConnection;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    db::idempotency::{self, Claim},
    domain::account::Account,
    error::ApiError,
};

pub const HEADER: &str = "Idempotency-Key";
pub const REPLAYED: &str = "Idempotent-Replayed";

/// A valid `Idempotency-Key`: 1-255 visible ASCII characters.
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, ApiError> {
        if raw.is_empty() || raw.len() > 255 || !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(ApiError::IdempotencyKeyInvalid);
        }
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromRequest for IdempotencyKey {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.headers().get(HEADER) {
            None => Err(ApiError::IdempotencyKeyMissing),
            Some(v) => Self::parse(v.as_bytes()),
        })
    }
}

/// What identifies a request for its key: the operation, its subject (user) and the
/// parsed body (so formatting and key order of the JSON do not matter).
pub fn fingerprint(operation: &str, subject: &str, request: &impl Serialize) -> String {
    let body = serde_json::to_string(request).unwrap_or_default();
    let mut hash = Sha256::new();
    for part in [operation, subject, &body] {
        hash.update(part.len().to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// An answer, fresh or replayed.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub replayed: bool,
}

impl Answer {
    pub fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            replayed: false,
        }
    }

    pub fn into_response(self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.replayed {
            response.insert_header((REPLAYED, "true"));
        }
        response.json(self.body)
    }
}

/// Claims the key (each account has its own keys) in the caller's transaction: `Some(answer)` replays the first answer;
/// a key used for another request is refused.
pub async fn begin(
    conn: &mut AsyncPgConnection,
    account: &Account,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<Option<Answer>, ApiError> {
    match idempotency::claim(conn, account.key(), key.as_str(), fingerprint).await? {
        Claim::New => Ok(None),
        Claim::Replay { status, response } => Ok(Some(Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body: response,
            replayed: true,
        })),
        Claim::Reused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// Stores the answer under the key (same transaction) and returns it. Takes the
/// connection shared so that it can be pipelined with the transaction's last writes.
pub async fn finish(
    conn: &AsyncPgConnection,
    account: &Account,
    key: &IdempotencyKey,
    status: StatusCode,
    body: Value,
) -> Result<Answer, ApiError> {
    idempotency::complete(conn, account.key(), key.as_str(), status.as_u16(), &body).await?;
    Ok(Answer::new(status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_visible_ascii_keys_of_1_to_255_characters() {
        assert!(IdempotencyKey::parse(b"a").is_ok());
        assert!(IdempotencyKey::parse(&[b'~'; 255]).is_ok());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 256]).is_err());
        assert!(IdempotencyKey::parse(b"has space").is_err());
        assert!(IdempotencyKey::parse("é".as_bytes()).is_err());
    }

    #[test]
    fn fingerprints_differ_by_operation_subject_and_body() {
        let a = fingerprint("debit", "u1", &serde_json::json!({"amount": 1}));
        assert_eq!(
            a,
            fingerprint("debit", "u1", &serde_json::json!({"amount": 1}))
        );
        assert_ne!(
            a,
            fingerprint("hold", "u1", &serde_json::json!({"amount": 1}))
        );
        assert_ne!(
            a,
            fingerprint("debit", "u2", &serde_json::json!({"amount": 1}))
        );
        assert_ne!(
            a,
            fingerprint("debit", "u1", &serde_json::json!({"amount": 2}))
        );
        // No ambiguity from concatenation.
        assert_ne!(fingerprint("ab", "c", &1), fingerprint("a", "bc", &1));
    }
}
