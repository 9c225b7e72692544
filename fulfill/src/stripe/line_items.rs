//! Reading every line item of a session: `GET /v1/checkout/sessions/{id}/line_items`,
//! paged with `starting_after`, only when the expanded first page says `has_more`.

use shared::ids::CheckoutSessionId;

use super::{
    StripeClient, StripeError,
    checkout_session::{LineItem, List},
};

/// Stripe's largest page.
const PAGE_SIZE: &str = "100";
/// A session holds at most a few hundred line items; more pages than this is a bug.
const MAX_PAGES: usize = 100;

/// Appends the remaining pages to `items`, after its last element.
pub async fn fetch_rest(
    client: &StripeClient,
    id: &CheckoutSessionId,
    items: &mut List<LineItem>,
) -> Result<(), StripeError> {
    let path = format!("/v1/checkout/sessions/{id}/line_items");
    for _ in 0..MAX_PAGES {
        if !items.has_more {
            return Ok(());
        }
        let after = items
            .data
            .last()
            .map(|item| item.id.clone())
            .ok_or_else(|| StripeError::Paging("has_more on an empty page".into()))?;
        let page: List<LineItem> = client
            .get(
                "checkout_sessions.line_items",
                &path,
                &[
                    ("limit", PAGE_SIZE),
                    ("starting_after", &after),
                    ("expand[]", "data.price.product"),
                ],
            )
            .await?;
        if page.data.is_empty() && page.has_more {
            return Err(StripeError::Paging("has_more on an empty page".into()));
        }
        items.data.extend(page.data);
        items.has_more = page.has_more;
    }
    Err(StripeError::Paging(format!(
        "more than {MAX_PAGES} pages of line items"
    )))
}
