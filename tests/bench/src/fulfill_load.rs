//! fulfill against the Stripe rate budget.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::bail;
use fake_stripe::{FakeStripe, Knobs, PriceSpec, SessionSpec};
use futures_util::{StreamExt, stream};
use test_support::{broker::TestBroker, db::TestDb};

use crate::{ingest_load::median, peak_rss_mib};

const SECRET: &str = "whsec_bench_secret";
const COMPLETED: &str = "checkout.session.completed";
const STRIPE_LATENCY_MS: u64 = 150;

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `(session id, credited at (Unix seconds))` for every purchase entry.
async fn credited(db: &TestDb) -> HashMap<String, f64> {
    use diesel::{
        QueryableByName, sql_query,
        sql_types::{Double, Text},
    };
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        session: String,
        #[diesel(sql_type = Double)]
        at: f64,
    }
    let mut conn = db.connect().await;
    let rows: Vec<Row> = sql_query(
        "SELECT stripe_session_id AS session, extract(epoch FROM created_at)::float8 AS at \
         FROM ledger_entries WHERE reason = 'purchase'",
    )
    .load(&mut conn)
    .await
    .unwrap_or_default();
    rows.into_iter().map(|r| (r.session, r.at)).collect()
}

struct Delivery {
    session: String,
    body: Vec<u8>,
}

/// Posts every delivery through ingest (`concurrency` at once, optionally paced at `rate`
/// per second); returns each session's first 2xx time.
async fn deliver(
    url: &str,
    deliveries: Vec<Delivery>,
    concurrency: usize,
    rate: Option<f64>,
) -> HashMap<String, f64> {
    let client = test_support::http_client();
    let acked: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let started = Instant::now();
    stream::iter(deliveries.into_iter().enumerate())
        .for_each_concurrent(concurrency, |(i, d)| {
            let client = client.clone();
            let acked = Arc::clone(&acked);
            async move {
                if let Some(rate) = rate {
                    let at = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                loop {
                    let sig = fake_stripe::sign_webhook(&d.body, SECRET, fake_stripe::now());
                    let ok = client
                        .post(url)
                        .header("Stripe-Signature", sig)
                        .body(d.body.clone())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        acked
                            .lock()
                            .unwrap()
                            .entry(d.session.clone())
                            .or_insert_with(epoch);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .await;
    Arc::try_unwrap(acked)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

struct Outcome {
    budget: u32,
    credited_per_s: f64,
    fetch_rate: f64,
    calls_per_credit: f64,
    rate_limited: u64,
    p50_ms: f64,
    p99_ms: f64,
    rss: Vec<f64>,
}

async fn one_budget(budget: u32, sessions: usize) -> anyhow::Result<Outcome> {
    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let stripe = FakeStripe::start(fake_stripe::DEFAULT_API_KEY).await?;
    stripe.set_knobs(Knobs {
        latency_ms: STRIPE_LATENCY_MS,
        rate_limit_per_sec: Some(budget),
        ..Knobs::default()
    });
    let logs = e2e::log_dir(&format!("bench-fulfill-{budget}"));
    let mut procs = Vec::new();
    for i in 0..2 {
        let (p, _) = crate::start_ready(
            &format!("fulfill-{i}"),
            "FULFILL_ADDR",
            &[
                ("DATABASE_URL", db.url.clone()),
                ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.into()),
                ("STRIPE_API_BASE", stripe.base_url()),
                ("STRIPE_RATE_LIMIT", budget.to_string()),
                ("FULFILL_CONCURRENCY", "32".into()),
                ("FULFILL_PREFETCH", "64".into()),
                ("AMQP_URL", broker.url.clone()),
                ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
                ("RUST_LOG", "warn".into()),
            ],
            &logs,
            Duration::from_secs(60),
        )
        .await?;
        procs.push(p);
    }
    let (mut ingest, ingest_base) = crate::start_ingest(&broker, SECRET, &logs).await?;
    let url = format!("{ingest_base}/webhooks/stripe");
    let single = stripe.create_price(PriceSpec::credits(1));
    let pack = stripe.create_price(PriceSpec::product_credits(10));
    let make = |n: usize, tag: &str| {
        let mut out = Vec::new();
        for i in 0..n {
            let price = if i % 2 == 0 { &single } else { &pack };
            let s = stripe
                .create_session(SessionSpec::paid(&format!("{tag}-{}", i % 50), price, 1))
                .unwrap();
            let (_, body) = stripe.event_for_session(&s, COMPLETED).unwrap();
            // 30 % of sessions are delivered twice.
            if i % 10 < 3 {
                out.push(Delivery {
                    session: s.clone(),
                    body: body.clone(),
                });
            }
            out.push(Delivery { session: s, body });
        }
        out
    };

    // Saturation: everything at once.
    let burst = make(sessions, "sat");
    stripe.reset_stats();
    let started = Instant::now();
    deliver(&url, burst, 64, None).await;
    let done = test_support::wait_for(
        Duration::from_secs(sessions as u64 / u64::from(budget) * 4 + 120),
        || async { (credited(&db).await.len() >= sessions).then_some(()) },
    )
    .await;
    if done.is_none() {
        bail!("budget {budget}: not every session was credited");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = stripe.stats();
    let calls = stats.session_fetches + stats.line_item_pages + stats.other_fetches;

    // Below saturation: half the budget's rate, latency from ingest's 2xx to the credit.
    let paced_n = (f64::from(budget) * 8.0) as usize;
    let paced = make(paced_n, "paced");
    let acked = deliver(&url, paced, 64, Some(f64::from(budget) * 0.5 * 1.3)).await;
    let settled = test_support::wait_for(Duration::from_secs(120), || async {
        (credited(&db).await.len() >= sessions + paced_n).then_some(())
    })
    .await;
    if settled.is_none() {
        bail!("budget {budget}: paced sessions not all credited");
    }
    let credits = credited(&db).await;
    let latencies: Vec<f64> = acked
        .iter()
        .filter_map(|(s, t)| credits.get(s).map(|c| ((c - t) * 1000.0).max(0.0)))
        .collect();
    let rss = procs.iter().map(|p| peak_rss_mib(p.pid())).collect();
    let _ = ingest.terminate(Duration::from_secs(10));
    for mut p in procs {
        let _ = p.terminate(Duration::from_secs(20));
    }
    Ok(Outcome {
        budget,
        credited_per_s: sessions as f64 / elapsed,
        fetch_rate: calls as f64 / elapsed,
        calls_per_credit: calls as f64 / sessions as f64,
        rate_limited: stripe.stats().rate_limited,
        p50_ms: percentile(latencies.clone(), 50.0),
        p99_ms: percentile(latencies, 99.0),
        rss,
    })
}

pub async fn run(sessions: usize) -> anyhow::Result<()> {
    println!(
        "\n## fulfill vs the Stripe budget ({sessions} sessions + 30 % duplicates, 2 fulfill processes, Stripe latency {STRIPE_LATENCY_MS} ms)"
    );
    let mut rows = Vec::new();
    for budget in [25, 100] {
        let o = one_budget(budget, sessions).await?;
        println!(
            "budget {budget}/s: credited {:.1}/s, Stripe calls {:.1}/s ({:.0} % of budget), {:.3} calls per credited session, {} 429s, e2e p50 {:.0} ms p99 {:.0} ms, RSS {:?} MiB",
            o.credited_per_s,
            o.fetch_rate,
            100.0 * o.fetch_rate / f64::from(budget),
            o.calls_per_credit,
            o.rate_limited,
            o.p50_ms,
            o.p99_ms,
            o.rss
                .iter()
                .map(|r| (r * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
        rows.push(o);
    }
    println!(
        "\n| budget/s | credited/s | Stripe calls/s | % of budget | calls per credited session | 429s | e2e p50 ms | e2e p99 ms | peak RSS MiB (per process) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for o in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.0} % | {:.3} | {} | {:.0} | {:.0} | {} |",
            o.budget,
            o.credited_per_s,
            o.fetch_rate,
            100.0 * o.fetch_rate / f64::from(o.budget),
            o.calls_per_credit,
            o.rate_limited,
            o.p50_ms,
            o.p99_ms,
            o.rss
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let _ = median(vec![]);
    Ok(())
}
