//! Whether Stripe accepts the key. A 401 (revoked or rolled key) or 403 (a restricted key
//! lacking a permission) is a fault of the configuration, not of the message being
//! processed: the consumer stops and probes (see `crate::consumer`), nothing is
//! dead-lettered, and readiness says so.

use std::sync::Mutex;

use tokio::sync::watch;

/// A GET to repeat: the connected account it was made for (`None`: the platform), path
/// and query pairs.
pub type Probe = (Option<String>, String, Vec<(String, String)>);

/// Shared by the Stripe client (which sees the rejections), the consumer (which stops and
/// probes) and readiness.
#[derive(Debug)]
pub struct KeyHealth {
    rejected: watch::Sender<bool>,
    /// The call that was rejected: what a probe repeats (a GET, safe to repeat).
    probe: Mutex<Option<Probe>>,
}

impl Default for KeyHealth {
    fn default() -> Self {
        Self {
            rejected: watch::Sender::new(false),
            probe: Mutex::new(None),
        }
    }
}

impl KeyHealth {
    pub fn is_rejected(&self) -> bool {
        *self.rejected.borrow()
    }

    /// Stripe refused the key on `path` with `query` (for `account`, if any).
    pub fn reject(&self, account: Option<&str>, path: &str, query: &[(&str, &str)]) {
        if let Ok(mut probe) = self.probe.lock() {
            *probe = Some((
                account.map(str::to_owned),
                path.to_owned(),
                query
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ));
        }
        self.rejected.send_replace(true);
    }

    /// Stripe accepts the key again.
    pub fn accept(&self) {
        self.rejected.send_replace(false);
    }

    /// Changes of the rejected flag.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.rejected.subscribe()
    }

    /// The call to repeat to learn whether the key is accepted again.
    pub fn probe(&self) -> Option<Probe> {
        self.probe.lock().ok().and_then(|p| p.clone())
    }
}
