//! When purchased credits expire: a line item whose Price (else its Product) has
//! `metadata.credits_valid_days` (a positive whole number) buys credits that expire that
//! many days after the session's `created`. A pure function of the refetched session.

use chrono::{DateTime, Duration, Utc};

use super::credits::{self, Decision};
use crate::stripe::{
    checkout_session::{CheckoutSession, LineItem},
    list::Expandable,
};

/// Credits of a positive entry that expire together (`None`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotSpec {
    pub credits: i64,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The metadata key on a Price or Product.
pub const CREDITS_VALID_DAYS: &str = "credits_valid_days";
/// A hundred years: anything longer is a typo.
pub const MAX_VALID_DAYS: i64 = 36_500;

/// A positive whole number of days written in decimal.
pub fn parse_valid_days(raw: &str) -> Result<i64, &'static str> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a positive whole number written in decimal");
    }
    let days: i64 = raw.parse().map_err(|_| "is too large")?;
    match days {
        0 => Err("is zero"),
        d if d > MAX_VALID_DAYS => Err("is too large"),
        d => Ok(d),
    }
}

/// `credits_valid_days` of the item: the price's, else the product's; `None`: never expires.
fn valid_days(item: &LineItem) -> Result<Option<i64>, String> {
    let Some(price) = &item.price else {
        return Ok(None);
    };
    let raw = price
        .metadata
        .as_ref()
        .and_then(|m| m.get(CREDITS_VALID_DAYS))
        .map(|raw| (format!("price {}", price.id), raw))
        .or_else(|| match &price.product {
            Expandable::Object(product) => product
                .metadata
                .as_ref()
                .and_then(|m| m.get(CREDITS_VALID_DAYS))
                .map(|raw| (format!("product {}", product.id), raw)),
            Expandable::Id(_) => None,
        });
    match raw {
        None => Ok(None),
        Some((owner, raw)) => parse_valid_days(raw)
            .map(Some)
            .map_err(|why| format!("{owner} metadata.{CREDITS_VALID_DAYS} {raw:?} {why}")),
    }
}

/// The expiring lots the session's purchase creates (what they leave out never expires).
pub fn lots(session: &CheckoutSession) -> Result<Vec<LotSpec>, String> {
    let created = session
        .created
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        .unwrap_or_else(Utc::now);
    let mut lots: Vec<LotSpec> = Vec::new();
    let Some(items) = &session.line_items else {
        return Ok(lots);
    };
    for item in &items.data {
        let Some(days) = valid_days(item)? else {
            continue;
        };
        let per_unit = credits::credits_per_unit(item)?;
        let credits = item
            .quantity
            .unwrap_or(0)
            .checked_mul(per_unit)
            .ok_or("the credit total overflows")?;
        let expires_at = Some(created + Duration::days(days));
        match lots.iter_mut().find(|l| l.expires_at == expires_at) {
            Some(lot) => lot.credits += credits,
            None => lots.push(LotSpec {
                credits,
                expires_at,
            }),
        }
    }
    Ok(lots)
}

/// The credits decision, unless an expiry cannot be read: then the session needs
/// attention (credits are never given with a guessed lifetime).
pub fn refine(decision: Decision, session: &CheckoutSession) -> Decision {
    match (&decision, lots(session)) {
        (Decision::Credit { .. }, Err(reason)) => Decision::NeedsAttention { reason },
        _ => decision,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn session(items: serde_json::Value) -> CheckoutSession {
        serde_json::from_value(json!({
            "id": "cs_test_1",
            "object": "checkout.session",
            "status": "complete",
            "payment_status": "paid",
            "client_reference_id": "user_1",
            "livemode": false,
            "created": 1_800_000_000,
            "line_items": {"object": "list", "data": items, "has_more": false, "url": "/v1/x"},
        }))
        .unwrap()
    }

    fn item(
        id: &str,
        qty: i64,
        price_meta: serde_json::Value,
        product_meta: serde_json::Value,
    ) -> serde_json::Value {
        json!({
            "id": id, "object": "item", "quantity": qty,
            "price": {"id": format!("price_{id}"), "object": "price", "metadata": price_meta,
                      "product": {"id": format!("prod_{id}"), "object": "product", "metadata": product_meta}},
        })
    }

    #[test]
    fn reads_a_positive_whole_number_of_days() {
        assert_eq!(parse_valid_days("30"), Ok(30));
        for bad in ["", "0", "-1", "1.5", " 3", "99999999999999999999", "36501"] {
            assert!(parse_valid_days(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_price_decides_before_the_product_and_items_without_days_never_expire() {
        let s = session(json!([
            item(
                "a",
                2,
                json!({"credits": "5", "credits_valid_days": "30"}),
                json!({"credits_valid_days": "1"})
            ),
            item(
                "b",
                1,
                json!({}),
                json!({"credits": "7", "credits_valid_days": "30"})
            ),
            item("c", 1, json!({"credits": "100"}), json!({})),
        ]));
        let created = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            lots(&s).unwrap(),
            vec![LotSpec {
                credits: 17,
                expires_at: Some(created + Duration::days(30))
            }]
        );
    }

    #[test]
    fn an_unreadable_expiry_makes_the_session_need_attention() {
        let s = session(json!([item(
            "a",
            1,
            json!({"credits": "5", "credits_valid_days": "soon"}),
            json!({})
        )]));
        let decided = refine(credits::decide(&s), &s);
        assert!(
            matches!(decided, Decision::NeedsAttention { reason } if reason.contains("credits_valid_days"))
        );
    }
}
