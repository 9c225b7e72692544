//! Reading a whole Stripe list: `limit=100`, then `starting_after` the last id.

use serde::de::DeserializeOwned;

use super::{StripeClient, StripeError, checkout_session::List};

/// Enough for any list fulfill reads; a list that never ends is an error, not a hang.
const MAX_PAGES: usize = 1000;

pub trait Identified {
    fn list_id(&self) -> Option<&str>;
}

impl Identified for serde_json::Value {
    fn list_id(&self) -> Option<&str> {
        self.get("id").and_then(serde_json::Value::as_str)
    }
}

impl Identified for super::charge::Refund {
    fn list_id(&self) -> Option<&str> {
        Some(&self.id)
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

    /// The next page, or `None` after the last.
    pub async fn next_page<T: DeserializeOwned + Identified>(
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
        q.push(("limit", "100"));
        if let Some(a) = &self.after {
            q.push(("starting_after", a.as_str()));
        }
        let page: List<T> = self.client.get(self.endpoint, &self.path, &q).await?;
        match (page.has_more, page.data.last().and_then(|i| i.list_id())) {
            (false, _) => self.done = true,
            (true, None) => {
                return Err(StripeError::Paging(format!(
                    "{}: has_more on an empty page",
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
    T: DeserializeOwned + Identified,
{
    let mut pager = Pager::new(client, endpoint, path, query);
    let mut all = Vec::new();
    while let Some(page) = pager.next_page().await? {
        all.extend(page);
    }
    Ok(all)
}
