//! Where ingest's CPU goes: instructions per request, counted by callgrind.
//!
//! Wall-clock figures on a shared 2-core machine move by tens of percent between runs;
//! instruction counts do not. This runs the release ingest under
//! `valgrind --tool=callgrind` twice, once serving `n` validly signed webhooks and once
//! `2n` (the same body as `bench ingest`, `concurrency` keep-alive connections, every 2xx
//! checked against the queue), and subtracts: start-up, topology declaration and
//! shutdown cancel out, what is left divided by `n` is the cost of one request, all of
//! ingest's threads together (HTTP workers, lapin's I/O loop, the runtime). The same
//! difference per function (from `callgrind_annotate`) gives the top functions per
//! request.
//!
//! Instructions are not time (a cache miss or a syscall's kernel side costs far more
//! than its count here; the kernel is not counted at all), so this is for finding and
//! comparing the user-space cost of changes; `perf` on the real bench shows the rest.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use lapin::{Connection, ConnectionProperties, options::QueuePurgeOptions};
use test_support::broker::TestBroker;

const SECRET: &str = "whsec_bench_secret";

/// What one callgrind run of ingest counted.
struct Counted {
    total: u64,
    /// Exclusive instructions per function (`callgrind_annotate`'s names).
    functions: HashMap<String, u64>,
    file: PathBuf,
}

pub async fn run(
    ingest: &Path,
    requests: usize,
    concurrency: usize,
    log_filter: &str,
    runs: usize,
) -> anyhow::Result<()> {
    if !ingest.exists() {
        bail!(
            "no {}: build first (cargo build --release --bin ingest, or tests/bench/run.sh)",
            ingest.display()
        );
    }
    let broker = TestBroker::new().await;
    let body = crate::ingest_load::body();
    let logs = e2e::log_dir("bench-ingest-cpu");
    println!(
        "\n## ingest's instructions per request (callgrind; {}; body {} bytes, {concurrency} connections, RUST_LOG={log_filter})",
        ingest.display(),
        body.len()
    );
    let n = requests as f64;
    // Pairs of runs: how requests interleave with the event loops' wake-ups moves a
    // pair's difference by a few thousand instructions per request; the median pair is
    // reported.
    let mut pairs = Vec::new();
    for run in 0..runs.max(1) {
        let small = count(
            &broker,
            ingest,
            &body,
            requests,
            concurrency,
            log_filter,
            &logs,
            run,
        )
        .await?;
        let large = count(
            &broker,
            ingest,
            &body,
            2 * requests,
            concurrency,
            log_filter,
            &logs,
            run,
        )
        .await?;
        let per_request = large.total.saturating_sub(small.total) as f64 / n;
        println!("run {run}: {per_request:.0} instructions per request");
        pairs.push((per_request, small, large));
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all: Vec<String> = pairs.iter().map(|p| format!("{:.0}", p.0)).collect();
    let (per_request, small, large) = &pairs[pairs.len() / 2];
    let per_request = *per_request;
    println!(
        "per request: {per_request:.0} instructions (median of {})",
        all.join(", ")
    );
    // Valgrind does not emulate the SHA extensions and hides them from CPUID, so sha2
    // takes its portable code here; on a CPU with SHA-NI (this machine's has) HMAC-SHA256
    // over the body costs a small fraction of that.
    let sha_soft = functions_per_request(small, large, n, "sha2::sha256::soft::compress");
    println!(
        "per request without sha2's portable compress ({sha_soft:.0}, SHA-NI's job outside valgrind): {:.0} instructions",
        per_request - sha_soft
    );
    let mut functions: Vec<(String, f64)> = large
        .functions
        .iter()
        .map(|(name, &ir)| {
            let before = small.functions.get(name).copied().unwrap_or(0);
            (name.clone(), (ir as f64 - before as f64) / n)
        })
        .collect();
    functions.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("\n| instructions per request | share | function (exclusive) |");
    println!("|---:|---:|---|");
    for (name, ir) in functions.iter().take(30) {
        println!(
            "| {ir:.0} | {:.1} % | `{}` |",
            100.0 * ir / per_request,
            shorten(name)
        );
    }
    println!(
        "\ncallgrind files of the median pair: {} and {} (callgrind_annotate --inclusive=yes FILE for more)",
        small.file.display(),
        large.file.display()
    );
    Ok(())
}

/// Instructions per request in the functions whose name contains `pattern`.
fn functions_per_request(small: &Counted, large: &Counted, n: f64, pattern: &str) -> f64 {
    let sum = |c: &Counted| -> f64 {
        c.functions
            .iter()
            .filter(|(name, _)| name.contains(pattern))
            .map(|(_, &ir)| ir as f64)
            .sum()
    };
    (sum(large) - sum(small)) / n
}

/// Runs ingest under callgrind, sends `requests` signed webhooks, stops it (SIGTERM: a
/// clean shutdown, so callgrind writes its file) and reads the counts.
#[allow(clippy::too_many_arguments)]
async fn count(
    broker: &TestBroker,
    ingest: &Path,
    body: &[u8],
    requests: usize,
    concurrency: usize,
    log_filter: &str,
    logs: &Path,
    run: usize,
) -> anyhow::Result<Counted> {
    let file = logs.join(format!("callgrind.{run}.{requests}.out"));
    let port = e2e::free_port();
    let out_file = format!("--callgrind-out-file={}", file.display());
    let mut process = e2e::Proc::start(
        &format!("ingest-callgrind-{run}-{requests}"),
        Path::new("valgrind"),
        &[
            "--tool=callgrind",
            &out_file,
            "--dump-instr=no",
            "--collect-jumps=no",
            &ingest.to_string_lossy(),
        ],
        &[
            ("STRIPE_WEBHOOK_SECRET", SECRET.into()),
            ("INGEST_ADDR", format!("127.0.0.1:{port}")),
            ("AMQP_URL", broker.url.clone()),
            ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
            ("RUST_LOG", log_filter.to_owned()),
        ],
        logs,
    );
    let client = test_support::http_client();
    if !e2e::wait_ok(
        &client,
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(120),
    )
    .await
    {
        bail!("ingest did not start under valgrind:\n{}", process.output());
    }
    let url = format!("http://127.0.0.1:{port}/webhooks/stripe");
    let signature = fake_stripe::sign_webhook(body, SECRET, fake_stripe::now());
    let next = Arc::new(AtomicUsize::new(0));
    let senders = (0..concurrency).map(|_| {
        let (client, url, signature, next) = (
            client.clone(),
            url.clone(),
            signature.clone(),
            Arc::clone(&next),
        );
        let body = body.to_vec();
        async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let response = client
                    .post(&url)
                    .header("Content-Type", "application/json; charset=utf-8")
                    .header("Stripe-Signature", &signature)
                    .body(body.clone())
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("answered {}", response.status());
                }
                response.bytes().await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    for sent in futures_util::future::join_all(senders).await {
        sent?;
    }
    drop(client);
    if process.terminate(Duration::from_secs(120)).is_none() {
        bail!("ingest did not stop under valgrind:\n{}", process.output());
    }
    let held = purge(broker).await?;
    if held as usize != requests {
        bail!("{requests} answered 2xx but the queue held {held}");
    }
    let (total, functions) = annotate(&file)?;
    println!("{requests} requests (all held in the queue): {total} instructions");
    Ok(Counted {
        total,
        functions,
        file,
    })
}

async fn purge(broker: &TestBroker) -> anyhow::Result<u32> {
    let conn = Connection::connect(&broker.url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let held = ch
        .queue_purge(
            broker.topology.checkout_queue().as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    let _ = conn.close(200, "purged".into()).await;
    Ok(held)
}

/// The total and the exclusive count per function, from `callgrind_annotate`.
fn annotate(file: &Path) -> anyhow::Result<(u64, HashMap<String, u64>)> {
    let out = Command::new("callgrind_annotate")
        .args(["--threshold=100", "--inclusive=no"])
        .arg(file)
        .output()
        .context("callgrind_annotate (part of valgrind)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = None;
    let mut functions = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        // `1,234 (12.34%)  file:function [object]`
        let rest = rest.trim();
        let rest = match rest.strip_prefix('(') {
            Some(percent) => percent.split_once(')').map_or("", |(_, r)| r.trim()),
            None => rest,
        };
        if rest.starts_with("PROGRAM TOTALS") {
            total = Some(count);
        } else if !rest.is_empty() {
            *functions.entry(rest.to_owned()).or_insert(0) += count;
        }
    }
    let total =
        total.with_context(|| format!("no PROGRAM TOTALS in callgrind_annotate:\n{text}"))?;
    Ok((total, functions))
}

/// A function name short enough for a table: no source file, no object path, no hash.
fn shorten(name: &str) -> String {
    let name = name.split_once(':').map_or(name, |(_, f)| f);
    let name = name.split(" [").next().unwrap_or(name);
    let name = match name.rfind("::h") {
        Some(i) if name[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) => &name[..i],
        _ => name,
    };
    let name: String = name.chars().take(110).collect();
    name.replace('|', "\\|")
}
