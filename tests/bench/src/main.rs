//! `bench`: the two numbers that decide whether this system beats a hand-written handler.
//!
//! - `bench ingest`: the raw ceiling of the local RabbitMQ for this workload (persistent
//!   ~3.4 KB events, published with confirms to the quorum queue by a minimal lapin
//!   publisher, many confirms outstanding), alternating with the real ingest binary loaded
//!   over HTTP by wrk at concurrency 1, 16 and 64 with validly signed requests, and
//!   `passthrough` (actix-web + lapin in ingest's shape with nothing between: the floor
//!   under ingest) at 64 right after. Checks that the queue holds every 2xx answer; prints
//!   req/s, p50/p99, ingest's peak RSS and the ratios ingest ÷ ceiling and ÷ floor.
//! - `bench fulfill`: two fulfill processes against the fake Stripe at 150 ms latency with a
//!   budget of 25/s and of 100/s (enforced by the fake, as Stripe does), 2,000 sessions with
//!   30 % duplicate deliveries: sessions credited per second, Stripe calls per credited
//!   session, 429s, end-to-end latency below saturation, peak RSS per process.
//! - `bench debits`: two fulfill processes spending credits (64 connections over 10,000
//!   users, then on one user) against `pgbench -c 16` on the same machine in the same run.
//! - `bench throughput`: fulfill's own cost with Stripe not binding (a stand-in answering at
//!   once, a budget far above the load): 4,000 queued purchases credited by two processes,
//!   the same events redelivered (settled), against `pgbench -c 16` in the same run; and
//!   the statements and commits per credited session, from `pg_stat_statements`.
//! - `bench ingest-cpu`: ingest's instructions per request under callgrind (runs of `n` and
//!   `2n` requests, subtracted), with the top functions; repeatable where wall clock is not.
//!
//! Run through `tests/bench/run.sh` (release build, installs wrk).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cpu;
mod debit_load;
mod fulfill_load;
mod ingest_cpu;
mod ingest_load;
mod throughput;

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

#[derive(Parser)]
struct Cli {
    #[arg(value_enum, default_value = "all")]
    what: What,
    /// Runs per configuration (ingest-cpu: pairs of callgrind runs).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Sessions for the fulfill benchmark.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Purchases queued for the throughput benchmark.
    #[arg(long, default_value_t = 4000)]
    purchases: usize,
    /// ingest-cpu: requests of the smaller run (the larger sends twice as many).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// ingest-cpu: keep-alive connections the requests are sent over.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// ingest-cpu: ingest's RUST_LOG (default: what ingest uses when it is unset).
    #[arg(long, default_value = "info,lapin=warn,actix_server=warn")]
    log: String,
    /// ingest-cpu: the ingest binary to count (default: the one next to this binary), e.g.
    /// a copy of an earlier build to compare with.
    #[arg(long)]
    ingest: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum What {
    All,
    Ingest,
    Fulfill,
    Debits,
    Throughput,
    /// Not part of `all`: ingest's instructions per request under callgrind.
    IngestCpu,
}

/// Where the release binaries are: next to this one.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// Starts one of the release binaries listening on a free port (`addr_var` names the
/// variable that sets it) and waits until its `/readyz` answers; returns it and its base
/// URL.
pub async fn start_ready(
    name: &str,
    addr_var: &str,
    env: &[(&str, String)],
    logs: &Path,
    ready_within: std::time::Duration,
) -> anyhow::Result<(e2e::Proc, String)> {
    let port = e2e::free_port();
    let mut env = env.to_vec();
    env.push((addr_var, format!("127.0.0.1:{port}")));
    let binary = name.split('-').next().unwrap_or(name);
    let proc = e2e::Proc::start(name, &bin_dir().join(binary), &[], &env, logs);
    let base = format!("http://127.0.0.1:{port}");
    if !e2e::wait_ok(
        &test_support::http_client(),
        &format!("{base}/readyz"),
        ready_within,
    )
    .await
    {
        anyhow::bail!("{name} did not start:\n{}", proc.output());
    }
    Ok((proc, base))
}

/// ingest with `secret`, on `broker`'s topology, logging warnings only.
pub async fn start_ingest(
    broker: &test_support::broker::TestBroker,
    secret: &str,
    logs: &Path,
) -> anyhow::Result<(e2e::Proc, String)> {
    start_ready(
        "ingest",
        "INGEST_ADDR",
        &[
            ("STRIPE_WEBHOOK_SECRET", secret.to_owned()),
            ("AMQP_URL", broker.url.clone()),
            ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
            ("RUST_LOG", "warn".into()),
        ],
        logs,
        std::time::Duration::from_secs(30),
    )
    .await
}

/// The `n` (a bigint) of the first row `sql` returns on `db`; 0 without rows.
pub async fn scalar(db: &test_support::db::TestDb, sql: &str) -> anyhow::Result<i64> {
    use diesel::{QueryableByName, sql_query, sql_types::BigInt};
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = db.connect().await;
    let rows: Vec<Row> = sql_query(sql).load(&mut conn).await?;
    Ok(<[Row]>::first(&rows).map_or(0, |r| r.n))
}

/// Peak resident set size of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    println!("machine: {}", machine());
    if matches!(cli.what, What::All | What::Ingest) {
        ingest_load::run(cli.runs, cli.seconds).await?;
    }
    if matches!(cli.what, What::All | What::Fulfill) {
        fulfill_load::run(cli.sessions).await?;
    }
    if matches!(cli.what, What::All | What::Throughput) {
        throughput::run(cli.runs, cli.purchases, cli.seconds.max(10)).await?;
    }
    if matches!(cli.what, What::All | What::Debits) {
        debit_load::run(cli.seconds.max(10)).await?;
    }
    if cli.what == What::IngestCpu {
        let ingest = cli.ingest.unwrap_or_else(|| bin_dir().join("ingest"));
        ingest_cpu::run(&ingest, cli.requests, cli.concurrency, &cli.log, cli.runs).await?;
    }
    Ok(())
}
