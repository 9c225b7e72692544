//! The Checkout Session as fulfill needs it, and how to fetch it whole.
//!
//! Models keep only the fields the credits rule reads and tolerate everything else:
//! unknown fields are ignored, unknown enum values map to `Unknown`, and fields that
//! older API versions lack are optional (see tests/fixtures/stripe/README.md on drift).

use std::collections::HashMap;

use serde::Deserialize;
use shared::ids::CheckoutSessionId;

use super::{StripeClient, StripeError, line_items};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    Complete,
    Expired,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Paid,
    Unpaid,
    NoPaymentRequired,
    #[serde(other)]
    Unknown,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Complete => "complete",
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Unpaid => "unpaid",
            Self::NoPaymentRequired => "no_payment_required",
            Self::Unknown => "unknown",
        }
    }
}

/// An id, or the object itself when expanded.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expandable<T> {
    Id(String),
    Object(Box<T>),
}

impl<T: HasId> Expandable<T> {
    pub fn id(&self) -> &str {
        match self {
            Self::Id(id) => id,
            Self::Object(object) => object.id(),
        }
    }
}

pub trait HasId {
    fn id(&self) -> &str;
}

/// Stripe metadata: string keys to string values.
pub type Metadata = HashMap<String, String>;

#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Product {
    pub id: String,
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

impl HasId for Product {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    pub id: String,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    pub product: Expandable<Product>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LineItem {
    pub id: String,
    #[serde(default)]
    pub quantity: Option<i64>,
    #[serde(default)]
    pub price: Option<Price>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntentRef {
    pub id: String,
}

impl HasId for PaymentIntentRef {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    #[serde(default)]
    pub status: Option<SessionStatus>,
    pub payment_status: PaymentStatus,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntentRef>>,
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub livemode: bool,
    #[serde(default)]
    pub created: Option<i64>,
    /// Present only when fetched with `expand[]=line_items`.
    #[serde(default)]
    pub line_items: Option<List<LineItem>>,
}

/// Fetches the session with its line items, prices and products in one call, then pages
/// through the remaining line items only if there are more than the first page.
#[tracing::instrument(name = "stripe.fetch_checkout_session", skip_all, fields(session_id = %id))]
pub async fn fetch(
    client: &StripeClient,
    id: &CheckoutSessionId,
) -> Result<CheckoutSession, StripeError> {
    let mut session: CheckoutSession = client
        .get(
            "checkout_sessions.retrieve",
            &format!("/v1/checkout/sessions/{id}"),
            &[
                ("expand[]", "line_items"),
                // Four levels: the deepest Stripe expands, and the deepest we need.
                ("expand[]", "line_items.data.price.product"),
            ],
        )
        .await?;
    if session.id != id.as_str() {
        return Err(StripeError::Paging(format!(
            "asked for session {id}, got {}",
            session.id
        )));
    }
    if let Some(items) = session.line_items.as_mut()
        && items.has_more
    {
        line_items::fetch_rest(client, id, items).await?;
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = include_str!("../../../tests/fixtures/stripe/checkout_session.json");
    const EVENT: &str =
        include_str!("../../../tests/fixtures/stripe/event_checkout_session_completed_basil.json");
    const LIST: &str = include_str!("../../../tests/fixtures/stripe/list_line_items.json");

    #[test]
    fn reads_the_fixture_session() {
        let s: CheckoutSession = serde_json::from_str(SESSION).unwrap();
        assert_eq!(s.status, Some(SessionStatus::Open));
        assert_eq!(s.payment_status, PaymentStatus::Unpaid);
        assert_eq!(s.client_reference_id, None);
        assert!(s.line_items.is_none());
        assert_eq!(
            s.payment_intent.as_ref().map(Expandable::id),
            Some("pi_1PgafyB7WZ01zgkWSjxsAJo3")
        );
    }

    #[test]
    fn reads_the_session_inside_the_real_basil_event() {
        let event: serde_json::Value = serde_json::from_str(EVENT).unwrap();
        let s: CheckoutSession = serde_json::from_value(event["data"]["object"].clone()).unwrap();
        assert_eq!(s.status, Some(SessionStatus::Complete));
        assert_eq!(s.payment_status, PaymentStatus::Paid);
        assert_eq!(
            s.client_reference_id.as_deref(),
            Some("746bcb9d-403a-43b8-89ae-47595b55d6ed")
        );
        assert_eq!(s.amount_total, Some(900));
    }

    #[test]
    fn reads_the_fixture_line_items_list_with_an_unexpanded_product() {
        let list: List<LineItem> = serde_json::from_str(LIST).unwrap();
        assert!(!list.has_more);
        let item = &list.data[0];
        assert_eq!(item.quantity, Some(1));
        let price = item.price.as_ref().unwrap();
        assert!(matches!(price.product, Expandable::Id(ref id) if id == "prod_QXg1hqf4jFNsqG"));
    }

    #[test]
    fn tolerates_unknown_enum_values_and_fields() {
        let s: CheckoutSession = serde_json::from_str(
            r#"{"id":"cs_1","status":"something_new","payment_status":"processing","brand_new":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(s.status, Some(SessionStatus::Unknown));
        assert_eq!(s.payment_status, PaymentStatus::Unknown);
    }
}
