//! `devstack`: the newcomer's path.
//!
//! - `devstack up` builds and starts the whole stack on this machine (RabbitMQ and
//!   PostgreSQL must be running): creates the database, starts fulfill (which applies the
//!   migrations and declares the topology) and ingest, and — when no `STRIPE_SECRET_KEY`
//!   is set — a fake Stripe with a demo catalogue. Ctrl-C stops everything in order.
//! - `devstack trigger purchase|async-purchase|replay` plays a purchase through it like
//!   `stripe trigger`, but for credit packs, and prints the resulting balance.
//! - `devstack events [pattern]` tails the credit events on `credits.events`.
//!
//! Configuration is the services' own environment variables, with local defaults.

mod events;
mod stack;
mod trigger;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "devstack",
    about = "Run the stack locally and send it purchases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build and start fake Stripe (without STRIPE_SECRET_KEY), fulfill and ingest.
    Up,
    /// Send a purchase through the running stack and print the new balance.
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up => stack::up(stack::Settings::from_env()).await,
        Command::Trigger { what } => trigger::run(what, &stack::Settings::from_env()).await,
        Command::Events { pattern } => events::tail(&stack::Settings::from_env(), &pattern).await,
    }
}
