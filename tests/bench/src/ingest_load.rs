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

use crate::{bin_dir, peak_rss_mib};

const SECRET: &str = "whsec_bench_secret";
/// Publishes outstanding at once for the ceiling: 1024, the window of the issue's own
/// ceiling measurement (issue #17), so the ratio is taken against the same ceiling.
const WINDOW: usize = 1024;
/// Messages per ceiling run.
const CEILING_MESSAGES: usize = 20_000;

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
    total: usize,
) -> anyhow::Result<f64> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange = broker.topology.events_exchange();
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..total {
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
    if held as usize != total {
        bail!("ceiling run: {held} held, {total} published");
    }
    Ok(rate)
}

/// The broker alone at the same shape as ingest under load: `concurrency` publishers, each
/// publishing one message and waiting for its confirm before the next. Returns (msg/s, p50
/// ms, p99 ms): the latency floor any confirm-before-2xx endpoint inherits.
async fn broker_at_concurrency(
    broker: &TestBroker,
    conn: &Connection,
    body: &[u8],
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<(f64, f64, f64)> {
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
    Ok((rate, pick(0.5), pick(0.99)))
}

struct WrkResult {
    ok: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// ingest's CPU time (user + system, all threads) per 2xx: unlike req/s it hardly
    /// moves when the load generator or the broker get less of the shared cores.
    cpu_us: f64,
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Fields of `/proc/<pid>/stat` from `state` on (the command name may hold spaces).
fn stat_fields(pid: &str) -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect(),
    )
}

/// CPU time a process has used (user + system, all threads), from /proc: utime and
/// stime are the 14th and 15th fields of the line.
fn cpu_seconds(pid: u32) -> f64 {
    stat_fields(&pid.to_string())
        .and_then(|f| Some((f.get(11)? + f.get(12)?) / clock_ticks()))
        .unwrap_or(0.0)
}

/// Where the machine's CPU went, read before and after a phase: the one number for
/// req/s on shared cores is what each process spends per request.
#[derive(Clone, Copy, Default)]
struct CpuSnapshot {
    /// Every core's busy time (all but idle and iowait), from /proc/stat.
    machine: f64,
    /// RabbitMQ's Erlang VM (every `beam.smp` on the machine).
    broker: f64,
    ingest: f64,
    /// This process: the ceiling's and the broker-alone phase's publisher.
    bench: f64,
    /// Children waited for (wrk, which runs to its end inside a phase): cutime + cstime.
    children: f64,
}

impl CpuSnapshot {
    fn take(ingest: u32) -> Self {
        let ticks = clock_ticks();
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().next()?;
                let f: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse().unwrap_or(0.0))
                    .collect();
                // user nice system idle iowait irq softirq steal …
                let busy: f64 = f.iter().take(8).sum::<f64>() - f.get(3)? - f.get(4)?;
                Some(busy / ticks)
            })
            .unwrap_or(0.0);
        let broker = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "beam.smp")
            })
            .filter_map(|e| {
                let f = stat_fields(e.file_name().to_str()?)?;
                Some((f.get(11)? + f.get(12)?) / ticks)
            })
            .sum();
        let own = stat_fields("self");
        let field = |i: usize| own.as_ref().and_then(|f| f.get(i).copied()).unwrap_or(0.0) / ticks;
        Self {
            machine,
            broker,
            ingest: if ingest == 0 {
                0.0
            } else {
                cpu_seconds(ingest)
            },
            bench: field(11) + field(12),
            children: field(13) + field(14),
        }
    }

    /// Microseconds per message of each, between `self` and `later`, and the share of
    /// the machine's cores that was busy.
    fn per_message(&self, later: &Self, messages: u64, wall: Duration) -> CpuAccount {
        let per = |a: f64, b: f64| 1e6 * (b - a).max(0.0) / messages.max(1) as f64;
        let machine = per(self.machine, later.machine);
        let broker = per(self.broker, later.broker);
        let ingest = per(self.ingest, later.ingest);
        let bench = per(self.bench, later.bench);
        let load = per(self.children, later.children);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        CpuAccount {
            machine,
            broker,
            ingest,
            load: load + bench,
            other: (machine - broker - ingest - load - bench).max(0.0),
            busy: (later.machine - self.machine) / (wall.as_secs_f64() * cores),
        }
    }
}

/// CPU µs per message, by process, over one phase.
#[derive(Clone, Copy, Default)]
struct CpuAccount {
    machine: f64,
    broker: f64,
    ingest: f64,
    /// The load generator: wrk for ingest's phases, the bench's own publisher otherwise.
    load: f64,
    other: f64,
    /// Share of all cores busy during the phase.
    busy: f64,
}

impl std::fmt::Display for CpuAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU µs/message: broker {:.1}, ingest {:.1}, load generator {:.1}, other {:.1}, all {:.1} (cores {:.0} % busy)",
            self.broker,
            self.ingest,
            self.load,
            self.other,
            self.machine,
            100.0 * self.busy
        )
    }
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
        rps: ok / (micros / 1e6),
        p50_ms: p50 / 1000.0,
        p99_ms: p99 / 1000.0,
        cpu_us: 0.0,
    })
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
    let mut env: Vec<(&str, String)> = vec![
        ("STRIPE_WEBHOOK_SECRET", SECRET.into()),
        ("AMQP_URL", broker.url.clone()),
        ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
        // As deployed (deploy/k8s/configmap.yaml): what logging costs is part of
        // what ingest costs. Its output goes to a file, as a container's to a pipe.
        ("RUST_LOG", "info,lapin=warn,actix_server=warn".into()),
    ];
    // To try a setting: `INGEST_WORKERS=1 bench ingest` passes it on (defaults otherwise).
    for name in ["INGEST_WORKERS", "INGEST_PUBLISH_CHANNELS"] {
        if let Ok(value) = std::env::var(name) {
            println!("ingest with {name}={value}");
            env.push((name, value));
        }
    }
    let (mut ingest, base) = crate::start_ready(
        "ingest",
        "INGEST_ADDR",
        &env,
        &logs,
        Duration::from_secs(30),
    )
    .await?;
    let url = format!("{base}/webhooks/stripe");
    // Warm up.
    wrk(&url, &body, 16, 1, &logs)?;
    purge(&conn, &broker.topology.checkout_queue()).await?;

    let mut ceilings = Vec::new();
    let mut raw64 = Vec::new();
    // The ceiling, the broker alone at 64 and ingest at 64: where the cores went.
    let mut accounts: [Vec<CpuAccount>; 3] = Default::default();
    let mut table: Vec<(usize, Vec<WrkResult>)> = vec![(1, vec![]), (16, vec![]), (64, vec![])];
    for run in 0..runs {
        let (before, started) = (CpuSnapshot::take(0), Instant::now());
        let c = ceiling(&broker, &conn, &body, CEILING_MESSAGES).await?;
        let cpu = before.per_message(
            &CpuSnapshot::take(0),
            CEILING_MESSAGES as u64,
            started.elapsed(),
        );
        println!("run {run}: ceiling (window {WINDOW}) {c:.0} msg/s; {cpu}");
        ceilings.push(c);
        accounts[0].push(cpu);
        let (before, started) = (CpuSnapshot::take(0), Instant::now());
        let (rate, p50, p99) = broker_at_concurrency(&broker, &conn, &body, 64, seconds).await?;
        let elapsed = started.elapsed();
        let cpu = before.per_message(
            &CpuSnapshot::take(0),
            (rate * elapsed.as_secs_f64()) as u64,
            elapsed,
        );
        println!(
            "run {run}: broker alone, 64 publishers awaiting each confirm: {rate:.0} msg/s p50 {p50:.2} ms p99 {p99:.2} ms; {cpu}"
        );
        raw64.push((rate, p50, p99));
        accounts[1].push(cpu);
        for (concurrency, results) in &mut table {
            let (before, started) = (CpuSnapshot::take(ingest.pid()), Instant::now());
            let mut r = wrk(&url, &body, *concurrency, seconds, &logs)?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu = before.per_message(&CpuSnapshot::take(ingest.pid()), r.ok, started.elapsed());
            r.cpu_us = cpu.ingest;
            let held = u64::from(purge(&conn, &broker.topology.checkout_queue()).await?);
            // Requests cut off by wrk's deadline may be published without wrk counting
            // the answer; a 2xx without a held message would be a lost event.
            if held < r.ok || held > r.ok + *concurrency as u64 {
                bail!(
                    "c={concurrency}: {} answered 2xx but the queue held {held}",
                    r.ok
                );
            }
            println!(
                "run {run}: c={concurrency:>2} {:>7.0} req/s p50 {:>6.2} ms p99 {:>6.2} ms, ingest CPU {:>5.1} µs/request (2xx {}, held {held})",
                r.rps, r.p50_ms, r.p99_ms, r.cpu_us, r.ok
            );
            if *concurrency == 64 {
                println!("run {run}: c=64 {cpu}");
                accounts[2].push(cpu);
            }
            results.push(r);
        }
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
    print_cpu_accounts(&accounts, ceiling);
    let _ = ingest.terminate(Duration::from_secs(10));
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The medians of each phase's CPU account, and what 70 % of the ceiling would leave per
/// request on these cores: the reason a ratio is what it is, in microseconds.
fn print_cpu_accounts(accounts: &[Vec<CpuAccount>; 3], ceiling: f64) {
    let med = |v: &[CpuAccount], f: fn(&CpuAccount) -> f64| median(v.iter().map(f).collect());
    println!(
        "\n| phase (medians) | broker µs/msg | ingest µs/msg | load generator µs/msg | other µs/msg | all µs/msg | cores busy |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, v) in [
        ("ceiling (window 1024)", &accounts[0]),
        ("broker alone, c=64", &accounts[1]),
        ("ingest, c=64", &accounts[2]),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} % |",
            med(v, |a| a.broker),
            med(v, |a| a.ingest),
            med(v, |a| a.load),
            med(v, |a| a.other),
            med(v, |a| a.machine),
            100.0 * med(v, |a| a.busy),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "70 % of the ceiling is {:.0} req/s: {:.1} µs of all the cores' time per request, everything included",
        0.7 * ceiling,
        cores * 1e6 / (0.7 * ceiling)
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
