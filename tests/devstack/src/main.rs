//! `devstack`: the newcomer's path.
//!
//! - `devstack up [--fresh]` builds and starts the whole stack on this machine: uses the
//!   RabbitMQ and PostgreSQL that answer on the configured addresses, or starts private ones
//!   from the installed packages (data under `target/devstack/`, kept across runs unless
//!   `--fresh`); creates the database, starts fulfill (which applies the migrations and
//!   declares the topology) and ingest, and — when no `STRIPE_SECRET_KEY` is set — a fake
//!   Stripe with a demo catalogue. Ctrl-C stops everything in order.
//! - `devstack trigger …` plays what Stripe and a website do through it — purchases,
//!   refunds, disputes, debits, holds, grants — and prints the balance before and after.
//! - `devstack events [pattern]` tails the credit events on `credits.events`;
//!   `devstack attention` lists the sessions that need an operator.
//!
//! Configuration is the services' own environment variables, with local defaults.

mod attention;
mod events;
mod infra;
mod spending;
mod stack;
mod trigger;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "devstack",
    about = "Run the stack locally and play purchases, refunds, disputes and spending through it",
    long_about = "Run the stack locally and play purchases, refunds, disputes and spending through it.\n\n\
        Every address is the services' own variable (AMQP_URL, DATABASE_URL, INGEST_ADDR, \
        FULFILL_ADDR, FAKE_STRIPE_ADDR, STRIPE_SECRET_KEY, FULFILL_API_TOKEN…) with a local \
        default; DEVSTACK_DATA_DIR (default target/devstack) holds the private servers' data."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start RabbitMQ and PostgreSQL if nothing answers (private ones, data in
    /// target/devstack/), build and start fake Stripe (without STRIPE_SECRET_KEY), fulfill
    /// and ingest; Ctrl-C stops everything.
    Up {
        /// Start the private RabbitMQ and PostgreSQL from empty data (their balances gone).
        #[arg(long)]
        fresh: bool,
    },
    /// Play an event or a spending call through the running stack; prints the balance
    /// before and after.
    Trigger {
        #[command(subcommand)]
        what: trigger::What,
    },
    /// Print every credit event fulfill announces (a queue bound to credits.events).
    Events {
        /// Routing-key pattern: `credits.#`, `credits.debit`, `session.needs_attention`…
        #[arg(default_value = "#")]
        pattern: String,
    },
    /// List the sessions that need an operator (not credited, or flagged after a reversal).
    Attention {
        /// How many, newest first (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up { fresh } => stack::up(stack::Settings::from_env(), fresh).await,
        Command::Trigger { what } => trigger::run(what, &stack::Settings::of_running_stack()).await,
        Command::Events { pattern } => {
            events::tail(&stack::Settings::of_running_stack(), &pattern).await
        }
        Command::Attention { limit } => {
            attention::list(&stack::Settings::of_running_stack(), limit).await
        }
    }
}
