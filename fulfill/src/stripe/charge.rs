//! Charges: what a session's money side hangs on (`payment_intent.latest_charge`).

use serde::Deserialize;

use super::{
    StripeClient, StripeError,
    list::{Expandable, HasId},
};

#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub id: String,
    pub amount: i64,
    /// Includes pending refunds; failed ones are given back.
    #[serde(default)]
    pub amount_refunded: i64,
    #[serde(default)]
    pub disputed: bool,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntentId>>,
}

impl Charge {
    /// Whether any money went back (or is on its way): only then are refunds and
    /// disputes listed.
    pub fn has_reversals(&self) -> bool {
        self.amount_refunded > 0 || self.disputed
    }
}

impl HasId for Charge {
    fn id(&self) -> &str {
        &self.id
    }
}

/// A PaymentIntent reference where only its id matters.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntentId {
    pub id: String,
}

impl HasId for PaymentIntentId {
    fn id(&self) -> &str {
        &self.id
    }
}

#[tracing::instrument(name = "stripe.fetch_charge", skip_all, fields(charge_id = %id))]
pub async fn fetch(client: &StripeClient, id: &str) -> Result<Charge, StripeError> {
    client
        .get("charges.retrieve", &format!("/v1/charges/{id}"), &[])
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_charge() {
        let c: Charge =
            serde_json::from_str(include_str!("../../../tests/fixtures/stripe/charge.json"))
                .unwrap();
        assert_eq!(c.amount, 100);
        assert!(!c.has_reversals());
    }
}
