//! `devstack trigger`: purchases played through the running stack, like `stripe trigger`.
//!
//! With the fake Stripe it creates the Checkout Session, builds the event Stripe would
//! send, signs it with the webhook secret and posts it to ingest, then waits for fulfill
//! and prints the balance. (With real Stripe, pay a test-mode Checkout Session and let
//! `stripe listen` forward the events; see the README.)

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::stack::Settings;

#[derive(Subcommand)]
pub enum What {
    /// A paid purchase: `checkout.session.completed` with `payment_status=paid`.
    Purchase(Purchase),
    /// An async payment: completed unpaid (nothing credited), then paid
    /// (`checkout.session.async_payment_succeeded`).
    AsyncPurchase(Purchase),
    /// Deliver an event again (same id, same body, fresh signature).
    Replay {
        /// The event id (`evt_…`) printed by an earlier trigger.
        event_id: String,
    },
    /// Sign a file's bytes as Stripe would and post them to ingest (no fake Stripe needed),
    /// e.g. tests/fixtures/stripe/event_checkout_session_completed_basil.json.
    Send {
        /// A file holding a Stripe event, sent byte for byte.
        file: std::path::PathBuf,
    },
}

#[derive(clap::Args)]
pub struct Purchase {
    #[arg(long)]
    user: String,
    #[arg(long, default_value = "price_pack_10")]
    price: String,
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
    if !settings.fake_stripe() {
        bail!(
            "trigger drives the fake Stripe; with STRIPE_SECRET_KEY set, pay a test-mode Checkout \
             Session and let `stripe listen --forward-to {}/webhooks/stripe` deliver the events",
            settings.ingest_url()
        );
    }
    let t = Trigger {
        client: http_client(),
        settings: settings.clone(),
    };
    match what {
        What::Purchase(p) => {
            let session = t.create_session(&p, "paid").await?;
            t.deliver(&session, "checkout.session.completed").await?;
            t.wait_state(&session, "credited").await?;
            t.print_balance(&p.user).await
        }
        What::AsyncPurchase(p) => {
            let session = t.create_session(&p, "unpaid").await?;
            t.deliver(&session, "checkout.session.completed").await?;
            t.wait_state(&session, "pending").await?;
            println!("payment pending: nothing credited yet");
            t.print_balance(&p.user).await?;
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
            t.print_balance(&p.user).await
        }
        What::Send { .. } => Ok(()),
        What::Replay { event_id } => {
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
                    t.print_balance(user).await?;
                }
            }
            Ok(())
        }
    }
}

struct Trigger {
    client: reqwest::Client,
    settings: Settings,
}

impl Trigger {
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
        let body = event["body"].as_str().context("no event body")?;
        let status = self.post_signed(body.as_bytes()).await?;
        println!(
            "event {} ({event_type}): ingest answered {status}",
            event["id"].as_str().unwrap_or("?")
        );
        if !status.is_success() {
            bail!("ingest did not accept the event");
        }
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
        let mut request = self
            .client
            .get(format!("{}{path}", self.settings.fulfill_url()));
        if let Some(token) = &self.settings.api_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.context("cannot reach fulfill")?;
        Ok(response.json().await.unwrap_or(Value::Null))
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

    async fn print_balance(&self, user: &str) -> anyhow::Result<()> {
        let path: String = user
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let balance = self.fulfill_get(&format!("/users/{path}/balance")).await?;
        println!("balance of {user}: {} credits", balance["credits"]);
        Ok(())
    }
}
