//! `?account=acct_…`: whose users an endpoint speaks of (Stripe Connect). Without it, the
//! platform's own users; an empty or malformed value is a 400, never read as the platform.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{domain::account::Account, error::ApiError};

/// The query parameter, as the OpenAPI document describes it.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountParam {
    /// The Stripe Connect account whose users these are (`acct_…`); absent: the
    /// platform's own users.
    #[param(pattern = "^acct_[A-Za-z0-9_]{1,250}$")]
    #[allow(dead_code)]
    account: Option<String>,
}

/// The account a request is scoped to.
pub struct Scope(pub Account);

impl Scope {
    /// `?account=…` appended to a link (empty for the platform).
    pub fn query_suffix(&self) -> String {
        self.0
            .id()
            .map(|id| format!("&account={id}"))
            .unwrap_or_default()
    }
}

impl FromRequest for Scope {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        #[derive(Deserialize)]
        struct Raw {
            account: Option<String>,
        }
        ready(
            web::Query::<Raw>::from_query(req.query_string())
                .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
                .and_then(|q| {
                    Account::parse(q.account.as_deref())
                        .map(Scope)
                        .map_err(|e| ApiError::BadRequest(format!("account: {e}")))
                }),
        )
    }
}
