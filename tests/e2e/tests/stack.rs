//! The real binaries as processes, on random ports, against the real broker, a fresh
//! database and the fake Stripe: signed purchases in through ingest, balances out
//! through fulfill. And the README's own commands, so they cannot rot.

#![allow(clippy::unwrap_used)]

use std::{io::BufRead, os::unix::process::CommandExt, process::Stdio, time::Duration};

use e2e::{
    Proc, binaries,
    devstack::{GroupGuard, isolated_env, readme_command},
    free_port, log_dir, wait_ok, workspace,
};
use serde_json::{Value, json};
use test_support::{broker::TestBroker, db::TestDb};

const SECRET: &str = "whsec_e2e_secret";
const COMPLETED: &str = "checkout.session.completed";

struct Stack {
    ingest: String,
    fulfill: String,
    stripe: String,
    procs: Vec<Proc>,
    client: reqwest::Client,
}

async fn start_stack(
    test: &str,
    broker: &TestBroker,
    db: &TestDb,
    fulfill_instances: usize,
) -> Stack {
    let bins = binaries();
    let logs = log_dir(test);
    let client = test_support::http_client();
    let ingest_port = free_port();
    let (fake, stripe) = e2e::start_fake_stripe(&client, &logs).await;
    let mut procs = vec![fake];
    let amqp = ("AMQP_URL", broker.url.clone());
    let prefix = ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone());
    let mut fulfill = String::new();
    for i in 0..fulfill_instances {
        let port = free_port();
        procs.push(Proc::start(
            &format!("fulfill-{i}"),
            &bins.join("fulfill"),
            &[],
            &[
                ("DATABASE_URL", db.url.clone()),
                ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.into()),
                ("STRIPE_API_BASE", stripe.clone()),
                ("FULFILL_ADDR", format!("127.0.0.1:{port}")),
                amqp.clone(),
                prefix.clone(),
            ],
            &logs,
        ));
        let url = format!("http://127.0.0.1:{port}");
        assert!(
            wait_ok(&client, &format!("{url}/readyz"), Duration::from_secs(60)).await,
            "fulfill-{i} not ready"
        );
        if fulfill.is_empty() {
            fulfill = url;
        }
    }
    procs.push(Proc::start(
        "ingest",
        &bins.join("ingest"),
        &[],
        &[
            ("STRIPE_WEBHOOK_SECRET", SECRET.into()),
            ("INGEST_ADDR", format!("127.0.0.1:{ingest_port}")),
            amqp,
            prefix,
        ],
        &logs,
    ));
    let ingest = format!("http://127.0.0.1:{ingest_port}");
    assert!(
        wait_ok(
            &client,
            &format!("{ingest}/readyz"),
            Duration::from_secs(30)
        )
        .await,
        "ingest not ready"
    );
    Stack {
        ingest,
        fulfill,
        stripe,
        procs,
        client,
    }
}

impl Stack {
    async fn fake(&self, path: &str, body: Value) -> Value {
        let r = self
            .client
            .post(format!("{}{path}", self.stripe))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn session(
        &self,
        user: &str,
        price: &str,
        quantity: i64,
        payment_status: &str,
    ) -> String {
        let s = self
            .fake(
                "/_fake/sessions",
                json!({"client_reference_id": user, "line_items": [[price, quantity]], "payment_status": payment_status}),
            )
            .await;
        s["id"].as_str().unwrap().to_owned()
    }

    async fn event(&self, session: &str, event_type: &str) -> Vec<u8> {
        let e = self
            .fake(
                &format!("/_fake/sessions/{session}/events"),
                json!({"type": event_type}),
            )
            .await;
        e["body"].as_str().unwrap().as_bytes().to_vec()
    }

    async fn post(&self, body: &[u8]) -> u16 {
        let sig = fake_stripe::sign_webhook(body, SECRET, fake_stripe::now());
        self.client
            .post(format!("{}/webhooks/stripe", self.ingest))
            .header("Stripe-Signature", sig)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn balance(&self, user: &str) -> i64 {
        let v: Value = self
            .client
            .get(format!("{}/users/{user}/balance", self.fulfill))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["credits"].as_i64().unwrap()
    }

    async fn settles(&self, user: &str, expected: i64) {
        let reached = test_support::wait_for(Duration::from_secs(30), || async {
            (self.balance(user).await == expected).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "{user}: {} != {expected}",
            self.balance(user).await
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            self.balance(user).await,
            expected,
            "{user} moved after settling"
        );
    }

    /// SIGTERM every process, ingest first; each must exit 0.
    fn stop(mut self) {
        while let Some(mut p) = self.procs.pop() {
            let status = p.terminate(Duration::from_secs(30));
            assert!(
                status.is_some_and(|s| s.success()),
                "{} exited with {status:?}:\n{}",
                p.name,
                p.output()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_purchases_through_the_real_binaries_credit_exactly() {
    test_support::init_tracing();
    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let stack = start_stack("purchases", &broker, &db, 2).await;

    // A 10-credit pack bought twice, each event delivered three times.
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let s = stack.session("e2e-buyer", "price_pack_10", 1, "paid").await;
        bodies.push(stack.event(&s, COMPLETED).await);
    }
    for body in bodies.iter().chain(&bodies).chain(&bodies) {
        assert_eq!(stack.post(body).await, 200);
    }
    // Single credits, quantity 3.
    let s = stack
        .session("e2e-single", "price_single_credit", 3, "paid")
        .await;
    assert_eq!(stack.post(&stack.event(&s, COMPLETED).await).await, 200);
    // An async payment: nothing until it succeeds.
    let a = stack
        .session("e2e-async", "price_pack_10", 1, "unpaid")
        .await;
    assert_eq!(stack.post(&stack.event(&a, COMPLETED).await).await, 200);
    // An unsigned event is refused and changes nothing.
    let forged = stack.event(&a, COMPLETED).await;
    let r = stack
        .client
        .post(format!("{}/webhooks/stripe", stack.ingest))
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    stack.settles("e2e-buyer", 20).await;
    stack.settles("e2e-single", 3).await;
    stack.settles("e2e-async", 0).await;

    stack
        .fake(
            &format!("/_fake/sessions/{a}"),
            json!({"payment_status": "paid"}),
        )
        .await;
    assert_eq!(
        stack
            .post(
                &stack
                    .event(&a, "checkout.session.async_payment_succeeded")
                    .await
            )
            .await,
        200
    );
    stack.settles("e2e-async", 10).await;
    // Replays after the fact change nothing.
    for body in &bodies {
        assert_eq!(stack.post(body).await, 200);
    }
    stack.settles("e2e-buyer", 20).await;

    // A purchase whose webhook never came: `fulfill reconcile` heals it.
    let missed = stack.session("e2e-buyer", "price_pack_10", 1, "paid").await;
    stack.event(&missed, COMPLETED).await; // exists at Stripe, never delivered
    let env = [
        ("DATABASE_URL", db.url.clone()),
        ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.to_owned()),
        ("STRIPE_API_BASE", stack.stripe.clone()),
        ("AMQP_URL", broker.url.clone()),
        ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
    ];
    let cli = |args: &[&str]| {
        std::process::Command::new(binaries().join("fulfill"))
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    };
    let out = cli(&["reconcile", "--since", "1h"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("reconcile:") && stdout.contains("healed=1") && stdout.contains("errors=0"),
        "{stdout}"
    );
    stack.settles("e2e-buyer", 30).await;
    let out = cli(&["reconcile", "--since", "800h"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("30 days"));
    let out = cli(&["dlq", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 dead letters"));
    stack.stop();
}

/// One user's history for the reversal run: what happens at Stripe, and the balance that
/// Stripe's final state implies (a 10-credit pack priced 900).
struct Reversals {
    user: String,
    bodies: Vec<Vec<u8>>,
    expected: i64,
}

impl Stack {
    /// Builds a random history at the fake Stripe: a purchase (async for some, its success
    /// arriving late), 0-3 refunds (some pending then failed), maybe a dispute won or lost.
    async fn reversal_history(&self, user: &str, rng: &mut impl rand::Rng) -> Reversals {
        let is_async = rng.random_bool(0.3);
        let s = self
            .session(
                user,
                "price_pack_10",
                1,
                if is_async { "unpaid" } else { "paid" },
            )
            .await;
        let mut bodies = vec![self.event(&s, COMPLETED).await];
        if is_async {
            self.fake(
                &format!("/_fake/sessions/{s}"),
                json!({"payment_status": "paid"}),
            )
            .await;
            bodies.push(
                self.event(&s, "checkout.session.async_payment_succeeded")
                    .await,
            );
        }
        let mut refunded = 0;
        for _ in 0..rng.random_range(0..=3) {
            let amount = rng.random_range(1..=300);
            let pending = rng.random_bool(0.3);
            let r = self
                .fake(
                    &format!("/_fake/sessions/{s}/refunds"),
                    json!({"amount": amount, "status": if pending { "pending" } else { "succeeded" }}),
                )
                .await;
            bodies.push(r["body"].as_str().unwrap().as_bytes().to_vec());
            if pending && rng.random_bool(0.5) {
                let refund = r["refund"].as_str().unwrap();
                let f = self
                    .fake(
                        &format!("/_fake/refunds/{refund}"),
                        json!({"status": "failed"}),
                    )
                    .await;
                bodies.push(f["body"].as_str().unwrap().as_bytes().to_vec());
            } else {
                refunded += amount;
            }
        }
        let mut withdrawn = false;
        if rng.random_bool(0.5) {
            let d = self
                .fake(&format!("/_fake/sessions/{s}/disputes"), json!({}))
                .await;
            bodies.push(d["body"].as_str().unwrap().as_bytes().to_vec());
            let dispute = d["dispute"].as_str().unwrap().to_owned();
            withdrawn = true;
            if rng.random_bool(0.7) {
                let won = rng.random_bool(0.5);
                let c = self
                    .fake(
                        &format!("/_fake/disputes/{dispute}/close"),
                        json!({"status": if won { "won" } else { "lost" }}),
                    )
                    .await;
                bodies.push(c["body"].as_str().unwrap().as_bytes().to_vec());
                withdrawn = !won;
            }
        }
        let taken = if refunded == 0 {
            0
        } else {
            ((10 * refunded + 899) / 900).min(10)
        };
        Reversals {
            user: user.to_owned(),
            bodies,
            expected: if withdrawn { 0 } else { 10 - taken },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_reversals_through_the_real_binaries_end_exact() {
    use rand::{Rng, seq::SliceRandom};

    test_support::init_tracing();
    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let stack = start_stack("reversals", &broker, &db, 2).await;
    let mut rng = rand::rng();
    let mut histories = Vec::new();
    for i in 0..30 {
        histories.push(stack.reversal_history(&format!("rev-{i}"), &mut rng).await);
    }
    // Every event 1-3 times, in any order: reversals before purchases, closes before
    // creations, late async successes after the refunds of their own payment.
    let mut deliveries: Vec<&[u8]> = Vec::new();
    for h in &histories {
        for body in &h.bodies {
            for _ in 0..rng.random_range(1..=3) {
                deliveries.push(body);
            }
        }
    }
    deliveries.shuffle(&mut rng);
    for body in deliveries {
        assert_eq!(stack.post(body).await, 200);
    }
    for h in &histories {
        stack.settles(&h.user, h.expected).await;
    }
    let out = std::process::Command::new(binaries().join("fulfill"))
        .args(["dlq", "list"])
        .env_clear()
        .env("AMQP_URL", &broker.url)
        .env("AMQP_TOPOLOGY_PREFIX", &broker.prefix)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 dead letters"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stack.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_start_command_brings_up_a_stack_where_a_trigger_credits() {
    test_support::init_tracing();
    binaries();
    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let env = isolated_env(&broker, &db, &log_dir("readme-up").join("data"));
    let mut up = readme_command(&["up"], &env);
    up.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut up = up.spawn().unwrap();
    let pgid = up.id();
    let _group = GroupGuard(pgid);
    let stdout = up.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !seen
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops everything."))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "stack did not come up:\n{}",
            seen.join("\n")
        );
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(1)) {
            seen.push(line);
        }
        assert!(
            up.try_wait().unwrap().is_none(),
            "devstack up exited:\n{}",
            seen.join("\n")
        );
    }
    assert!(
        seen.iter().any(|l| l.contains("whsec_devstack_local_only")),
        "the banner shows the secret"
    );

    // The README's `devstack events`: tails credit events as a website's queue gets them.
    let mut tail = readme_command(&["events"], &env);
    tail.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut tail = tail.spawn().unwrap();
    let _tail_group = GroupGuard(tail.id());
    let tail_out = tail.stdout.take().unwrap();
    let (events_tx, events_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(tail_out)
            .lines()
            .map_while(Result::ok)
        {
            let _ = events_tx.send(line);
        }
    });
    // Bound before the purchase: wait until its queue exists (the exchange accepts a bind).
    std::thread::sleep(Duration::from_secs(3));

    let trigger = readme_command(
        &[
            "trigger",
            "purchase",
            "--user",
            "alice",
            "--price",
            "price_pack_10",
            "--quantity",
            "2",
        ],
        &env,
    )
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&trigger.stdout);
    assert!(
        trigger.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&trigger.stderr)
    );
    assert!(out.contains("balance of alice: 20 credits"), "{out}");

    let async_trigger = readme_command(
        &[
            "trigger",
            "async-purchase",
            "--user",
            "bob",
            "--price",
            "price_single_credit",
        ],
        &env,
    )
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&async_trigger.stdout);
    assert!(
        out.contains("balance of bob: 0 credits") && out.contains("balance of bob: 1 credits"),
        "{out}"
    );

    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(events
        .iter()
        .any(|l: &String| l.starts_with("credits.purchase") && l.contains("\"alice\""))
        && events
            .iter()
            .any(|l: &String| l.starts_with("credits.purchase") && l.contains("\"bob\"")))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "devstack events showed no purchases:\n{}",
            events.join("\n")
        );
        if let Ok(line) = events_rx.recv_timeout(Duration::from_secs(1)) {
            events.push(line);
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();

    // Ctrl-C, as a terminal sends it: to the whole process group.
    let _ = std::process::Command::new("kill")
        .args(["-s", "INT", "--", &format!("-{pgid}")])
        .status();
    let status = (0..600)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            up.try_wait().unwrap()
        })
        .unwrap_or_else(|| {
            while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) {
                seen.push(line);
            }
            panic!("devstack did not stop after Ctrl-C:\n{}", seen.join("\n"))
        });
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) {
        seen.push(line);
    }
    assert!(status.success(), "{status:?}\n{}", seen.join("\n"));
    assert!(
        seen.iter().any(|l| l.contains("stack stopped")),
        "{}",
        seen.join("\n")
    );
    let ingest = &env[0].1;
    assert!(
        std::net::TcpStream::connect(ingest).is_err(),
        "ingest still listening after Ctrl-C"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_one_liner_signs_a_fixture_and_it_lands_in_the_queue() {
    test_support::init_tracing();
    let bins = binaries();
    let broker = TestBroker::new().await;
    let port = free_port();
    let client = test_support::http_client();
    let mut ingest = Proc::start(
        "ingest-alone",
        &bins.join("ingest"),
        &[],
        &[
            ("STRIPE_WEBHOOK_SECRET", "whsec_devstack_local_only".into()),
            ("INGEST_ADDR", format!("127.0.0.1:{port}")),
            ("AMQP_URL", broker.url.clone()),
            ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
        ],
        &log_dir("send"),
    );
    assert!(
        wait_ok(
            &client,
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(30)
        )
        .await
    );
    let fixture =
        workspace().join("tests/fixtures/stripe/event_checkout_session_completed_basil.json");
    let out = readme_command(
        &["trigger", "send", fixture.to_str().unwrap()],
        &[("INGEST_ADDR", format!("127.0.0.1:{port}"))],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let message = broker
        .take(&broker.topology.checkout_queue(), Duration::from_secs(5))
        .await
        .expect("the fixture is in the checkout queue");
    assert_eq!(message.body, std::fs::read(&fixture).unwrap());
    assert!(
        ingest
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
}
