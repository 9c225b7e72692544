//! `fulfill` serves (default), `fulfill migrate` applies migrations and exits.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fulfill::{config::Config, db, startup::Application};
use secrecy::SecretString;
use shared::{config::ProcessEnv, shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "fulfill",
    version,
    about = "Turns paid Stripe Checkout Sessions into credits, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume checkout events and serve the HTTP API (the default).
    Serve,
    /// Apply pending database migrations (needs only DATABASE_URL) and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = Config::from_env(&ProcessEnv).context("invalid configuration")?;
    let _telemetry = telemetry::init("fulfill", &config.telemetry);
    let addr = config.addr;
    let shutdown = shutdown::on_signal();
    let app = Application::build(config)
        .await
        .with_context(|| format!("fulfill could not start (HTTP address {addr})"))?;
    tracing::info!(%addr, port = app.port(), "fulfill listening");
    app.run_until_stopped(shutdown)
        .await
        .context("fulfill stopped with an error")
}

async fn migrate() -> anyhow::Result<()> {
    let telemetry_config = telemetry::TelemetryConfig::from_env(&ProcessEnv)?;
    let _telemetry = telemetry::init("fulfill", &telemetry_config);
    let url = shared::config::required(&ProcessEnv, fulfill::config::DATABASE_URL)?;
    let applied = db::run_migrations(&SecretString::from(url))
        .await
        .context("migrations failed")?;
    println!(
        "migrations applied: {}",
        if applied.is_empty() {
            "none pending".to_owned()
        } else {
            applied.join(", ")
        }
    );
    Ok(())
}
