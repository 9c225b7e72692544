//! `fake-stripe`: the fake Stripe API as a process, for the dev stack and process-level
//! tests. Env: `FAKE_STRIPE_ADDR` (127.0.0.1:12111), `FAKE_STRIPE_API_KEY`
//! (sk_test_fake_stripe_key), `FAKE_STRIPE_SEED=1` to create the demo catalogue.
//! Prints `fake-stripe listening on <addr>` once ready; stops on SIGINT/SIGTERM.

use std::net::TcpListener;

use anyhow::Context;
use fake_stripe::{ADDR_VARIABLE, DEFAULT_ADDR, DEFAULT_API_KEY, FakeStripe, PriceSpec};

/// `(price id, name, price credits, product credits, unit amount)`.
type SeedPrice = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    i64,
);

/// The demo catalogue: fixed ids so the README can name them.
const SEED: [SeedPrice; 3] = [
    ("price_single_credit", "1 credit", Some("1"), None, 100),
    ("price_pack_10", "10-credit pack", None, Some("10"), 900),
    (
        "price_unmapped",
        "A product without credits metadata",
        None,
        None,
        500,
    ),
];

const HELP: &str = "fake-stripe: the fake Stripe API (checkout sessions, line items, charges, \
refunds, disputes, events) for the dev stack and tests.

Usage: fake-stripe [-h|--help]   (configured by environment only)

Environment variables:
  FAKE_STRIPE_ADDR     [127.0.0.1:12111]  HTTP listen address
  FAKE_STRIPE_API_KEY  [sk_test_fake_stripe_key]  the one API key it accepts
  FAKE_STRIPE_SEED     [unset]  1 = create the demo catalogue (price_single_credit, price_pack_10, price_unmapped)
";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "-h" || arg == "--help" {
            print!("{HELP}");
            return Ok(());
        }
        anyhow::bail!("fake-stripe takes no arguments (got {arg:?}); see --help");
    }
    let addr = std::env::var(ADDR_VARIABLE).unwrap_or_else(|_| DEFAULT_ADDR.to_owned());
    let key = std::env::var("FAKE_STRIPE_API_KEY").unwrap_or_else(|_| DEFAULT_API_KEY.to_owned());
    let listener = TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let fake = FakeStripe::start_on(listener, &key)?;
    if std::env::var("FAKE_STRIPE_SEED").is_ok_and(|v| v == "1") {
        for (id, name, credits, product_credits, unit_amount) in SEED {
            fake.create_price(PriceSpec {
                credits: credits.map(str::to_owned),
                product_credits: product_credits.map(str::to_owned),
                unit_amount,
                name: Some(name.to_owned()),
                id: Some(id.to_owned()),
                valid_days: None,
            });
        }
    }
    println!("fake-stripe listening on {local}");
    wait_for_signal().await;
    fake.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
