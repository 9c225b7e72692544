//! A fake Stripe API for tests and for running the stack without a Stripe account.
//!
//! It is a real HTTP server (actix-web, random port) answering the endpoints fulfill uses,
//! in Stripe's shapes (built from tests/fixtures/stripe): checkout sessions with
//! `expand[]`, line items with Stripe's cursor paging, events and sessions lists, charges.
//! It checks the API key, and has knobs for latency, 429/5xx rates, hangs, a per-second
//! rate limit like Stripe's, and sessions whose state changes over time. It also builds
//! and signs webhook events the way Stripe does.
//!
//! Tests drive it through [`FakeStripe`]; other processes (the trigger tool, the e2e and
//! chaos suites) through its control API under `/_fake/…` (see [`control`]).

pub mod control;
pub mod objects;
mod server;
pub mod state;

use std::{net::SocketAddr, sync::Arc};

use actix_web::dev::ServerHandle;
use hmac::{Hmac, Mac};
use sha2::Sha256;
pub use state::{Knobs, PriceSpec, SessionSpec, State, Stats};

pub const DEFAULT_API_KEY: &str = "sk_test_fake_stripe_key";

/// The variable that sets where the `fake-stripe` binary listens, and its default.
pub const ADDR_VARIABLE: &str = "FAKE_STRIPE_ADDR";
pub const DEFAULT_ADDR: &str = "127.0.0.1:12111";

/// A running fake, stopped when dropped.
pub struct FakeStripe {
    addr: SocketAddr,
    state: Arc<State>,
    handle: ServerHandle,
}

impl FakeStripe {
    /// Starts on 127.0.0.1 with a random port, accepting `api_key`.
    pub async fn start(api_key: &str) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Self::start_on(listener, api_key)
    }

    pub fn start_on(listener: std::net::TcpListener, api_key: &str) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(api_key));
        let server = server::build(listener, Arc::clone(&state))?;
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            addr,
            state,
            handle,
        })
    }

    /// What fulfill's `STRIPE_API_BASE` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // Stopping needs the runtime that may be shutting down; fire and forget.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { handle.stop(false).await });
        }
    }
}

impl std::ops::Deref for FakeStripe {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

/// The `Stripe-Signature` header Stripe would send for `payload` at `timestamp`:
/// HMAC-SHA256 keyed by the whole `whsec_…` secret over `"{timestamp}.{payload}"`.
pub fn sign_webhook(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return format!("t={timestamp},v1="),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_stripe() {
        // Same vector as ingest's signature tests (computed with Python's hmac).
        let payload = b"{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}";
        assert_eq!(
            sign_webhook(payload, "whsec_test_secret", 1746373867),
            "t=1746373867,v1=c81717b00190efa1053b0b70fbbeebe6dccad13573f8437b9f6836be50f9f204"
        );
    }
}
