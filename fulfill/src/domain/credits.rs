//! The credits rule (deploy/API.md, "Credits rule"), as a pure function of the refetched session.
//!
//! - Who: `client_reference_id`, else `metadata.user_id`.
//! - How many: Σ quantity × credits per unit, where credits per unit is
//!   `price.metadata.credits`, else `price.product.metadata.credits`, a positive whole
//!   number written in decimal.
//! - When: `status = complete` and `payment_status` in (`paid`, `no_payment_required`).
//!
//! Anything that cannot be decided with certainty is `NeedsAttention` with a reason an
//! operator can act on: money is never guessed.

use shared::ids::UserId;

use crate::stripe::{
    checkout_session::{CheckoutSession, LineItem, PaymentStatus, SessionStatus},
    list::Expandable,
};

/// The most credits one unit may carry; a guard against typos like "10000000000".
pub const MAX_CREDITS_PER_UNIT: i64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Paid: credit `credits` to `user`.
    Credit { user: UserId, credits: i64 },
    /// Paid, but the session cannot be credited as it is.
    NeedsAttention { reason: String },
    /// Not paid (yet): open (`complete: false`), or complete with an async payment still
    /// pending or failed (`complete: true`).
    NotYetPaid { complete: bool },
    /// The session expired unpaid.
    Expired,
}

pub fn decide(session: &CheckoutSession) -> Decision {
    match session.status {
        Some(SessionStatus::Complete) => {}
        Some(SessionStatus::Expired) => return Decision::Expired,
        Some(SessionStatus::Open) | Some(SessionStatus::Unknown) | None => {
            return Decision::NotYetPaid { complete: false };
        }
    }
    match session.payment_status {
        PaymentStatus::Paid | PaymentStatus::NoPaymentRequired => {}
        PaymentStatus::Unpaid | PaymentStatus::Unknown => {
            return Decision::NotYetPaid { complete: true };
        }
    }
    match credit(session) {
        Ok((user, credits)) => Decision::Credit { user, credits },
        Err(reason) => Decision::NeedsAttention { reason },
    }
}

fn credit(session: &CheckoutSession) -> Result<(UserId, i64), String> {
    let user = user(session)?;
    let items = session
        .line_items
        .as_ref()
        .ok_or("the session was fetched without its line items")?;
    if items.has_more {
        return Err("not every line item could be read".into());
    }
    if items.data.is_empty() {
        return Err("the session has no line items".into());
    }
    let mut total: i64 = 0;
    for item in &items.data {
        let per_unit = credits_per_unit(item)?;
        let quantity = item
            .quantity
            .filter(|q| *q > 0)
            .ok_or_else(|| format!("line item {} has no positive quantity", item.id))?;
        total = quantity
            .checked_mul(per_unit)
            .and_then(|n| total.checked_add(n))
            .ok_or("the credit total overflows")?;
    }
    Ok((user, total))
}

/// Who the session credits: `client_reference_id`, else `metadata.user_id`.
pub fn user(session: &CheckoutSession) -> Result<UserId, String> {
    let (source, raw) = match (
        &session.client_reference_id,
        session.metadata.as_ref().and_then(|m| m.get("user_id")),
    ) {
        (Some(id), _) if !id.is_empty() => ("client_reference_id", id),
        (_, Some(id)) if !id.is_empty() => ("metadata.user_id", id),
        _ => return Err("the session has neither client_reference_id nor metadata.user_id".into()),
    };
    UserId::parse(raw.as_str()).map_err(|e| format!("{source} is not a usable user id: {e}"))
}

pub(crate) fn credits_per_unit(item: &LineItem) -> Result<i64, String> {
    let price = item
        .price
        .as_ref()
        .ok_or_else(|| format!("line item {} has no price", item.id))?;
    if let Some(raw) = price.metadata.as_ref().and_then(|m| m.get("credits")) {
        return parse_credits(raw)
            .map_err(|why| format!("price {} metadata.credits {raw:?} {why}", price.id));
    }
    let product = match &price.product {
        Expandable::Object(product) => product,
        Expandable::Id(id) => {
            return Err(format!(
                "price {} has no metadata.credits and its product {id} was not expanded",
                price.id
            ));
        }
    };
    match product.metadata.as_ref().and_then(|m| m.get("credits")) {
        Some(raw) => parse_credits(raw)
            .map_err(|why| format!("product {} metadata.credits {raw:?} {why}", product.id)),
        None => Err(format!(
            "line item {} (price {}, product {}) has no metadata.credits on its price or product",
            item.id, price.id, product.id
        )),
    }
}

/// A positive whole number written in decimal: ASCII digits only, no sign, no spaces.
pub fn parse_credits(raw: &str) -> Result<i64, &'static str> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a positive whole number written in decimal");
    }
    let value: i64 = raw.parse().map_err(|_| "is too large")?;
    if value == 0 {
        return Err("is zero");
    }
    if value > MAX_CREDITS_PER_UNIT {
        return Err("is too large");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const SESSION: &str = include_str!("../../../tests/fixtures/stripe/checkout_session.json");
    const ITEM: &str = include_str!("../../../tests/fixtures/stripe/item.json");
    const PRODUCT: &str = include_str!("../../../tests/fixtures/stripe/product.json");

    /// A line item from the fixture with its price's and (expanded) product's credits.
    fn item(
        id: &str,
        quantity: i64,
        price_credits: Option<&str>,
        product_credits: Option<&str>,
    ) -> Value {
        let mut item: Value = serde_json::from_str(ITEM).unwrap();
        let mut product: Value = serde_json::from_str(PRODUCT).unwrap();
        item["id"] = json!(id);
        item["quantity"] = json!(quantity);
        item["price"]["metadata"] = match price_credits {
            Some(c) => json!({"credits": c}),
            None => json!({}),
        };
        product["metadata"] = match product_credits {
            Some(c) => json!({"credits": c}),
            None => json!({}),
        };
        item["price"]["product"] = product;
        item
    }

    /// The fixture session, complete and paid, for `user`, with `items`.
    fn session(user: Option<&str>, items: Vec<Value>) -> Value {
        let mut s: Value = serde_json::from_str(SESSION).unwrap();
        s["status"] = json!("complete");
        s["payment_status"] = json!("paid");
        s["client_reference_id"] = json!(user);
        s["line_items"] =
            json!({"object": "list", "data": items, "has_more": false, "url": "/v1/x"});
        s
    }

    fn decide_json(v: Value) -> Decision {
        decide(&serde_json::from_value(v).unwrap())
    }

    fn credit(user: &str, credits: i64) -> Decision {
        Decision::Credit {
            user: UserId::parse(user).unwrap(),
            credits,
        }
    }

    fn needs_attention(d: &Decision) -> &str {
        match d {
            Decision::NeedsAttention { reason } => reason,
            other => panic!("expected NeedsAttention, got {other:?}"),
        }
    }

    #[test]
    fn credits_a_single_credit() {
        let d = decide_json(session(
            Some("alice"),
            vec![item("li_1", 1, Some("1"), None)],
        ));
        assert_eq!(d, credit("alice", 1));
    }

    #[test]
    fn credits_a_pack_times_its_quantity() {
        let d = decide_json(session(
            Some("alice"),
            vec![item("li_1", 3, Some("10"), None)],
        ));
        assert_eq!(d, credit("alice", 30));
    }

    #[test]
    fn sums_several_line_items() {
        let d = decide_json(session(
            Some("alice"),
            vec![
                item("li_1", 2, Some("1"), None),
                item("li_2", 1, None, Some("10")),
            ],
        ));
        assert_eq!(d, credit("alice", 12));
    }

    #[test]
    fn price_metadata_wins_over_product_metadata() {
        let d = decide_json(session(
            Some("alice"),
            vec![item("li_1", 1, Some("5"), Some("50"))],
        ));
        assert_eq!(d, credit("alice", 5));
    }

    #[test]
    fn falls_back_to_product_metadata() {
        let d = decide_json(session(
            Some("alice"),
            vec![item("li_1", 2, None, Some("10"))],
        ));
        assert_eq!(d, credit("alice", 20));
    }

    #[test]
    fn falls_back_to_metadata_user_id() {
        let mut s = session(None, vec![item("li_1", 1, Some("1"), None)]);
        s["metadata"] = json!({"user_id": "bob"});
        assert_eq!(decide_json(s), credit("bob", 1));
    }

    #[test]
    fn client_reference_id_wins_over_metadata_user_id() {
        let mut s = session(Some("alice"), vec![item("li_1", 1, Some("1"), None)]);
        s["metadata"] = json!({"user_id": "bob"});
        assert_eq!(decide_json(s), credit("alice", 1));
    }

    #[test]
    fn needs_attention_without_a_user() {
        let d = decide_json(session(None, vec![item("li_1", 1, Some("1"), None)]));
        assert!(needs_attention(&d).contains("client_reference_id"));
    }

    #[test]
    fn needs_attention_for_a_user_id_with_a_nul() {
        let d = decide_json(session(
            Some("a\u{0}b"),
            vec![item("li_1", 1, Some("1"), None)],
        ));
        assert!(needs_attention(&d).contains("control character"));
    }

    #[test]
    fn needs_attention_for_an_item_without_credits_and_names_it() {
        let d = decide_json(session(
            Some("alice"),
            vec![
                item("li_ok", 1, Some("1"), None),
                item("li_bad", 1, None, None),
            ],
        ));
        assert!(needs_attention(&d).contains("li_bad"), "{d:?}");
    }

    #[test]
    fn needs_attention_for_credits_that_are_not_a_positive_decimal() {
        for bad in [
            "0",
            "-1",
            "1.5",
            "1e3",
            " 10",
            "+10",
            "ten",
            "",
            "99999999999999999999",
        ] {
            let d = decide_json(session(
                Some("alice"),
                vec![item("li_1", 1, Some(bad), None)],
            ));
            needs_attention(&d);
        }
    }

    #[test]
    fn needs_attention_when_the_product_was_not_expanded() {
        let mut it = item("li_1", 1, None, None);
        it["price"]["product"] = json!("prod_x");
        let d = decide_json(session(Some("alice"), vec![it]));
        assert!(needs_attention(&d).contains("not expanded"));
    }

    #[test]
    fn needs_attention_when_line_items_are_incomplete() {
        let mut s = session(Some("alice"), vec![item("li_1", 1, Some("1"), None)]);
        s["line_items"]["has_more"] = json!(true);
        needs_attention(&decide_json(s));
    }

    #[test]
    fn credits_nothing_when_payment_status_is_unpaid() {
        let mut s = session(Some("alice"), vec![item("li_1", 1, Some("1"), None)]);
        s["payment_status"] = json!("unpaid");
        assert_eq!(decide_json(s), Decision::NotYetPaid { complete: true });
    }

    #[test]
    fn credits_nothing_while_open() {
        let mut s = session(Some("alice"), vec![item("li_1", 1, Some("1"), None)]);
        s["status"] = json!("open");
        assert_eq!(decide_json(s), Decision::NotYetPaid { complete: false });
    }

    #[test]
    fn credits_nothing_when_expired() {
        let mut s = session(Some("alice"), vec![item("li_1", 1, Some("1"), None)]);
        s["status"] = json!("expired");
        s["payment_status"] = json!("unpaid");
        assert_eq!(decide_json(s), Decision::Expired);
    }

    #[test]
    fn credits_a_session_that_needs_no_payment() {
        let mut s = session(Some("alice"), vec![item("li_1", 1, Some("10"), None)]);
        s["payment_status"] = json!("no_payment_required");
        assert_eq!(decide_json(s), credit("alice", 10));
    }

    #[test]
    fn the_real_event_session_without_line_items_is_never_credited_blindly() {
        // data.object of a webhook carries no line items: crediting from it is impossible.
        let event: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/stripe/event_checkout_session_completed_basil.json"
        ))
        .unwrap();
        let d = decide_json(event["data"]["object"].clone());
        assert!(needs_attention(&d).contains("without its line items"));
    }
}
