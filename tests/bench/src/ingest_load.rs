//! ingest against the broker ceiling.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions},
};
use test_support::broker::TestBroker;

use crate::{
    bin_dir,
    cpu::{Account, Snapshot},
    peak_rss_mib,
};

const SECRET: &str = "whsec_bench_secret";
/// Publishes outstanding at once for the ceiling: 1024, the window of the issue's own
/// ceiling measurement (issue #17), so the ratio is taken against the same ceiling. It
/// publishes for as long as each wrk run lasts (`--seconds`), so both meet the quorum
/// queue's periodic write stalls alike (it published 20,000 messages, about a second,
/// before 2026-12-02).
const WINDOW: usize = 1024;

/// The real delivered event, pretty-printed as Stripe sends it (3,429 bytes): two-space
/// indent, its keys in Stripe's order (`id` first; a `serde_json::Value` would sort them).
pub fn body() -> Vec<u8> {
    let raw = include_str!("../../fixtures/stripe/event_checkout_session_completed_basil.json");
    pretty(raw.trim()).into_bytes()
}

/// `compact` (valid JSON without whitespace) laid out as `serde_json::to_vec_pretty` does,
/// members kept in their order.
fn pretty(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() * 3 / 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = compact.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth -= 1;
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    out
}

async fn purge(conn: &Connection, queue: &str) -> anyhow::Result<u32> {
    let ch = conn.create_channel().await?;
    let n = ch
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    let _ = ch.close(200, "purged".into()).await;
    Ok(n)
}

/// Persistent confirmed publishes to the quorum queue, `WINDOW` outstanding: msgs/s.
async fn ceiling(
    broker: &TestBroker,
    conn: &Connection,
    body: &[u8],
    seconds: u64,
) -> anyhow::Result<(f64, u64)> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange = broker.topology.events_exchange();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut inflight = FuturesUnordered::new();
    let mut total = 0_u64;
    while Instant::now() < deadline {
        total += 1;
        if inflight.len() >= WINDOW {
            let confirm: lapin::Confirmation = inflight.next().await.context("confirm")??;
            if !confirm.is_ack() {
                bail!("nack");
            }
        }
        let pending = ch
            .basic_publish(
                exchange.as_str().into(),
                "checkout.session.completed".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?;
        inflight.push(pending);
    }
    while let Some(c) = inflight.next().await {
        if !c?.is_ack() {
            bail!("nack");
        }
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    let held = purge(conn, &broker.topology.checkout_queue()).await?;
    if u64::from(held) != total {
        bail!("ceiling run: {held} held, {total} published");
    }
    Ok((rate, total))
}

/// The broker alone at the same shape as ingest under load: `concurrency` publishers, each
/// publishing one message and waiting for its confirm before the next. Returns (msg/s, p50
/// ms, p99 ms, messages confirmed): the latency floor any confirm-before-2xx endpoint
/// inherits.
async fn broker_at_concurrency(
    broker: &TestBroker,
    conn: &Connection,
    body: &[u8],
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange = broker.topology.events_exchange();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let ch = ch.clone();
        let exchange = exchange.clone();
        async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        "checkout.session.completed".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if !confirm.is_ack() {
                    bail!("nack");
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        }
    });
    let mut all = Vec::new();
    for r in futures_util::future::join_all(workers).await {
        all.extend(r?);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    purge(conn, &broker.topology.checkout_queue()).await?;
    all.sort_by(|a, b| a.total_cmp(b));
    let pick = |p: f64| {
        all.get(((all.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok((rate, pick(0.5), pick(0.99), all.len() as u64))
}

struct WrkResult {
    ok: u64,
    /// Messages the queue held after the run (set by `loaded`).
    held: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The endpoint's CPU time (user + system, all threads) per 2xx, set by the caller
    /// from the run's account: unlike req/s it hardly moves when the load generator or
    /// the broker get less of the shared cores.
    cpu_us: f64,
}

fn wrk(
    url: &str,
    body: &[u8],
    concurrency: usize,
    seconds: u64,
    dir: &std::path::Path,
) -> anyhow::Result<WrkResult> {
    let signature = fake_stripe::sign_webhook(body, SECRET, fake_stripe::now());
    let script = format!(
        r#"wrk.method = "POST"
wrk.body = [==[{}]==]
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["Stripe-Signature"] = "{signature}"
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status
  io.write(string.format("BENCH %d %d %d %f %f\n", summary.requests, errors, summary.duration, latency:percentile(50), latency:percentile(99)))
end
"#,
        String::from_utf8_lossy(body)
    );
    let path = dir.join("post.lua");
    std::fs::write(&path, script)?;
    let threads = concurrency.clamp(1, 2);
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &concurrency.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&path)
        .arg(url)
        .output()
        .context("wrk (install it: apt-get install wrk, or use tests/bench/run.sh)")?;
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
    let (requests, errors, micros, p50, p99) = (f[0], f[1], f[2], f[3], f[4]);
    let ok = (requests - errors).max(0.0);
    Ok(WrkResult {
        ok: ok as u64,
        held: 0,
        rps: ok / (micros / 1e6),
        p50_ms: p50 / 1000.0,
        p99_ms: p99 / 1000.0,
        cpu_us: 0.0,
    })
}

/// One wrk run against `url` at `concurrency`, with the CPU account of the run and the
/// check that the queue held every 2xx (then purged).
async fn loaded(
    conn: &Connection,
    broker: &TestBroker,
    url: &str,
    body: &[u8],
    concurrency: usize,
    seconds: u64,
    logs: &std::path::Path,
) -> anyhow::Result<(WrkResult, Account)> {
    let (before, started) = (Snapshot::take(), Instant::now());
    let mut r = wrk(url, body, concurrency, seconds, logs)?;
    // Taken when wrk ends: the wait and the purge below are no part of the phase.
    let cpu = before.per_message(&Snapshot::take(), r.ok, started.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.held = u64::from(purge(conn, &broker.topology.checkout_queue()).await?);
    // Requests cut off by wrk's deadline may be published without wrk counting the
    // answer; a 2xx without a held message would be a lost event.
    if r.held < r.ok || r.held > r.ok + concurrency as u64 {
        bail!(
            "{url} at c={concurrency}: {} answered 2xx but the queue held {}",
            r.ok,
            r.held
        );
    }
    Ok((r, cpu))
}

/// Starts `name` (listening on `{NAME}_ADDR`) with `env` and whichever of `settings` are
/// set in the bench's own environment, passed on and printed.
async fn start_with(
    name: &str,
    mut env: Vec<(&'static str, String)>,
    settings: &[&'static str],
    logs: &std::path::Path,
) -> anyhow::Result<(e2e::Proc, String)> {
    for &setting in settings {
        if let Ok(value) = std::env::var(setting) {
            println!("{name} with {setting}={value}");
            env.push((setting, value));
        }
    }
    let addr_var = format!("{}_ADDR", name.to_uppercase());
    crate::start_ready(name, &addr_var, &env, logs, Duration::from_secs(30)).await
}

pub async fn run(runs: usize, seconds: u64) -> anyhow::Result<()> {
    let bins = bin_dir();
    if !bins.join("ingest").exists() {
        bail!("build first: cargo build --release --bin ingest (or use tests/bench/run.sh)");
    }
    let broker = TestBroker::new().await;
    let conn = Connection::connect(&broker.url, ConnectionProperties::default()).await?;
    let body = body();
    println!(
        "\n## ingest vs the broker ceiling (body {} bytes, quorum queue, persistent, confirms)",
        body.len()
    );
    let logs = e2e::log_dir("bench-ingest");
    let amqp = [
        ("AMQP_URL", broker.url.clone()),
        ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
    ];
    let mut env: Vec<(&str, String)> = vec![
        ("STRIPE_WEBHOOK_SECRET", SECRET.into()),
        // As deployed (deploy/k8s/configmap.yaml): what logging costs is part of
        // what ingest costs. Its output goes to a file, as a container's to a pipe.
        ("RUST_LOG", "info,lapin=warn,actix_server=warn".into()),
    ];
    env.extend(amqp.clone());
    // To try a setting: `INGEST_WORKERS=1 bench ingest` passes it on (defaults otherwise).
    let (mut ingest, base) = start_with(
        "ingest",
        env,
        &["INGEST_WORKERS", "INGEST_PUBLISH_CHANNELS"],
        &logs,
    )
    .await?;
    let url = format!("{base}/webhooks/stripe");
    // The floor under ingest (`src/bin/passthrough.rs`), idle until its own phase.
    let (mut passthrough, floor_base) = start_with(
        "passthrough",
        amqp.to_vec(),
        &["PASSTHROUGH_WORKERS", "PASSTHROUGH_RUNTIME"],
        &logs,
    )
    .await?;
    let floor_url = format!("{floor_base}/webhooks/stripe");
    // Warm up both.
    wrk(&floor_url, &body, 16, 1, &logs)?;
    wrk(&url, &body, 16, 1, &logs)?;
    purge(&conn, &broker.topology.checkout_queue()).await?;

    let mut ceilings = Vec::new();
    let mut raw64 = Vec::new();
    // The ceiling, the broker alone at 64, ingest at 64 and the floor: where the cores went.
    let mut accounts: [Vec<Account>; 4] = Default::default();
    let mut floor = Vec::new();
    let mut table: Vec<(usize, Vec<WrkResult>)> = vec![(1, vec![]), (16, vec![]), (64, vec![])];
    for run in 0..runs {
        let (before, started) = (Snapshot::take(), Instant::now());
        let (c, published) = ceiling(&broker, &conn, &body, seconds).await?;
        let cpu = before.per_message(&Snapshot::take(), published, started.elapsed());
        println!("run {run}: ceiling (window {WINDOW}) {c:.0} msg/s; {cpu}");
        ceilings.push(c);
        accounts[0].push(cpu);
        let (before, started) = (Snapshot::take(), Instant::now());
        let (rate, p50, p99, published) =
            broker_at_concurrency(&broker, &conn, &body, 64, seconds).await?;
        let cpu = before.per_message(&Snapshot::take(), published, started.elapsed());
        println!(
            "run {run}: broker alone, 64 publishers awaiting each confirm: {rate:.0} msg/s p50 {p50:.2} ms p99 {p99:.2} ms; {cpu}"
        );
        raw64.push((rate, p50, p99));
        accounts[1].push(cpu);
        for (concurrency, results) in &mut table {
            let (mut r, cpu) =
                loaded(&conn, &broker, &url, &body, *concurrency, seconds, &logs).await?;
            r.cpu_us = cpu.of("ingest");
            println!(
                "run {run}: c={concurrency:>2} {:>7.0} req/s p50 {:>6.2} ms p99 {:>6.2} ms, ingest CPU {:>5.1} µs/request (2xx {}, held {})",
                r.rps, r.p50_ms, r.p99_ms, r.cpu_us, r.ok, r.held
            );
            if *concurrency == 64 {
                println!("run {run}: c=64 {cpu}");
                accounts[2].push(cpu);
            }
            results.push(r);
        }
        // Right after ingest's c=64, the same load on the floor under it.
        let (mut r, cpu) = loaded(&conn, &broker, &floor_url, &body, 64, seconds, &logs).await?;
        r.cpu_us = cpu.of("passthrough");
        println!(
            "run {run}: passthrough (actix-web + lapin, nothing between) c=64 {:>7.0} req/s p50 {:>6.2} ms p99 {:>6.2} ms, passthrough CPU {:>5.1} µs/request (2xx {}, held {}); {cpu}",
            r.rps, r.p50_ms, r.p99_ms, r.cpu_us, r.ok, r.held
        );
        accounts[3].push(cpu);
        floor.push(r);
    }
    let rss = peak_rss_mib(ingest.pid());
    let ceiling = median(ceilings.clone());
    println!(
        "\n| concurrency | req/s (median of {runs}) | p50 ms | p99 ms | ingest ÷ ceiling | ingest CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|");
    for (concurrency, results) in &table {
        let rps = median(results.iter().map(|r| r.rps).collect());
        let p50 = median(results.iter().map(|r| r.p50_ms).collect());
        let p99 = median(results.iter().map(|r| r.p99_ms).collect());
        let cpu = median(results.iter().map(|r| r.cpu_us).collect());
        println!(
            "| {concurrency} | {rps:.0} | {p50:.2} | {p99:.2} | {:.0} % | {cpu:.1} |",
            100.0 * rps / ceiling
        );
    }
    println!(
        "\nbroker ceiling (window {WINDOW}): median {ceiling:.0} msg/s (runs: {}); ingest peak RSS {rss:.1} MiB",
        ceilings
            .iter()
            .map(|c| format!("{c:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "broker alone at concurrency 64 (no HTTP, no ingest): median {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms",
        median(raw64.iter().map(|r| r.0).collect()),
        median(raw64.iter().map(|r| r.1).collect()),
        median(raw64.iter().map(|r| r.2).collect()),
    );
    let floor_rps = median(floor.iter().map(|r| r.rps).collect());
    let ingest_rps = median(table[2].1.iter().map(|r| r.rps).collect());
    println!(
        "passthrough (actix-web + lapin, nothing between) at c=64: median {floor_rps:.0} req/s = {:.0} % of the ceiling, p50 {:.2} ms, p99 {:.2} ms; ingest at c=64 is {:.0} % of it",
        100.0 * floor_rps / ceiling,
        median(floor.iter().map(|r| r.p50_ms).collect()),
        median(floor.iter().map(|r| r.p99_ms).collect()),
        100.0 * ingest_rps / floor_rps,
    );
    print_cpu_accounts(&accounts, ceiling);
    let _ = passthrough.terminate(Duration::from_secs(10));
    let _ = ingest.terminate(Duration::from_secs(10));
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The medians of each phase's CPU account, and what 70 % of the ceiling would leave per
/// request on these cores: the reason a ratio is what it is, in microseconds.
fn print_cpu_accounts(accounts: &[Vec<Account>; 4], ceiling: f64) {
    Account::table(
        &[
            ("ceiling (window 1024)", &accounts[0]),
            ("broker alone, c=64", &accounts[1]),
            ("ingest, c=64", &accounts[2]),
            ("passthrough, c=64", &accounts[3]),
        ],
        &[
            ("broker", "broker"),
            ("ingest", "ingest"),
            ("passthrough", "passthrough"),
            ("bench", "load generator"),
        ],
    );
    println!(
        "70 % of the ceiling is {:.0} req/s: {:.1} µs of all the cores' time per request, everything included",
        0.7 * ceiling,
        crate::cpu::cores() * 1e6 / (0.7 * ceiling)
    );
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_event_pretty_printed_in_stripes_order() {
        let raw = include_str!("../../fixtures/stripe/event_checkout_session_completed_basil.json");
        let body = body();
        let sorted: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            sorted
        );
        assert_eq!(
            body.len(),
            serde_json::to_vec_pretty(&sorted).unwrap().len()
        );
        assert_eq!(body.len(), 3429);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.starts_with(
                "{\n  \"id\": \"evt_1RL4opGMYJBaxnOIgMhDDV71\",\n  \"object\": \"event\","
            ),
            "{text}"
        );
        assert!(
            text.contains("\"data\": {\n    \"object\": {\n      \"id\": \"cs_test_"),
            "{text}"
        );
    }
}
