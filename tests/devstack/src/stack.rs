//! `devstack up`: the broker and database (the configured ones, or private ones), the
//! services built and started in order, a banner, and an ordered stop on Ctrl-C.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use diesel::{OptionalExtension, QueryableByName, sql_query, sql_types::Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::{
    process::{Child, Command},
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::infra::{self, Infra};

pub const DEV_WEBHOOK_SECRET: &str = "whsec_devstack_local_only";

/// Where everything runs. Each field is the service's own variable, with a local default.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ingest_addr: String,
    pub fulfill_addr: String,
    pub fake_stripe_addr: String,
    pub database_url: String,
    pub amqp_url: String,
    pub webhook_secret: String,
    /// `None`: run the fake Stripe.
    pub stripe_secret_key: Option<String>,
    pub api_token: Option<String>,
    /// `DEVSTACK_DATA_DIR`, by default `target/devstack`: the private servers' data, where
    /// a running `up` says which broker it uses, and the ids `last` stands for.
    pub data_dir: PathBuf,
}

/// The file a running `devstack up` writes in the data folder: the `AMQP_URL` and
/// `DATABASE_URL` it uses, when they are private servers the environment does not name.
const RUNNING_FILE: &str = "running.env";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Settings {
    pub fn from_env() -> Self {
        Self {
            ingest_addr: var("INGEST_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into()),
            fulfill_addr: var("FULFILL_ADDR").unwrap_or_else(|| "127.0.0.1:8081".into()),
            fake_stripe_addr: var("FAKE_STRIPE_ADDR").unwrap_or_else(|| "127.0.0.1:12111".into()),
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/stripe_credits".into()),
            amqp_url: var("AMQP_URL")
                .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            webhook_secret: var("STRIPE_WEBHOOK_SECRET")
                .unwrap_or_else(|| DEV_WEBHOOK_SECRET.into()),
            stripe_secret_key: var("STRIPE_SECRET_KEY"),
            api_token: var("FULFILL_API_TOKEN"),
            data_dir: var("DEVSTACK_DATA_DIR").map_or_else(default_data_dir, PathBuf::from),
        }
    }

    /// For the commands that talk to a running `up`: the broker and database it runs
    /// privately, unless the environment names them.
    pub fn of_running_stack() -> Self {
        let mut settings = Self::from_env();
        let running =
            std::fs::read_to_string(settings.data_dir.join(RUNNING_FILE)).unwrap_or_default();
        for line in running.lines() {
            match line.split_once('=') {
                Some(("AMQP_URL", url)) if var("AMQP_URL").is_none() => {
                    settings.amqp_url = url.to_owned();
                }
                Some(("DATABASE_URL", url)) if var("DATABASE_URL").is_none() => {
                    settings.database_url = url.to_owned();
                }
                _ => {}
            }
        }
        settings
    }

    pub fn fake_stripe(&self) -> bool {
        self.stripe_secret_key.is_none()
    }

    pub fn ingest_url(&self) -> String {
        url(&self.ingest_addr)
    }

    pub fn fulfill_url(&self) -> String {
        url(&self.fulfill_addr)
    }

    pub fn fake_stripe_url(&self) -> String {
        url(&self.fake_stripe_addr)
    }
}

/// `target/devstack`, next to the `debug`/`release` folder this binary runs from.
fn default_data_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("devstack")))
        .unwrap_or_else(|| PathBuf::from("target/devstack"))
}

/// `0.0.0.0:8080` → `http://127.0.0.1:8080`.
fn url(addr: &str) -> String {
    format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1"))
}

/// The first Ctrl-C or SIGTERM, whenever it comes (during start-up too: what started
/// is then stopped in order instead of being left behind).
fn stop_requests() -> anyhow::Result<watch::Receiver<Option<&'static str>>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let reason = tokio::select! {
            _ = interrupt.recv() => "Ctrl-C",
            _ = terminate.recv() => "SIGTERM",
        };
        let _ = tx.send(Some(reason));
    });
    Ok(rx)
}

/// The file holding the pid of the `up` that uses a data folder.
const PID_FILE: &str = "up.pid";

/// Claims the data folder for this `up`: two would start servers on the same data.
fn claim(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let pid_file = data_dir.join(PID_FILE);
    if let Ok(pid) = std::fs::read_to_string(&pid_file)
        && let Ok(pid) = pid.trim().parse::<u32>()
        && pid != std::process::id()
        && std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        bail!(
            "another devstack up (pid {pid}) runs with {}; stop it first, or set \
             DEVSTACK_DATA_DIR to another folder",
            data_dir.display()
        );
    }
    std::fs::write(&pid_file, std::process::id().to_string())?;
    Ok(())
}

pub async fn up(mut settings: Settings, fresh: bool) -> anyhow::Result<()> {
    let stop = stop_requests()?;
    claim(&settings.data_dir)?;
    let result = up_claimed(&mut settings, fresh, stop).await;
    let _ = std::fs::remove_file(settings.data_dir.join(PID_FILE));
    result
}

async fn up_claimed(
    settings: &mut Settings,
    fresh: bool,
    stop: watch::Receiver<Option<&'static str>>,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(settings.data_dir.join(RUNNING_FILE));
    let mut infra = infra::prepare(
        &settings.amqp_url,
        &settings.database_url,
        &settings.data_dir,
        fresh,
    )
    .await?;
    let mut children: Vec<(&str, Child)> = Vec::new();
    let started = start(settings, &mut infra, &stop, &mut children).await;
    if let Err(e) = started {
        stop_all(&mut children).await;
        infra.stop().await;
        return Err(e);
    }
    print_banner(settings, &infra);

    let reason = wait_for_stop(stop, &mut children).await;
    println!("\nstopping ({reason})…");
    stop_all(&mut children).await;
    infra.stop().await;
    let _ = std::fs::remove_file(settings.data_dir.join(RUNNING_FILE));
    println!("stack stopped");
    Ok(())
}

/// Everything after the broker and database: build, database, services.
async fn start(
    settings: &mut Settings,
    infra: &mut Infra,
    stop: &watch::Receiver<Option<&'static str>>,
    children: &mut Vec<(&'static str, Child)>,
) -> anyhow::Result<()> {
    settings.amqp_url = infra.amqp_url.clone();
    settings.database_url = infra.database_url.clone();
    if infra.rabbit.is_some() || infra.postgres.is_some() {
        std::fs::write(
            settings.data_dir.join(RUNNING_FILE),
            format!(
                "AMQP_URL={}\nDATABASE_URL={}\n",
                settings.amqp_url, settings.database_url
            ),
        )?;
    }
    let interrupted = || -> anyhow::Result<()> {
        match *stop.borrow() {
            Some(reason) => bail!("{reason} while starting"),
            None => Ok(()),
        }
    };
    let with_fake = settings.fake_stripe();
    let bin_dir = tokio::task::spawn_blocking(move || build_binaries(with_fake)).await??;
    interrupted()?;
    create_database(&settings.database_url).await?;
    interrupted()?;
    let client = crate::trigger::http_client();
    start_all(settings, &bin_dir, &client, children).await?;
    interrupted()
}

async fn start_all(
    settings: &Settings,
    bin_dir: &Path,
    client: &reqwest::Client,
    children: &mut Vec<(&'static str, Child)>,
) -> anyhow::Result<()> {
    let stripe_base = if settings.fake_stripe() {
        let child = Command::new(bin_dir.join("fake-stripe"))
            .env("FAKE_STRIPE_ADDR", &settings.fake_stripe_addr)
            .env("FAKE_STRIPE_API_KEY", fake_stripe::DEFAULT_API_KEY)
            .env("FAKE_STRIPE_SEED", "1")
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start fake-stripe")?;
        children.push(("fake-stripe", child));
        wait_healthy(
            client,
            &format!("{}/_fake/knobs", settings.fake_stripe_url()),
            "fake-stripe",
            children,
        )
        .await?;
        settings.fake_stripe_url()
    } else {
        var("STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com".into())
    };
    let secret_key = settings
        .stripe_secret_key
        .clone()
        .unwrap_or_else(|| fake_stripe::DEFAULT_API_KEY.to_owned());

    let child = Command::new(bin_dir.join("fulfill"))
        .env("DATABASE_URL", &settings.database_url)
        .env("STRIPE_SECRET_KEY", secret_key)
        .env("STRIPE_API_BASE", stripe_base)
        .env("FULFILL_ADDR", &settings.fulfill_addr)
        .env("AMQP_URL", &settings.amqp_url)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start fulfill")?;
    children.push(("fulfill", child));
    wait_healthy(
        client,
        &format!("{}/readyz", settings.fulfill_url()),
        "fulfill (it applies the migrations and declares the RabbitMQ topology)",
        children,
    )
    .await?;

    let child = Command::new(bin_dir.join("ingest"))
        .env("STRIPE_WEBHOOK_SECRET", &settings.webhook_secret)
        .env("INGEST_ADDR", &settings.ingest_addr)
        .env("AMQP_URL", &settings.amqp_url)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start ingest")?;
    children.push(("ingest", child));
    wait_healthy(
        client,
        &format!("{}/readyz", settings.ingest_url()),
        "ingest",
        children,
    )
    .await?;
    Ok(())
}

/// Builds the service binaries with the cargo that runs us; returns their folder.
fn build_binaries(with_fake: bool) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate devstack's own binary")?;
    let bin_dir = exe
        .parent()
        .context("devstack binary has no folder")?
        .to_path_buf();
    if std::env::var("DEVSTACK_NO_BUILD").is_ok_and(|v| v == "1") {
        return Ok(bin_dir);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build", "-q", "--bin", "ingest", "--bin", "fulfill"];
    if with_fake {
        args.extend(["--bin", "fake-stripe"]);
    }
    if bin_dir.ends_with("release") {
        args.push("--release");
    }
    println!("building the services: cargo {}", args.join(" "));
    let status = std::process::Command::new(cargo)
        .args(&args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building the services failed");
    }
    Ok(bin_dir)
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    #[allow(dead_code)]
    datname: String,
}

/// Creates the database named in `url` if it does not exist (fulfill migrates it).
async fn create_database(url: &str) -> anyhow::Result<()> {
    let name = infra::split_database(url)?.1;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("database name {name:?} must be letters, digits and _");
    }
    let admin_url = infra::admin_url(url)?;
    println!("creating database {name} unless it exists…");
    let mut admin = AsyncPgConnection::establish(&admin_url)
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL as {} (is it running, and does DATABASE_URL name \
                 its user? the default, postgres://postgres@127.0.0.1:5432/stripe_credits, is \
                 what docker-compose.yml's postgres and the tests use; see README)",
                without_password(&admin_url)
            )
        })?;
    let exists = sql_query("SELECT datname FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(name)
        .get_result::<Name>(&mut admin)
        .await
        .optional()?
        .is_some();
    if !exists {
        sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        println!("created database {name}");
    }
    Ok(())
}

/// `scheme://user@host…` with any `:password` removed, for error messages.
pub fn without_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or(user);
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

async fn wait_healthy(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    children: &mut [(&'static str, Child)],
) -> anyhow::Result<()> {
    println!("waiting for {name} to answer {url}…");
    for _ in 0..300 {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        for (child_name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{child_name} exited ({status}) while starting");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{name} did not become ready at {url} within 30 s")
}

fn print_banner(s: &Settings, infra: &Infra) {
    let whose = |private: bool| if private { "private" } else { "configured" };
    println!();
    println!("The stack is up.");
    println!(
        "  RabbitMQ  {} ({})",
        without_password(&s.amqp_url),
        whose(infra.rabbit.is_some())
    );
    println!(
        "  Postgres  {} ({})",
        without_password(&s.database_url),
        whose(infra.postgres.is_some())
    );
    println!("  ingest    {}/webhooks/stripe", s.ingest_url());
    println!("            webhook secret: {}", s.webhook_secret);
    println!("  fulfill   {}/users/<user>/balance", s.fulfill_url());
    if s.fake_stripe() {
        println!(
            "  Stripe    fake, at {} (no Stripe account needed)",
            s.fake_stripe_url()
        );
        println!("            prices: price_single_credit (1 credit), price_pack_10 (10 credits),");
        println!("                    price_unmapped (no credits metadata: needs attention)");
        println!();
        println!("Send a first purchase (another terminal):");
        println!(
            "  cargo run -q -p devstack -- trigger purchase --user alice --price price_pack_10 --quantity 2"
        );
    } else {
        println!("  Stripe    the real API, with your STRIPE_SECRET_KEY");
        println!();
        println!(
            "Forward Stripe's events here (another terminal), then pay a test Checkout Session:"
        );
        println!(
            "  stripe listen --forward-to {}/webhooks/stripe",
            s.ingest_url()
        );
    }
    println!();
    println!("Ctrl-C stops everything.");
}

async fn wait_for_stop(
    mut stop: watch::Receiver<Option<&'static str>>,
    children: &mut [(&'static str, Child)],
) -> String {
    loop {
        if let Some(reason) = *stop.borrow() {
            return reason.into();
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for (name, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return format!("{name} exited: {status}");
                    }
                }
            }
        }
    }
}

/// SIGTERM in reverse start order (ingest first: no new events), then wait; SIGKILL after 30 s.
async fn stop_all(children: &mut Vec<(&'static str, Child)>) {
    while let Some((name, mut child)) = children.pop() {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) => println!("{name} stopped ({status})"),
            _ => {
                let _ = child.kill().await;
                println!("{name} killed after 30 s");
            }
        }
    }
}
