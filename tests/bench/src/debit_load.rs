//! Debits: fulfill's spending path against PostgreSQL's own TPC-B figure on this machine.
//!
//! 1. `pgbench -c 16 -j 2` (TPC-B, scale 16) on a database of its own: the reference.
//! 2. Two fulfill processes; 10,000 users with credits; wrk with 64 connections (32 per
//!    process), each request `POST /users/u<random>/debits` with a fresh Idempotency-Key:
//!    debits per second, p50/p99, and the ratio to pgbench.
//!    Then the same 64 connections paced to half that rate (each waits between requests):
//!    the latency below saturation.
//! 3. The same 64 connections on ONE user: the throughput of a single serialized balance
//!    row; then a balance of 500 credits drained by 64 connections: exactly 500 debits
//!    succeed, the balance ends at 0 (never below), the ledger holds each once.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use diesel::sql_query;
use diesel_async::RunQueryDsl;
use test_support::{broker::TestBroker, db::TestDb};

use crate::{
    bin_dir,
    cpu::{Account, Snapshot},
    peak_rss_mib,
};

const USERS: u32 = 10_000;
/// Credits of the user drained by 64 connections at once.
const DRAIN: i64 = 500;

struct WrkResult {
    ok: f64,
    failed: f64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// wrk against one fulfill: `connections` clients posting debits of 1 credit to a random
/// user among `users` (named `{user_prefix}{n}`), a unique Idempotency-Key per request.
/// Who is debited: users `{prefix}1..={users}`; with `delay_ms`, each connection waits
/// that long after an answer before its next request (paced, below saturation).
#[derive(Clone, Copy)]
struct Target<'a> {
    prefix: &'a str,
    users: u32,
    delay_ms: Option<u64>,
}

fn wrk_debits(
    base: &str,
    target: Target<'_>,
    connections: usize,
    seconds: u64,
    tag: &str,
    dir: &std::path::Path,
) -> anyhow::Result<std::process::Child> {
    let Target {
        prefix: user_prefix,
        users,
        delay_ms,
    } = target;
    // Paced: each connection waits this long after an answer before its next request.
    let delay = delay_ms
        .map(|ms| format!("function delay()\n  return {ms}\nend\n"))
        .unwrap_or_default();
    let script = format!(
        r#"local counter = 0
local threads = {{}}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function request()
  counter = counter + 1
  local path = "/users/{user_prefix}" .. math.random(1, {users}) .. "/debits"
  local headers = {{}}
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = "{tag}-" .. tid .. "-" .. counter
  return wrk.format("POST", path, headers, '{{"amount":1}}')
end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status
  io.write(string.format("BENCH %d %d %d %f %f\n", summary.requests, errors, summary.duration, latency:percentile(50), latency:percentile(99)))
end
{delay}"#
    );
    let path = dir.join(format!("debits-{tag}.lua"));
    std::fs::write(&path, script)?;
    Command::new("wrk")
        .args([
            "-t",
            "1",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&path)
        .arg(base)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("wrk (install it: apt-get install wrk, or use tests/bench/run.sh)")
}

fn wrk_result(child: std::process::Child) -> anyhow::Result<WrkResult> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("BENCH "))
        .with_context(|| format!("wrk output: {text}"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Ok(WrkResult {
        ok: (f[0] - f[1]).max(0.0),
        failed: f[1],
        seconds: f[2] / 1e6,
        p50_ms: f[3] / 1000.0,
        p99_ms: f[4] / 1000.0,
    })
}

/// Both fulfill processes loaded at once, half the connections each.
fn load(
    bases: &[String],
    user_prefix: &str,
    users: u32,
    seconds: u64,
    tag: &str,
    delay_ms: Option<u64>,
    dir: &std::path::Path,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let children: Vec<_> = bases
        .iter()
        .enumerate()
        .map(|(i, base)| {
            wrk_debits(
                base,
                Target {
                    prefix: user_prefix,
                    users,
                    delay_ms,
                },
                64 / bases.len(),
                seconds,
                &format!("{tag}{i}"),
                dir,
            )
        })
        .collect::<Result<_, _>>()?;
    let results: Vec<WrkResult> = children
        .into_iter()
        .map(wrk_result)
        .collect::<Result<_, _>>()?;
    let ok: f64 = results.iter().map(|r| r.ok / r.seconds).sum();
    let failed: f64 = results.iter().map(|r| r.failed).sum();
    // The larger of the two processes' percentiles (each wrk sees half the clients).
    let p50 = results.iter().map(|r| r.p50_ms).fold(0.0, f64::max);
    let p99 = results.iter().map(|r| r.p99_ms).fold(0.0, f64::max);
    Ok((ok, failed, p50, p99))
}

pub fn pgbench_tps(db: &TestDb, seconds: u64) -> anyhow::Result<f64> {
    Ok(pgbench_measured(db, seconds)?.0)
}

/// [`pgbench_tps`] and the CPU account of its run (not of `pgbench -i`), per transaction.
pub fn pgbench_measured(db: &TestDb, seconds: u64) -> anyhow::Result<(f64, Account)> {
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "16"])
        .arg(&db.url)
        .output()
        .context("pgbench (PostgreSQL's contrib client)")?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    let (before, started) = (Snapshot::take(), Instant::now());
    let run = Command::new("pgbench")
        .args(["-c", "16", "-j", "2", "-n", "-T", &seconds.to_string()])
        .arg(&db.url)
        .output()?;
    let (after, elapsed) = (Snapshot::take(), started.elapsed());
    let text = String::from_utf8_lossy(&run.stdout);
    let tps: f64 = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("pgbench output: {text}"))?;
    let transactions = (tps * seconds as f64) as u64;
    Ok((tps, before.per_message(&after, transactions, elapsed)))
}

/// Users with credits, written as the migration writes existing balances (entry, balance
/// row, one non-expiring lot) — seeding through the API would take longer than the run.
async fn seed(db: &TestDb, prefix: &str, users: u32, credits: i64) -> anyhow::Result<()> {
    let mut conn = db.connect().await;
    for sql in [
        format!(
            "INSERT INTO ledger_entries (user_id, delta, reason, idempotency_key, sequence) \
             SELECT '{prefix}' || i, {credits}, 'grant', 'seed:{prefix}' || i, 1 \
             FROM generate_series(1, {users}) i"
        ),
        format!(
            "INSERT INTO balances (user_id, credits, sequence) \
             SELECT '{prefix}' || i, {credits}, 1 FROM generate_series(1, {users}) i"
        ),
        format!(
            "INSERT INTO credit_lots (user_id, credits, remaining) \
             SELECT '{prefix}' || i, {credits}, {credits} FROM generate_series(1, {users}) i"
        ),
    ] {
        sql_query(sql).execute(&mut conn).await?;
    }
    sql_query("ANALYZE").execute(&mut conn).await?;
    Ok(())
}

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let bins = bin_dir();
    if !bins.join("fulfill").exists() {
        bail!("build first: cargo build --release --bin fulfill (or use tests/bench/run.sh)");
    }
    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let reference = TestDb::new().await;
    let logs = e2e::log_dir("bench-debits");
    let mut procs = Vec::new();
    let mut bases = Vec::new();
    for i in 0..2 {
        let (p, base) = crate::start_ready(
            &format!("fulfill-{i}"),
            "FULFILL_ADDR",
            &[
                ("DATABASE_URL", db.url.clone()),
                ("DATABASE_POOL_SIZE", "8".into()),
                ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.into()),
                ("STRIPE_API_BASE", "http://127.0.0.1:9".into()),
                ("AMQP_URL", broker.url.clone()),
                ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
                ("RUST_LOG", "warn".into()),
            ],
            &logs,
            Duration::from_secs(60),
        )
        .await?;
        procs.push(p);
        bases.push(base);
    }
    seed(&db, "u", USERS, 1_000_000_000).await?;
    seed(&db, "one", 1, 1_000_000_000).await?;
    seed(&db, "drain", 1, DRAIN).await?;

    println!("\n## debits (2 fulfill processes, 64 connections, {seconds} s per run)");
    let pg = pgbench_tps(&reference, seconds)?;
    println!("pgbench -c 16 -j 2 (TPC-B, scale 16): {pg:.0} tps");
    drop(reference);

    // Warm-up (connections, prepared statements), then the measured run.
    load(&bases, "u", USERS, 2, "warm", None, &logs)?;
    let (tps, failed, p50, p99) = load(&bases, "u", USERS, seconds, "many", None, &logs)?;
    println!(
        "{USERS} users: {tps:.0} debits/s, p50 {p50:.2} ms, p99 {p99:.2} ms, {failed} failed; \
         {:.0} % of pgbench",
        100.0 * tps / pg
    );
    // Below saturation: the same 64 connections offering about half that rate.
    let delay = (64_000.0 / (tps / 2.0).max(1.0) - 2.0).max(1.0) as u64;
    let (paced, failed_paced, p50_paced, p99_paced) =
        load(&bases, "u", USERS, seconds, "paced", Some(delay), &logs)?;
    println!(
        "{USERS} users paced ({delay} ms between requests per connection): {paced:.0} debits/s \
         ({:.0} % of pgbench), p50 {p50_paced:.2} ms, p99 {p99_paced:.2} ms, {failed_paced} failed",
        100.0 * paced / pg
    );
    let (one, failed_one, p50_one, p99_one) = load(&bases, "one", 1, seconds, "one", None, &logs)?;
    println!(
        "one user: {one:.0} debits/s (one serialized balance row), p50 {p50_one:.2} ms, \
         p99 {p99_one:.2} ms, {failed_one} failed"
    );
    // Long enough to drain it at the one-row rate just measured, then keep pushing.
    let drain_secs = ((DRAIN as f64 / one.max(1.0)).ceil() as u64 + 3).min(60);
    let (_, refused, _, _) = load(&bases, "drain", 1, drain_secs, "drain", None, &logs)?;
    let balance = crate::scalar(
        &db,
        "SELECT credits AS n FROM balances WHERE user_id = 'drain1'",
    )
    .await?;
    let debits = crate::scalar(
        &db,
        "SELECT count(*) AS n FROM ledger_entries WHERE user_id = 'drain1' AND reason = 'debit'",
    )
    .await?;
    let distinct = crate::scalar(
        &db,
        "SELECT count(DISTINCT debit_id) AS n FROM ledger_entries \
         WHERE user_id = 'drain1' AND reason = 'debit'",
    )
    .await?;
    println!(
        "one user with {DRAIN} credits, 64 connections for {drain_secs} s: {debits} debits \
         succeeded ({distinct} distinct), {refused} refused (409), balance {balance}: overdraft {}",
        if balance == 0 && debits == DRAIN && distinct == DRAIN {
            "0"
        } else {
            "FOUND"
        }
    );
    for (i, p) in procs.iter_mut().enumerate() {
        println!("fulfill-{i} peak RSS {:.0} MiB", peak_rss_mib(p.pid()));
        p.terminate(Duration::from_secs(10));
    }
    if balance < 0 || debits > DRAIN {
        bail!("overdraft: balance {balance}, {debits} debits");
    }
    Ok(())
}
