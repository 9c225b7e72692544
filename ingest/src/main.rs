//! `ingest` runs the webhook service, configured by environment only.

use anyhow::Context;
use ingest::{config::Config, startup::Application};
use shared::{config::ProcessEnv, shutdown, telemetry};

/// mimalloc rather than glibc's malloc: fewer instructions per allocation and no lock
/// shared by the HTTP workers and the broker I/O thread (tests/bench/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            print!("{}", help());
            return Ok(());
        }
        Some("-V" | "--version") => {
            println!("ingest {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(arg) => anyhow::bail!(
            "ingest takes no arguments (got {arg:?}); it is configured by environment (see --help)"
        ),
    }
    let config = Config::from_env(&ProcessEnv).context("invalid configuration")?;
    let telemetry = telemetry::init("ingest", &config.telemetry);
    let addr = config.addr;
    let app = Application::build(config).with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, port = app.port(), "ingest listening");
    let shutdown = shutdown::on_signal();
    let stopped = app
        .run_until_stopped(shutdown)
        .await
        .context("ingest stopped with an error");
    // Last: the spans of the requests drained above are complete only now.
    telemetry.shutdown();
    stopped
}

fn help() -> String {
    shared::config::help(
        "ingest: receives Stripe webhooks, verifies Stripe-Signature and publishes them to \
         RabbitMQ, answering 200 only after the broker's confirm.\n\n\
         Usage: ingest [-h|--help] [-V|--version]   (configured by environment only)",
        &ingest::config::variables(),
    )
}
