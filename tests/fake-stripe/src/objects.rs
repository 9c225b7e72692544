//! Stripe object shapes, built from tests/fixtures/stripe so the fake answers what the
//! real API answers (same keys, same nesting), with our values filled in.

use serde_json::{Map, Value, json};

const SESSION: &str = include_str!("../../fixtures/stripe/checkout_session.json");
const ITEM: &str = include_str!("../../fixtures/stripe/item.json");
const PRICE: &str = include_str!("../../fixtures/stripe/price.json");
const PRODUCT: &str = include_str!("../../fixtures/stripe/product.json");
const EVENT: &str =
    include_str!("../../fixtures/stripe/event_checkout_session_completed_basil.json");
const CHARGE: &str = include_str!("../../fixtures/stripe/charge.json");
const REFUND: &str = include_str!("../../fixtures/stripe/refund.json");
const DISPUTE: &str = include_str!("../../fixtures/stripe/dispute.json");

/// The API version the fake's events claim (that of the real delivered event).
pub const API_VERSION: &str = "2025-04-30.basil";

/// A fixture's JSON, parsed once per process (parsing several KB on every answer made the
/// fake, not fulfill, the bottleneck of the throughput benchmark).
fn fixture(text: &'static str) -> Value {
    static PARSED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<usize, Value>>> =
        std::sync::LazyLock::new(Default::default);
    let mut parsed = PARSED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    parsed
        .entry(text.as_ptr() as usize)
        .or_insert_with(|| serde_json::from_str(text).unwrap_or(Value::Null))
        .clone()
}

fn set(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

#[derive(Debug, Clone)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub metadata: Map<String, Value>,
    pub created: i64,
}

impl Product {
    pub fn to_json(&self) -> Value {
        let mut v = fixture(PRODUCT);
        set(&mut v, "id", json!(self.id));
        set(&mut v, "name", json!(self.name));
        set(
            &mut v,
            "description",
            json!(format!("{} (fake)", self.name)),
        );
        set(&mut v, "metadata", Value::Object(self.metadata.clone()));
        set(&mut v, "created", json!(self.created));
        set(&mut v, "updated", json!(self.created));
        set(&mut v, "default_price", Value::Null);
        set(&mut v, "type", json!("service"));
        set(&mut v, "package_dimensions", Value::Null);
        v
    }
}

#[derive(Debug, Clone)]
pub struct Price {
    pub id: String,
    pub product: String,
    pub unit_amount: i64,
    pub currency: String,
    pub metadata: Map<String, Value>,
    pub created: i64,
}

impl Price {
    /// `product` is the product's id, or the whole product when expanded.
    pub fn to_json(&self, product: Value) -> Value {
        let mut v = fixture(PRICE);
        set(&mut v, "id", json!(self.id));
        set(&mut v, "product", product);
        set(&mut v, "unit_amount", json!(self.unit_amount));
        set(
            &mut v,
            "unit_amount_decimal",
            json!(self.unit_amount.to_string()),
        );
        set(&mut v, "currency", json!(self.currency));
        set(&mut v, "metadata", Value::Object(self.metadata.clone()));
        set(&mut v, "created", json!(self.created));
        // Credit packs are one-time prices.
        set(&mut v, "type", json!("one_time"));
        set(&mut v, "recurring", Value::Null);
        set(&mut v, "transform_quantity", Value::Null);
        v
    }
}

#[derive(Debug, Clone)]
pub struct LineItem {
    pub id: String,
    pub price: String,
    pub quantity: i64,
}

/// A line item (`object: "item"`) with its price (always an object in Stripe's API).
pub fn item_json(
    item: &LineItem,
    price: Value,
    description: &str,
    amount: i64,
    currency: &str,
) -> Value {
    let mut v = fixture(ITEM);
    set(&mut v, "id", json!(item.id));
    set(&mut v, "price", price);
    set(&mut v, "quantity", json!(item.quantity));
    set(&mut v, "description", json!(description));
    set(&mut v, "amount_subtotal", json!(amount));
    set(&mut v, "amount_total", json!(amount));
    set(&mut v, "currency", json!(currency));
    set(&mut v, "adjustable_quantity", Value::Null);
    v
}

/// A Stripe list envelope.
pub fn list_json(data: Vec<Value>, has_more: bool, url: &str) -> Value {
    json!({"object": "list", "data": data, "has_more": has_more, "url": url})
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub created: i64,
    pub status: String,
    pub payment_status: String,
    pub client_reference_id: Option<String>,
    pub metadata: Map<String, Value>,
    pub line_items: Vec<LineItem>,
    pub payment_intent: String,
    pub amount_total: i64,
    pub currency: String,
    pub livemode: bool,
    /// The connected account (Stripe Connect) that owns the session; `None`: the platform.
    pub account: Option<String>,
}

impl Session {
    /// The session as `GET /v1/checkout/sessions/{id}` returns it, without `line_items`.
    pub fn to_json(&self) -> Value {
        let mut v = fixture(SESSION);
        set(&mut v, "id", json!(self.id));
        set(&mut v, "created", json!(self.created));
        set(&mut v, "expires_at", json!(self.created + 86_400));
        set(&mut v, "status", json!(self.status));
        set(&mut v, "payment_status", json!(self.payment_status));
        set(
            &mut v,
            "client_reference_id",
            json!(self.client_reference_id),
        );
        set(&mut v, "metadata", Value::Object(self.metadata.clone()));
        set(&mut v, "payment_intent", json!(self.payment_intent));
        set(&mut v, "amount_subtotal", json!(self.amount_total));
        set(&mut v, "amount_total", json!(self.amount_total));
        set(&mut v, "currency", json!(self.currency));
        set(&mut v, "livemode", json!(self.livemode));
        set(&mut v, "mode", json!("payment"));
        set(&mut v, "ui_mode", json!("hosted_page"));
        set(&mut v, "shipping_cost", Value::Null);
        set(&mut v, "currency_conversion", Value::Null);
        set(
            &mut v,
            "total_details",
            json!({"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}),
        );
        let url = if self.status == "open" {
            json!(format!("https://checkout.stripe.com/c/pay/{}", self.id))
        } else {
            Value::Null
        };
        set(&mut v, "url", url);
        v
    }
}

/// A Stripe event around `object`, shaped like the real delivered one.
pub fn event_json(
    id: &str,
    event_type: &str,
    created: i64,
    object: Value,
    livemode: bool,
) -> Value {
    let mut v = fixture(EVENT);
    set(&mut v, "id", json!(id));
    set(&mut v, "type", json!(event_type));
    set(&mut v, "created", json!(created));
    set(&mut v, "api_version", json!(API_VERSION));
    set(&mut v, "livemode", json!(livemode));
    set(&mut v, "pending_webhooks", json!(1));
    set(&mut v, "data", json!({"object": object}));
    v
}

/// A charge for `payment_intent`, from the charge fixture.
pub fn charge_json(
    id: &str,
    payment_intent: &str,
    amount: i64,
    amount_refunded: i64,
    currency: &str,
) -> Value {
    let mut v = fixture(CHARGE);
    set(&mut v, "id", json!(id));
    set(&mut v, "payment_intent", json!(payment_intent));
    set(&mut v, "amount", json!(amount));
    set(&mut v, "amount_captured", json!(amount));
    set(&mut v, "amount_refunded", json!(amount_refunded));
    set(&mut v, "refunded", json!(amount_refunded >= amount));
    set(&mut v, "currency", json!(currency));
    v
}

/// A refund of `amount` on `charge`, from the refund fixture.
pub fn refund_json(
    id: &str,
    charge: &str,
    payment_intent: &str,
    amount: i64,
    created: i64,
    status: &str,
) -> Value {
    let mut v = fixture(REFUND);
    set(&mut v, "id", json!(id));
    set(&mut v, "charge", json!(charge));
    set(&mut v, "payment_intent", json!(payment_intent));
    set(&mut v, "amount", json!(amount));
    set(&mut v, "created", json!(created));
    set(&mut v, "status", json!(status));
    v
}

/// A dispute on `charge`, from the dispute fixture.
pub fn dispute_json(
    id: &str,
    charge: &str,
    payment_intent: &str,
    amount: i64,
    status: &str,
    created: i64,
) -> Value {
    let mut v = fixture(DISPUTE);
    set(&mut v, "id", json!(id));
    set(&mut v, "charge", json!(charge));
    set(&mut v, "payment_intent", json!(payment_intent));
    set(&mut v, "amount", json!(amount));
    set(&mut v, "status", json!(status));
    set(&mut v, "created", json!(created));
    v
}

/// Stripe's error envelope.
pub fn error_json(error_type: &str, code: Option<&str>, message: &str) -> Value {
    let mut error = json!({"type": error_type, "message": message});
    if let Some(code) = code {
        set(&mut error, "code", json!(code));
        set(
            &mut error,
            "doc_url",
            json!(format!(
                "https://stripe.com/docs/error-codes/{}",
                code.replace('_', "-")
            )),
        );
    }
    json!({ "error": error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixture_parses() {
        for text in [
            SESSION, ITEM, PRICE, PRODUCT, EVENT, CHARGE, REFUND, DISPUTE,
        ] {
            assert!(fixture(text).is_object());
        }
    }

    #[test]
    fn a_session_keeps_every_key_of_the_fixture() {
        let s = Session {
            id: "cs_test_x".into(),
            created: 1,
            status: "complete".into(),
            payment_status: "paid".into(),
            client_reference_id: Some("u".into()),
            metadata: Map::new(),
            line_items: vec![],
            payment_intent: "pi_x".into(),
            amount_total: 100,
            currency: "usd".into(),
            livemode: false,
            account: None,
        };
        let fixture_keys: Vec<String> = fixture(SESSION)
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let json = s.to_json();
        for key in fixture_keys {
            assert!(json.get(&key).is_some(), "{key}");
        }
        assert_eq!(json["status"], "complete");
        assert_eq!(json["client_reference_id"], "u");
    }
}
