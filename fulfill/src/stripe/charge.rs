//! Charges and their refunds: what a `charge.refunded` event points at.

use serde::Deserialize;

use super::{
    StripeClient, StripeError,
    checkout_session::{Expandable, List, PaymentIntentRef},
    paging,
};

#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub amount_refunded: i64,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntentRef>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub created: i64,
    /// `pending`, `requires_action`, `succeeded`, `failed` or `canceled`.
    #[serde(default)]
    pub status: Option<String>,
}

impl Refund {
    /// Money that is (or is on its way) back to the customer.
    pub fn counts(&self) -> bool {
        matches!(
            self.status.as_deref(),
            Some("succeeded" | "pending" | "requires_action") | None
        )
    }
}

#[tracing::instrument(name = "stripe.fetch_charge", skip_all, fields(charge_id = %id))]
pub async fn fetch(client: &StripeClient, id: &str) -> Result<Charge, StripeError> {
    client
        .get("charges.retrieve", &format!("/v1/charges/{id}"), &[])
        .await
}

/// Every refund of a charge, oldest first (ties broken by id, so every process agrees).
#[tracing::instrument(name = "stripe.list_refunds", skip_all, fields(charge_id = %charge))]
pub async fn refunds(client: &StripeClient, charge: &str) -> Result<Vec<Refund>, StripeError> {
    let mut all: Vec<Refund> =
        paging::collect(client, "refunds.list", "/v1/refunds", &[("charge", charge)]).await?;
    all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(all)
}

#[derive(Debug, Clone, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub charge: Expandable<ChargeRef>,
    /// `warning_needs_response`, `warning_under_review`, `warning_closed`,
    /// `needs_response`, `under_review`, `won`, `lost`, `prevented`.
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChargeRef {
    pub id: String,
}

impl super::checkout_session::HasId for ChargeRef {
    fn id(&self) -> &str {
        &self.id
    }
}

#[tracing::instrument(name = "stripe.fetch_dispute", skip_all, fields(dispute_id = %id))]
pub async fn fetch_dispute(client: &StripeClient, id: &str) -> Result<Dispute, StripeError> {
    client
        .get("disputes.retrieve", &format!("/v1/disputes/{id}"), &[])
        .await
}

/// The Checkout Session paid by `payment_intent`, if any.
pub async fn session_for_payment_intent(
    client: &StripeClient,
    payment_intent: &str,
) -> Result<Option<String>, StripeError> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    let page: List<Id> = client
        .get(
            "checkout_sessions.list",
            "/v1/checkout/sessions",
            &[("payment_intent", payment_intent), ("limit", "1")],
        )
        .await?;
    Ok(page.data.into_iter().next().map(|s| s.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_charge_refund_and_dispute() {
        let c: Charge =
            serde_json::from_str(include_str!("../../../tests/fixtures/stripe/charge.json"))
                .unwrap();
        assert_eq!(c.amount, 100);
        let r: Refund =
            serde_json::from_str(include_str!("../../../tests/fixtures/stripe/refund.json"))
                .unwrap();
        assert!(r.counts());
        let d: Dispute =
            serde_json::from_str(include_str!("../../../tests/fixtures/stripe/dispute.json"))
                .unwrap();
        assert_eq!(d.charge.id(), "ch_1PgafuB7WZ01zgkWXYmPNZs8");
    }

    #[test]
    fn failed_and_canceled_refunds_give_nothing_back() {
        for (status, counts) in [
            ("succeeded", true),
            ("pending", true),
            ("failed", false),
            ("canceled", false),
        ] {
            let r = Refund {
                id: "re_1".into(),
                amount: 1,
                created: 0,
                status: Some(status.into()),
            };
            assert_eq!(r.counts(), counts, "{status}");
        }
    }
}
