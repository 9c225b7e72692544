//! `devstack trigger`: what Stripe and a website do, played through the running stack,
//! like `stripe trigger`.
//!
//! With the fake Stripe it creates the Checkout Session (or the refund, the dispute), builds
//! the event Stripe would send, signs it with the webhook secret and posts it to ingest,
//! then waits for fulfill and prints the balance. (With real Stripe, pay a test-mode
//! Checkout Session and let `stripe listen` forward the events; see the README.) The
//! spending calls go to fulfill's API ([`crate::spending`]).
//!
//! Each trigger remembers the session, event and hold it made in the data folder, so a
//! later one can name them `last`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::{spending, stack::Settings};

#[derive(Subcommand)]
pub enum What {
    /// A paid purchase: `checkout.session.completed` with `payment_status=paid`.
    Purchase(Purchase),
    /// An async payment: completed unpaid (nothing credited), then paid
    /// (`checkout.session.async_payment_succeeded`).
    AsyncPurchase(Purchase),
    /// Deliver an event again (same id, same body, fresh signature).
    Replay {
        /// The event id (`evt_…`) printed by an earlier trigger, or `last`.
        event_id: String,
    },
    /// Sign a file's bytes as Stripe would and post them to ingest (no fake Stripe needed),
    /// e.g. tests/fixtures/stripe/event_checkout_session_completed_basil.json.
    Send {
        /// A file holding a Stripe event, sent byte for byte.
        file: std::path::PathBuf,
    },
    /// Refund a purchase at Stripe (`charge.refunded`): fulfill takes back the credits the
    /// refunded share bought (FULFILL_REFUND_POLICY).
    Refund {
        /// The session (`cs_…`) of an earlier purchase, or `last`.
        session: String,
        /// In the smallest currency unit, as Stripe counts (a 10-credit pack costs 900);
        /// by default what is left of the payment.
        #[arg(long)]
        amount: Option<i64>,
    },
    /// Dispute a purchase (`charge.dispute.created`: its credits are taken back), then
    /// close the dispute (`charge.dispute.closed`): won gives them back, lost keeps them
    /// taken.
    Dispute {
        /// The session (`cs_…`) of an earlier purchase, or `last`.
        session: String,
        #[arg(long, value_enum)]
        outcome: Outcome,
    },
    /// Spend credits at once (`POST /users/{user}/debits`).
    Debit(spending::Debit),
    /// Reserve credits (`POST /users/{user}/holds`), to capture or release later.
    Hold(spending::Hold),
    /// Take (part of) a hold (`POST /holds/{hold}/capture`); the rest is released.
    Capture(spending::Capture),
    /// Give a hold back (`POST /holds/{hold}/release`).
    Release(spending::Release),
    /// Give credits as an operator (`POST /users/{user}/grants`), optionally expiring.
    Grant(spending::Grant),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Outcome {
    Won,
    Lost,
}

#[derive(clap::Args)]
pub struct Purchase {
    /// The website's user id (the session's `client_reference_id`).
    #[arg(long)]
    user: String,
    /// `price_single_credit`, `price_pack_10` or `price_unmapped` (needs attention).
    #[arg(long, default_value = "price_pack_10")]
    price: String,
    /// How many of the price the session buys (the line item's quantity).
    #[arg(long, default_value_t = 1)]
    quantity: i64,
}

pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

pub async fn run(what: What, settings: &Settings) -> anyhow::Result<()> {
    if let What::Send { file } = &what {
        let body =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let t = Trigger {
            client: http_client(),
            settings: settings.clone(),
        };
        let status = t.post_signed(&body).await?;
        println!(
            "sent {} ({} bytes): ingest answered {status}",
            file.display(),
            body.len()
        );
        if !status.is_success() {
            bail!("ingest did not accept the event");
        }
        return Ok(());
    }
    let t = Trigger {
        client: http_client(),
        settings: settings.clone(),
    };
    // Spending is fulfill's own API: the same with the real Stripe.
    match what {
        What::Debit(d) => return spending::debit(&t, d).await,
        What::Hold(h) => return spending::hold(&t, h).await,
        What::Capture(c) => return spending::capture(&t, c).await,
        What::Release(r) => return spending::release(&t, r).await,
        What::Grant(g) => return spending::grant(&t, g).await,
        _ => {}
    }
    if !settings.fake_stripe() {
        bail!(
            "trigger drives the fake Stripe; with STRIPE_SECRET_KEY set, pay a test-mode Checkout \
             Session and let `stripe listen --forward-to {}/webhooks/stripe` deliver the events",
            settings.ingest_url()
        );
    }
    match what {
        What::Debit(_) | What::Hold(_) | What::Capture(_) | What::Release(_) | What::Grant(_) => {
            Ok(())
        }
        What::Refund { session, amount } => {
            let session = t.recall("session", &session)?;
            let user = t.session_user(&session).await?;
            let before = t.print_balance(&user, " before").await?;
            let r = t
                .fake(
                    reqwest::Method::POST,
                    &format!("/_fake/sessions/{session}/refunds"),
                    Some(json!({ "amount": amount })),
                )
                .await?;
            println!(
                "refund {} of {} at Stripe",
                r["refund"].as_str().unwrap_or("?"),
                amount.map_or("the whole payment".to_owned(), |a| a.to_string())
            );
            t.deliver_reply(&r, "charge.refunded").await?;
            t.wait_change(&user, &before).await?;
            t.print_balance(&user, " after").await.map(drop)
        }
        What::Dispute { session, outcome } => {
            let session = t.recall("session", &session)?;
            let user = t.session_user(&session).await?;
            let before = t.print_balance(&user, " before").await?;
            let d = t
                .fake(
                    reqwest::Method::POST,
                    &format!("/_fake/sessions/{session}/disputes"),
                    None,
                )
                .await?;
            let dispute = d["dispute"].as_str().context("no dispute id")?.to_owned();
            println!("dispute {dispute} opened at Stripe");
            t.deliver_reply(&d, "charge.dispute.created").await?;
            t.wait_change(&user, &before).await?;
            let during = t.print_balance(&user, " while disputed").await?;
            let status = match outcome {
                Outcome::Won => "won",
                Outcome::Lost => "lost",
            };
            let c = t
                .fake(
                    reqwest::Method::POST,
                    &format!("/_fake/disputes/{dispute}/close"),
                    Some(json!({ "status": status })),
                )
                .await?;
            println!("dispute {dispute} closed: {status}");
            t.deliver_reply(&c, "charge.dispute.closed").await?;
            match outcome {
                Outcome::Won => t.wait_change(&user, &during).await?,
                // Nothing moves when it is lost: give fulfill the time to have taken it.
                Outcome::Lost => tokio::time::sleep(Duration::from_secs(2)).await,
            }
            t.print_balance(&user, " after").await.map(drop)
        }
        What::Purchase(p) => {
            let session = t.create_session(&p, "paid").await?;
            t.deliver(&session, "checkout.session.completed").await?;
            t.wait_state(&session, "credited").await?;
            t.print_balance(&p.user, "").await.map(drop)
        }
        What::AsyncPurchase(p) => {
            let session = t.create_session(&p, "unpaid").await?;
            t.deliver(&session, "checkout.session.completed").await?;
            t.wait_state(&session, "pending").await?;
            println!("payment pending: nothing credited yet");
            t.print_balance(&p.user, "").await?;
            t.fake(
                reqwest::Method::POST,
                &format!("/_fake/sessions/{session}"),
                Some(json!({"payment_status": "paid"})),
            )
            .await?;
            println!("payment succeeded");
            t.deliver(&session, "checkout.session.async_payment_succeeded")
                .await?;
            t.wait_state(&session, "credited").await?;
            t.print_balance(&p.user, "").await.map(drop)
        }
        What::Send { .. } => Ok(()),
        What::Replay { event_id } => {
            let event_id = t.recall("event", &event_id)?;
            let event = t
                .fake(
                    reqwest::Method::GET,
                    &format!("/_fake/events/{event_id}"),
                    None,
                )
                .await?;
            let body = event["body"]
                .as_str()
                .context("the fake returned no body")?;
            let status = t.post_signed(body.as_bytes()).await?;
            println!(
                "replayed {event_id} ({}): ingest answered {status}",
                event["type"].as_str().unwrap_or("?")
            );
            let session = serde_json::from_str::<Value>(body)?["data"]["object"]["id"]
                .as_str()
                .map(str::to_owned);
            if let Some(session) = session {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let state = t
                    .fulfill_get(&format!("/checkout/sessions/{session}"))
                    .await?;
                println!(
                    "session {session}: {}",
                    state["state"].as_str().unwrap_or("unknown")
                );
                if let Some(user) = state["user_id"].as_str() {
                    t.print_balance(user, "").await?;
                }
            }
            Ok(())
        }
    }
}

/// The balance fulfill answers (`held`/`available` are 0 and `credits` before spending).
#[derive(PartialEq, Eq)]
pub struct Balance {
    pub credits: i64,
    pub held: i64,
    pub available: i64,
}

impl Balance {
    pub fn of(v: &Value) -> Self {
        let credits = v["credits"].as_i64().unwrap_or(0);
        let held = v["held"].as_i64().unwrap_or(0);
        Self {
            credits,
            held,
            available: v["available"].as_i64().unwrap_or(credits - held),
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} credits", self.credits)?;
        if self.held != 0 {
            write!(f, ", {} held, {} available", self.held, self.available)?;
        }
        Ok(())
    }
}

/// The stack as the triggers reach it: the fake Stripe, ingest and fulfill.
pub struct Trigger {
    client: reqwest::Client,
    settings: Settings,
}

impl Trigger {
    pub fn new(client: reqwest::Client, settings: Settings) -> Self {
        Self { client, settings }
    }

    /// Keeps `id` as the `last` `kind` (session, event, hold) in the data folder.
    pub fn remember(&self, kind: &str, id: &str) {
        let dir = &self.settings.data_dir;
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("last-{kind}")), id);
    }

    /// `arg` itself, or for `last` the `kind` an earlier trigger remembered.
    pub fn recall(&self, kind: &str, arg: &str) -> anyhow::Result<String> {
        if arg != "last" {
            return Ok(arg.to_owned());
        }
        let file = self.settings.data_dir.join(format!("last-{kind}"));
        match std::fs::read_to_string(&file) {
            Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
            _ => bail!(
                "no earlier trigger made a {kind} (nothing in {}); give its id",
                file.display()
            ),
        }
    }

    async fn fake(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.settings.fake_stripe_url()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .context("cannot reach the fake Stripe; is `devstack up` running?")?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("fake Stripe answered {status}: {value}");
        }
        Ok(value)
    }

    async fn create_session(&self, p: &Purchase, payment_status: &str) -> anyhow::Result<String> {
        let session = self
            .fake(
                reqwest::Method::POST,
                "/_fake/sessions",
                Some(json!({
                    "client_reference_id": p.user,
                    "line_items": [[p.price, p.quantity]],
                    "status": "complete",
                    "payment_status": payment_status,
                })),
            )
            .await?;
        let id = session["id"].as_str().context("no session id")?.to_owned();
        self.remember("session", &id);
        println!("session {id}: {} × {} for {}", p.quantity, p.price, p.user);
        Ok(id)
    }

    async fn deliver(&self, session: &str, event_type: &str) -> anyhow::Result<()> {
        let event = self
            .fake(
                reqwest::Method::POST,
                &format!("/_fake/sessions/{session}/events"),
                Some(json!({"type": event_type})),
            )
            .await?;
        let id = event["id"].as_str().unwrap_or("?");
        self.deliver_body(id, event_type, &event["body"]).await
    }

    /// Delivers the event of a fake's `{"event_id","body"}` reply (refunds, disputes).
    async fn deliver_reply(&self, reply: &Value, event_type: &str) -> anyhow::Result<()> {
        let id = reply["event_id"].as_str().unwrap_or("?");
        self.deliver_body(id, event_type, &reply["body"]).await
    }

    async fn deliver_body(&self, id: &str, event_type: &str, body: &Value) -> anyhow::Result<()> {
        let body = body.as_str().context("no event body")?;
        let status = self.post_signed(body.as_bytes()).await?;
        println!("event {id} ({event_type}): ingest answered {status}");
        if !status.is_success() {
            bail!("ingest did not accept the event");
        }
        self.remember("event", id);
        Ok(())
    }

    async fn post_signed(&self, body: &[u8]) -> anyhow::Result<reqwest::StatusCode> {
        let signature =
            fake_stripe::sign_webhook(body, &self.settings.webhook_secret, fake_stripe::now());
        let response = self
            .client
            .post(format!("{}/webhooks/stripe", self.settings.ingest_url()))
            .header("Stripe-Signature", signature)
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body.to_vec())
            .send()
            .await
            .context("cannot reach ingest; is `devstack up` running?")?;
        Ok(response.status())
    }

    async fn fulfill_get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.fulfill(reqwest::Method::GET, path, None).await?.1)
    }

    /// A call to fulfill's API (with `FULFILL_API_TOKEN` when set; an `Idempotency-Key`
    /// on every `POST`) → its status and JSON body.
    pub async fn fulfill(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let post = method == reqwest::Method::POST;
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.settings.fulfill_url()));
        if let Some(token) = &self.settings.api_token {
            request = request.bearer_auth(token);
        }
        if post {
            request = request.header("Idempotency-Key", idempotency_key());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .context("cannot reach fulfill; is `devstack up` running?")?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("fulfill answered 401: set FULFILL_API_TOKEN to the token fulfill runs with");
        }
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// The user fulfill recorded for `session`.
    async fn session_user(&self, session: &str) -> anyhow::Result<String> {
        let state = self
            .fulfill_get(&format!("/checkout/sessions/{session}"))
            .await?;
        match state["user_id"].as_str() {
            Some(user) => Ok(user.to_owned()),
            None => bail!("fulfill has no user for session {session}: {state}"),
        }
    }

    async fn wait_state(&self, session: &str, state: &str) -> anyhow::Result<()> {
        for _ in 0..200 {
            let now = self
                .fulfill_get(&format!("/checkout/sessions/{session}"))
                .await?;
            if now["state"] == state {
                return Ok(());
            }
            if now["state"] == "needs_attention" {
                println!(
                    "session {session} needs attention, nothing credited: {}",
                    now["reason"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("session {session} did not reach {state} within 20 s")
    }

    pub async fn balance(&self, user: &str) -> anyhow::Result<Balance> {
        let path = user_path(user);
        let v = self.fulfill_get(&format!("/users/{path}/balance")).await?;
        Ok(Balance::of(&v))
    }

    /// Prints `balance of <user><label>: …` and returns it.
    pub async fn print_balance(&self, user: &str, label: &str) -> anyhow::Result<Balance> {
        let balance = self.balance(user).await?;
        println!("balance of {user}{label}: {balance}");
        Ok(balance)
    }

    /// Waits until `user`'s balance differs from `before` (fulfill took the event).
    async fn wait_change(&self, user: &str, before: &Balance) -> anyhow::Result<()> {
        println!("waiting for fulfill to change the balance of {user}…");
        for _ in 0..200 {
            if self.balance(user).await? != *before {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the balance of {user} did not change within 20 s (still {before}); \
             `devstack attention` and fulfill's log say why"
        )
    }
}

/// `user` as one URL path segment (percent-encoded as the URL standard says).
pub fn user_path(user: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse("http://localhost/") else {
        return user.to_owned();
    };
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.push(user);
    }
    url.path().trim_start_matches('/').to_owned()
}

/// A key no other request uses: this process, and the time in nanoseconds.
fn idempotency_key() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("devstack-{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_id_becomes_one_path_segment() {
        assert_eq!(user_path("alice"), "alice");
        assert_eq!(user_path("a/b c?"), "a%2Fb%20c%3F");
    }

    #[test]
    fn shows_held_and_available_only_while_something_is_held() {
        let free = Balance::of(&json!({"credits": 20, "held": 0, "available": 20}));
        assert_eq!(free.to_string(), "20 credits");
        let held = Balance::of(&json!({"credits": 17, "held": 5, "available": 12}));
        assert_eq!(held.to_string(), "17 credits, 5 held, 12 available");
    }
}
