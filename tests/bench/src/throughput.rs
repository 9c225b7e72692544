//! fulfill's own cost, with Stripe out of the way: a stand-in answering at once and a
//! budget far above the load, so what is measured is fulfill and its database.
//!
//! 1. **reference**: `pgbench -c 16 -j 2` (TPC-B) on a database of its own, same server.
//! 2. **credited sessions/s**: `sessions` purchases (single credits and 10-credit packs,
//!    one Stripe call each) are posted through the real ingest while no fulfill runs, so
//!    they wait in the queue; then two fulfill processes with default settings start
//!    (`STRIPE_RATE_LIMIT=100000`). Timed from the first purchase entry's commit to the
//!    last's.
//! 3. **settled redeliveries/s**: once every credit event is announced, both processes
//!    stop, the same events are posted again,
//!    two processes start and drain them (each answered from the database, no Stripe
//!    call). Timed from the first handled event to the last, from their `/metrics`.
//! 4. **round trips**: the same flow on a private PostgreSQL with `pg_stat_statements`,
//!    counting every statement fulfill sent (background loops included) and every
//!    commit, per credited session.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fake_stripe::{FakeStripe, Knobs, PriceSpec, SessionSpec};
use futures_util::{StreamExt, stream};
use test_support::{broker::TestBroker, db::TestDb};

use crate::{
    cpu::{Account, Snapshot},
    debit_load::pgbench_measured,
    ingest_load::median,
    scalar,
};

const SECRET: &str = "whsec_bench_secret";
const COMPLETED: &str = "checkout.session.completed";

struct Stack {
    broker: TestBroker,
    stripe: FakeStripe,
    ingest: e2e::Proc,
    ingest_url: String,
    logs: std::path::PathBuf,
    client: reqwest::Client,
}

impl Stack {
    async fn start(tag: &str) -> anyhow::Result<Self> {
        let broker = TestBroker::new().await;
        let stripe = FakeStripe::start(fake_stripe::DEFAULT_API_KEY).await?;
        stripe.set_knobs(Knobs {
            latency_ms: 0,
            rate_limit_per_sec: None,
            ..Knobs::default()
        });
        let logs = e2e::log_dir(&format!("bench-throughput-{tag}"));
        let client = test_support::http_client();
        let (ingest, ingest_base) = crate::start_ingest(&broker, SECRET, &logs).await?;
        Ok(Self {
            broker,
            stripe,
            ingest,
            ingest_url: format!("{ingest_base}/webhooks/stripe"),
            logs,
            client,
        })
    }

    /// `n` paid sessions (half single credits, half 10-credit packs, 1,000 users) and
    /// their `checkout.session.completed` events.
    fn purchases(&self, n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let single = self.stripe.create_price(PriceSpec::credits(1));
        let pack = self.stripe.create_price(PriceSpec::product_credits(10));
        (0..n)
            .map(|i| {
                let price = if i % 2 == 0 { &single } else { &pack };
                let s = self
                    .stripe
                    .create_session(SessionSpec::paid(&format!("u{}", i % 1000), price, 1))
                    .map_err(anyhow::Error::msg)?;
                let (_, body) = self
                    .stripe
                    .event_for_session(&s, COMPLETED)
                    .context("the session's event")?;
                Ok(body)
            })
            .collect()
    }

    /// Posts every event through ingest (64 at once), each retried until answered 2xx.
    async fn post(&self, events: &[Vec<u8>]) {
        stream::iter(events)
            .for_each_concurrent(64, |body| async move {
                loop {
                    let sig = fake_stripe::sign_webhook(body, SECRET, fake_stripe::now());
                    let ok = self
                        .client
                        .post(&self.ingest_url)
                        .header("Stripe-Signature", sig)
                        .body(body.clone())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
    }

    /// Two fulfill processes with default settings but the Stripe budget, both started
    /// before either is waited for (so neither gets a head start on the queue).
    async fn fulfills(&self, database_url: &str, generation: u32) -> anyhow::Result<Fulfills> {
        // Both spawned before either is waited for.
        let mut env = vec![
            ("DATABASE_URL", database_url.to_owned()),
            ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.into()),
            ("STRIPE_API_BASE", self.stripe.base_url()),
            ("STRIPE_RATE_LIMIT", "100000".into()),
            ("AMQP_URL", self.broker.url.clone()),
            ("AMQP_TOPOLOGY_PREFIX", self.broker.prefix.clone()),
        ];
        // To try a setting: `FULFILL_CONCURRENCY=64 bench throughput` passes it on
        // (defaults otherwise).
        for name in [
            "FULFILL_CONCURRENCY",
            "FULFILL_PREFETCH",
            "DATABASE_POOL_SIZE",
            // tokio's own: the runtime's worker threads (default: one per core).
            "TOKIO_WORKER_THREADS",
        ] {
            if let Ok(value) = std::env::var(name) {
                if generation == 0 {
                    println!("fulfill with {name}={value}");
                }
                env.push((name, value));
            }
        }
        let starts = (0..2).map(|i| {
            let (env, logs) = (&env, &self.logs);
            async move {
                let name = format!("fulfill-{generation}-{i}");
                crate::start_ready(&name, "FULFILL_ADDR", env, logs, Duration::from_secs(60)).await
            }
        });
        let procs = futures_util::future::try_join_all(starts).await?;
        Ok(Fulfills { procs })
    }
}

struct Fulfills {
    procs: Vec<(e2e::Proc, String)>,
}

impl Fulfills {
    /// Events handled so far, all outcomes, both processes.
    async fn handled(&self, client: &reqwest::Client) -> u64 {
        let mut total = 0;
        for (_, base) in &self.procs {
            let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            total += text
                .lines()
                .filter(|l| l.starts_with("fulfill_events_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        total
    }

    fn stop(self) {
        for (mut p, _) in self.procs {
            let _ = p.terminate(Duration::from_secs(20));
        }
    }
}

/// Purchase entries so far, and the seconds between the first's and the last's commit.
async fn purchases_credited(db: &TestDb) -> anyhow::Result<(u64, f64)> {
    let n = scalar(
        db,
        "SELECT count(*) AS n FROM ledger_entries WHERE reason = 'purchase'",
    )
    .await?;
    let span_us = scalar(
        db,
        "SELECT coalesce((extract(epoch FROM max(created_at) - min(created_at)) * 1e6)::bigint, 0) \
         AS n FROM ledger_entries WHERE reason = 'purchase'",
    )
    .await?;
    Ok((n.unsigned_abs(), span_us as f64 / 1e6))
}

/// Credit events not yet announced.
async fn outbox_pending(db: &TestDb) -> anyhow::Result<i64> {
    scalar(
        db,
        "SELECT count(*) AS n FROM credit_events WHERE sent_at IS NULL",
    )
    .await
}

struct Figures {
    pgbench: f64,
    credited_per_s: f64,
    settled_per_s: f64,
    stripe_calls_per_session: f64,
    /// CPU per credited session, by process.
    cpu: Account,
    /// CPU per pgbench transaction (pgbench's own in `bench`, its backends in `postgres`).
    pgbench_cpu: Account,
}

async fn one_run(sessions: usize, seconds: u64) -> anyhow::Result<Figures> {
    let reference = TestDb::new().await;
    let (pgbench, pgbench_cpu) = pgbench_measured(&reference, seconds)?;
    drop(reference);

    let db = TestDb::new().await;
    let stack = Stack::start("run").await?;
    let events = stack.purchases(sessions)?;
    stack.post(&events).await;
    stack.stripe.reset_stats();
    let fulfills = stack.fulfills(&db.url, 0).await?;
    // Where the cores go while sessions are credited: from both processes being ready to
    // the last session credited, divided by the sessions credited in between.
    let (cpu_before, cpu_started) = (Snapshot::take(), Instant::now());
    let (credited_before, _) = purchases_credited(&db).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let span = loop {
        let (n, span) = purchases_credited(&db).await?;
        if n >= sessions as u64 {
            break span;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {sessions} sessions credited");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cpu = cpu_before.per_message(
        &Snapshot::take(),
        sessions as u64 - credited_before,
        cpu_started.elapsed(),
    );
    let stats = stack.stripe.stats();
    let calls = stats.session_fetches + stats.line_item_pages + stats.other_fetches;
    // The credit events still to announce are announced before the redeliveries come, so
    // that the settled figure is the redeliveries' alone (not the outbox relay's backlog).
    let deadline = Instant::now() + Duration::from_secs(120);
    while outbox_pending(&db).await? > 0 {
        if Instant::now() > deadline {
            bail!("credit events still unannounced after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fulfills.stop();

    // The same events again: every one settled, answered from the database.
    stack.post(&events).await;
    let fulfills = stack.fulfills(&db.url, 1).await?;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let last = loop {
        let handled = fulfills.handled(&stack.client).await;
        if handled > 0 && first.is_none() {
            first = Some((Instant::now(), handled));
        }
        if handled >= sessions as u64 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("only {handled} of {sessions} redeliveries handled");
        }
        // Not more often: every poll makes both processes encode all their metrics.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (first_at, first_n) = first.context("no redelivery handled")?;
    // From the first poll that saw any handled to the one that saw them all.
    let settled_per_s =
        (sessions as u64 - first_n) as f64 / last.duration_since(first_at).as_secs_f64();
    fulfills.stop();
    let mut ingest = stack.ingest;
    let _ = ingest.terminate(Duration::from_secs(10));
    Ok(Figures {
        pgbench,
        credited_per_s: (sessions - 1) as f64 / span,
        settled_per_s,
        stripe_calls_per_session: calls as f64 / sessions as f64,
        cpu,
        pgbench_cpu,
    })
}

/// Statements and commits per credited session, from a private server's
/// `pg_stat_statements` (the machine's own PostgreSQL does not preload it).
async fn round_trips(sessions: usize) -> anyhow::Result<()> {
    use diesel::{
        QueryableByName, sql_query,
        sql_types::{BigInt, Text},
    };
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Statement {
        #[diesel(sql_type = BigInt)]
        calls: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        exec_ms: f64,
        #[diesel(sql_type = Text)]
        query: String,
    }
    let dir = e2e::log_dir("bench-throughput-pg");
    let pg = test_support::services::PrivatePostgres::start_with_options(
        &dir,
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_utility=on \
         -c pg_stat_statements.max=5000",
    );
    let db = TestDb::on(&pg.url()).await;
    let stack = Stack::start("round-trips").await?;
    let fulfills = stack.fulfills(&db.url, 0).await?;
    let mut conn = db.connect().await;
    sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut conn)
        .await?;
    let events = stack.purchases(sessions)?;
    // Let startup (migrations, first gauges) pass, then count from zero.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sql_query("SELECT pg_stat_statements_reset()")
        .execute(&mut conn)
        .await?;
    let commits = || {
        scalar(
            &db,
            "SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()",
        )
    };
    let commits_before = commits().await?;
    let started = Instant::now();
    stack.post(&events).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (n, _) = purchases_credited(&db).await?;
        if n >= sessions as u64 && outbox_pending(&db).await? == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {sessions} sessions credited");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Statistics reach the shared counters within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let commits_after = commits().await?;
    let oid = format!(
        "(SELECT oid FROM pg_database WHERE datname = '{}')",
        db.name
    );
    let statements: Vec<Statement> = sql_query(format!(
        "SELECT calls, total_exec_time AS exec_ms, regexp_replace(query, '\\s+', ' ', 'g') AS query FROM pg_stat_statements \
         WHERE dbid = {oid} AND query NOT LIKE '%pg_stat%' AND query NOT LIKE '%ledger_entries WHERE reason = %' \
         AND query NOT LIKE '%credit_events WHERE sent_at IS NULL%' ORDER BY calls DESC"
    ))
    .load(&mut conn)
    .await?;
    fulfills.stop();
    let mut ingest = stack.ingest;
    let _ = ingest.terminate(Duration::from_secs(10));
    let total: i64 = statements.iter().map(|s| s.calls).sum();
    // The bench's own polling commits too: one per 200 ms poll, two queries each.
    let polls = (elapsed / 0.2).ceil() * 2.0 + 4.0;
    let n = sessions as f64;
    println!(
        "\nround trips ({sessions} sessions, private PostgreSQL with pg_stat_statements, background loops included):"
    );
    println!(
        "statements per credited session: {:.2}; commits per credited session: {:.2} (about {polls:.0} of the commits are this benchmark's own polling, subtracted)",
        total as f64 / n,
        ((commits_after - commits_before) as f64 - polls).max(0.0) / n
    );
    let exec_ms: f64 = statements.iter().map(|s| s.exec_ms).sum();
    println!(
        "execution time in PostgreSQL per credited session: {:.0} µs (pg_stat_statements' total_exec_time: lock waits included, and on these shared cores the time a backend was runnable but not running; planning, the commit's WAL flush, protocol and parsing not)",
        exec_ms * 1000.0 / n
    );
    println!("\n| calls per session | µs per call | statement |\n|---|---|---|");
    for s in statements.iter().take(25) {
        let q: String = s.query.chars().take(160).collect();
        println!(
            "| {:.2} | {:.0} | `{}` |",
            s.calls as f64 / n,
            s.exec_ms * 1000.0 / s.calls.max(1) as f64,
            q.replace('|', "\\|")
        );
    }
    drop(db);
    pg.stop();
    Ok(())
}

pub async fn run(runs: usize, sessions: usize, seconds: u64) -> anyhow::Result<()> {
    println!(
        "\n## fulfill's own cost ({sessions} purchases queued, 2 fulfill processes, Stripe answering at once, STRIPE_RATE_LIMIT=100000)"
    );
    println!(
        "\n| run | pgbench -c 16 tps | credited sessions/s | ÷ pgbench | settled redeliveries/s | Stripe calls per session |\n|---|---|---|---|---|---|"
    );
    let mut ratios = Vec::new();
    let (mut accounts, mut pgbench_accounts) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let f = one_run(sessions, seconds).await?;
        accounts.push(f.cpu);
        pgbench_accounts.push(f.pgbench_cpu);
        let ratio = f.credited_per_s / f.pgbench;
        ratios.push(ratio);
        println!(
            "| {run} | {:.0} | {:.0} | {:.2} | {:.0} | {:.3} |",
            f.pgbench, f.credited_per_s, ratio, f.settled_per_s, f.stripe_calls_per_session
        );
    }
    if !ratios.is_empty() {
        println!("median ÷ pgbench: {:.2}", median(ratios));
    }
    for (run, cpu) in accounts.iter().enumerate() {
        println!("run {}, credited phase: {cpu}", run + 1);
    }
    Account::table(
        &[
            ("pgbench TPC-B transactions", &pgbench_accounts),
            ("credited sessions", &accounts),
        ],
        &[
            ("fulfill", "fulfill (both)"),
            ("postgres", "PostgreSQL"),
            ("broker", "broker"),
            ("ingest", "ingest"),
            ("bench", "bench (fake Stripe, polling)"),
        ],
    );
    round_trips(1000.min(sessions)).await
}
