//! Stripe's list objects and the one pager that reads them whole: `limit=100`, then
//! `starting_after` the last id, until `has_more` is false.
//! <https://docs.stripe.com/api/pagination>

use serde::{Deserialize, de::DeserializeOwned};

use super::{StripeClient, StripeError};

/// Enough for any list fulfill reads; a list that never ends is an error, not a hang.
const MAX_PAGES: usize = 1000;
/// Stripe's largest page.
const PAGE_SIZE: &str = "100";

/// A Stripe list object (`{"object":"list","data":[…],"has_more":…}`).
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(default)]
    pub url: Option<String>,
}

/// A Stripe object's id.
pub trait HasId {
    fn id(&self) -> &str;
}

impl HasId for serde_json::Value {
    fn id(&self) -> &str {
        self.get("id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
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

    pub fn object(&self) -> Option<&T> {
        match self {
            Self::Id(_) => None,
            Self::Object(object) => Some(object),
        }
    }
}

/// Walks a list page by page.
pub struct Pager<'a> {
    client: &'a StripeClient,
    endpoint: &'static str,
    path: String,
    query: Vec<(&'a str, &'a str)>,
    after: Option<String>,
    done: bool,
    pages: usize,
}

impl<'a> Pager<'a> {
    pub fn new(
        client: &'a StripeClient,
        endpoint: &'static str,
        path: impl Into<String>,
        query: &[(&'a str, &'a str)],
    ) -> Self {
        Self {
            client,
            endpoint,
            path: path.into(),
            query: query.to_vec(),
            after: None,
            done: false,
            pages: 0,
        }
    }

    /// Starts after the object `id` (the last of a page read elsewhere, e.g. expanded).
    pub fn starting_after(mut self, id: impl Into<String>) -> Self {
        self.after = Some(id.into());
        self
    }

    /// The next page, or `None` after the last.
    pub async fn next_page<T: DeserializeOwned + HasId>(
        &mut self,
    ) -> Result<Option<Vec<T>>, StripeError> {
        if self.done {
            return Ok(None);
        }
        if self.pages == MAX_PAGES {
            return Err(StripeError::Paging(format!(
                "{}: more than {MAX_PAGES} pages",
                self.path
            )));
        }
        self.pages += 1;
        let mut q = self.query.clone();
        q.push(("limit", PAGE_SIZE));
        if let Some(a) = &self.after {
            q.push(("starting_after", a.as_str()));
        }
        let page: List<T> = self.client.get(self.endpoint, &self.path, &q).await?;
        match (page.has_more, page.data.last().map(HasId::id)) {
            (false, _) => self.done = true,
            (true, None | Some("")) => {
                return Err(StripeError::Paging(format!(
                    "{}: has_more on a page without a last id",
                    self.path
                )));
            }
            (true, Some(id)) => self.after = Some(id.to_owned()),
        }
        Ok(Some(page.data))
    }
}

/// The whole list at `path`.
pub async fn collect<T>(
    client: &StripeClient,
    endpoint: &'static str,
    path: &str,
    query: &[(&str, &str)],
) -> Result<Vec<T>, StripeError>
where
    T: DeserializeOwned + HasId,
{
    collect_from(Pager::new(client, endpoint, path, query)).await
}

/// What is left of a list from `pager` on.
pub async fn collect_from<T>(mut pager: Pager<'_>) -> Result<Vec<T>, StripeError>
where
    T: DeserializeOwned + HasId,
{
    let mut all = Vec::new();
    while let Some(page) = pager.next_page().await? {
        all.extend(page);
    }
    Ok(all)
}
