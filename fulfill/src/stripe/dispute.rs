//! Disputes of a charge, each with its status.

use serde::Deserialize;

use super::{
    StripeClient, StripeError,
    charge::PaymentIntentId,
    list::{self, Expandable, HasId},
};

#[derive(Debug, Clone, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub charge: Expandable<super::charge::Charge>,
    /// `warning_needs_response`, `warning_under_review`, `warning_closed`,
    /// `needs_response`, `under_review`, `won`, `lost`, `prevented`.
    pub status: String,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntentId>>,
}

impl HasId for Dispute {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Every dispute of a charge.
#[tracing::instrument(name = "stripe.list_disputes", skip_all, fields(charge_id = %charge))]
pub async fn list(client: &StripeClient, charge: &str) -> Result<Vec<Dispute>, StripeError> {
    list::collect(
        client,
        "disputes.list",
        "/v1/disputes",
        &[("charge", charge)],
    )
    .await
}

#[tracing::instrument(name = "stripe.fetch_dispute", skip_all, fields(dispute_id = %id))]
pub async fn fetch(client: &StripeClient, id: &str) -> Result<Dispute, StripeError> {
    client
        .get("disputes.retrieve", &format!("/v1/disputes/{id}"), &[])
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_dispute() {
        let d: Dispute =
            serde_json::from_str(include_str!("../../../tests/fixtures/stripe/dispute.json"))
                .unwrap();
        assert_eq!(d.charge.id(), "ch_1PgafuB7WZ01zgkWXYmPNZs8");
    }
}
