//! Refunds of a charge, each with its status.

use serde::Deserialize;

use super::{
    StripeClient, StripeError,
    list::{self, Expandable, HasId},
};
use crate::stripe::charge::PaymentIntentId;

#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    /// `pending`, `requires_action`, `succeeded`, `failed` or `canceled`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub charge: Option<Expandable<super::charge::Charge>>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntentId>>,
}

impl HasId for Refund {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Every refund of a charge.
#[tracing::instrument(name = "stripe.list_refunds", skip_all, fields(charge_id = %charge))]
pub async fn list(client: &StripeClient, charge: &str) -> Result<Vec<Refund>, StripeError> {
    list::collect(client, "refunds.list", "/v1/refunds", &[("charge", charge)]).await
}

#[tracing::instrument(name = "stripe.fetch_refund", skip_all, fields(refund_id = %id))]
pub async fn fetch(client: &StripeClient, id: &str) -> Result<Refund, StripeError> {
    client
        .get("refunds.retrieve", &format!("/v1/refunds/{id}"), &[])
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_refund() {
        let r: Refund =
            serde_json::from_str(include_str!("../../../tests/fixtures/stripe/refund.json"))
                .unwrap();
        assert!(r.id.starts_with("re_"));
    }
}
