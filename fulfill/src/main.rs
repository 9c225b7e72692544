//! `fulfill` serves (default); `fulfill migrate` applies migrations; `fulfill reconcile`
//! heals from Stripe's Events API; `fulfill dlq …` inspects and replays dead letters.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fulfill::{
    config::Config, db, dlq::DeadLetters, reconcile, services::Services, startup::Application,
};
use secrecy::SecretString;
use shared::{config::ProcessEnv, shutdown, telemetry};

/// mimalloc rather than glibc's malloc, as in ingest: fewer instructions per allocation and
/// no arena lock shared by the runtime's workers and the broker I/O thread (malloc and
/// free were ~7 % of fulfill's samples draining settled redeliveries; BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fulfill",
    version,
    about = "Turns paid Stripe Checkout Sessions into credits, exactly once",
    after_help = shared::config::help(
        "Every command is configured by environment only.",
        &fulfill::config::variables()
    )
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
    /// Credit what webhooks missed: page through Stripe's events and complete sessions.
    Reconcile {
        /// How far back, e.g. 72h, 3d (at most 30 days, Stripe's event retention).
        /// Without it: from where the last run got to (72h the first time).
        #[arg(long)]
        since: Option<String>,
        /// A Stripe Connect account (acct_...): reconcile its events and sessions (listed
        /// with Stripe-Account) instead of the platform's.
        #[arg(long)]
        account: Option<String>,
    },
    /// Inspect, replay or drop dead-lettered messages (needs only AMQP_URL).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The broker's queues and their arguments (needs only AMQP_URL).
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Move an older topology's queues (and every message in them) to the current version.
    /// Run with fulfill stopped; ingest may keep running.
    Migrate,
    /// Exit 0 when every queue has the current arguments, 1 with their names otherwise.
    Check,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per message: id, kind, attempts, event type, reason.
    List,
    /// One message in full (JSON).
    Show { id: String },
    /// Put messages back into the checkout queue (after fixing the cause).
    Replay {
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// The id shown by `list`.
        id: Option<String>,
    },
    /// Drop every dead letter (each is logged).
    Purge,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
        Command::Reconcile { since, account } => reconcile_once(since, account).await,
        Command::Dlq { command } => dlq(command).await,
        Command::Topology { command } => fulfill::topology_migrate::run(command.into()).await,
    }
}

impl From<TopologyCommand> for fulfill::topology_migrate::Action {
    fn from(command: TopologyCommand) -> Self {
        match command {
            TopologyCommand::Migrate => Self::Migrate,
            TopologyCommand::Check => Self::Check,
        }
    }
}

async fn reconcile_once(since: Option<String>, account: Option<String>) -> anyhow::Result<()> {
    let account = fulfill::domain::account::Account::parse(account.as_deref())
        .context("--account must be a Stripe account id (acct_...)")?;
    let since = since
        .as_deref()
        .map(reconcile::parse_duration)
        .transpose()?;
    if let Some(s) = since
        && s > reconcile::MAX_LOOKBACK
    {
        anyhow::bail!(reconcile::ReconcileError::TooFarBack(s));
    }
    let config = Config::from_env(&ProcessEnv).context("invalid configuration")?;
    let _telemetry = telemetry::init("fulfill", &config.telemetry);
    db::run_migrations(&config.database_url)
        .await
        .context("migrations failed")?;
    let services = Services::build(&config)?;
    let report = reconcile::run(&services, &account, since).await?;
    println!("{report}");
    if report.errors > 0 {
        anyhow::bail!("{} items failed; run again to retry them", report.errors);
    }
    Ok(())
}

async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    let telemetry_config = telemetry::TelemetryConfig::from_env(&ProcessEnv)?;
    let _telemetry = telemetry::init("fulfill", &telemetry_config);
    let amqp = shared::config::AmqpConfig::from_env(&ProcessEnv)?;
    let mut letters = DeadLetters::open(&amqp)
        .await
        .context("cannot read the dead-letter queue")?;
    let result = match command {
        DlqCommand::List => {
            let all = letters.list();
            for l in &all {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    l.id,
                    l.kind.as_deref().unwrap_or("-"),
                    l.attempts.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    l.routing_key.as_deref().unwrap_or("-"),
                    l.reason.as_deref().unwrap_or("-"),
                );
            }
            println!("{} dead letters", all.len());
            Ok(())
        }
        DlqCommand::Show { id } => match letters.list().into_iter().find(|l| l.id == id) {
            Some(l) => {
                println!("{}", serde_json::to_string_pretty(&l)?);
                Ok(())
            }
            None => Err(anyhow::anyhow!("no dead letter with id {id:?}")),
        },
        DlqCommand::Replay { all, id } => {
            if !all && id.is_none() {
                Err(anyhow::anyhow!("name a message id, or --all"))
            } else {
                match letters.replay(id.as_deref()).await {
                    Ok(ids) => {
                        for id in &ids {
                            println!("replayed {id}");
                        }
                        println!("{} replayed", ids.len());
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
        DlqCommand::Purge => letters
            .purge()
            .await
            .map(|dropped| println!("{} purged", dropped.len()))
            .map_err(Into::into),
    };
    let closed = letters.close().await;
    result.and(closed.context("cannot put the dead letters back"))
}

async fn serve() -> anyhow::Result<()> {
    let config = Config::from_env(&ProcessEnv).context("invalid configuration")?;
    let telemetry = telemetry::init("fulfill", &config.telemetry);
    let addr = config.addr;
    let shutdown = shutdown::on_signal();
    let app = Application::build(config)
        .await
        .with_context(|| format!("fulfill could not start (HTTP address {addr})"))?;
    tracing::info!(%addr, port = app.port(), "fulfill listening");
    let stopped = app
        .run_until_stopped(shutdown)
        .await
        .context("fulfill stopped with an error");
    // Last: the spans of the deliveries drained above are complete only now.
    telemetry.shutdown();
    stopped
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
