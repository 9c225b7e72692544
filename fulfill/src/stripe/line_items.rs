//! Reading every line item of a session: `GET /v1/checkout/sessions/{id}/line_items`,
//! paged after the last item of the expanded first page, only when it says `has_more`.

use std::collections::HashMap;

use serde::Deserialize;
use shared::ids::CheckoutSessionId;

use super::{
    StripeClient, StripeError,
    list::{self, Expandable, HasId, List, Pager},
};

/// Stripe metadata: string keys to string values.
pub type Metadata = HashMap<String, String>;

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

impl HasId for LineItem {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Appends the remaining pages to `items`, after its last element.
pub async fn fetch_rest(
    client: &StripeClient,
    id: &CheckoutSessionId,
    items: &mut List<LineItem>,
) -> Result<(), StripeError> {
    if !items.has_more {
        return Ok(());
    }
    let after = items
        .data
        .last()
        .map(|item| item.id.clone())
        .ok_or_else(|| StripeError::Paging("has_more on an empty page".into()))?;
    let pager = Pager::new(
        client,
        "checkout_sessions.line_items",
        format!("/v1/checkout/sessions/{id}/line_items"),
        &[("expand[]", "data.price.product")],
    )
    .starting_after(after);
    let rest: Vec<LineItem> = list::collect_from(pager).await?;
    items.data.extend(rest);
    items.has_more = false;
    Ok(())
}
