//! Issue #15's cluster test: a three-node RabbitMQ cluster of private nodes (started from
//! the installed packages, on their own ports), the owed queues replicated on all three,
//! purchases through the real ingest and two real fulfill processes given the three-node
//! `AMQP_URL`; mid-load the checkout queue's leader node is SIGKILLed, later another node
//! is restarted. Every event answered 2xx is credited exactly once, nothing is lost or
//! doubled, nothing is dead-lettered. Run on its own:
//! `cargo test -p chaos --test cluster -- --nocapture` (`CLUSTER_PURCHASES` changes the count).
//!
//! What it caught: on RabbitMQ 3.10 a channel whose first publish to a quorum queue comes
//! just after the leader died (before the queue record names the new one) asks the dead
//! node on every publish and is nacked until that node is back; ingest now retires a
//! connection whose publish was not confirmed, and fulfill one whose copy was not.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chaos::{PrivateRabbit, fulfill_proc, ledger_counts};
use e2e::{Proc, binaries, free_port, log_dir, wait_ok};
use fake_stripe::{FakeStripe, PriceSpec, SessionSpec};
use futures_util::{StreamExt, stream};
use lapin::{
    ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use shared::{amqp::failover::connect_any, topology::Topology};
use test_support::db::TestDb;

const SECRET: &str = "whsec_cluster_secret_never_logged";
const PREFIX: &str = "cluster.";
const COMPLETED: &str = "checkout.session.completed";
/// How long the killed leader's node stays down: longer than [`FAILOVER_BOUND`], so that
/// a publisher stuck on it shows.
const KILLED_DOWN_FOR: Duration = Duration::from_secs(12);
/// ingest answers 2xx again within this after the leader's SIGKILL (its last 503 earlier).
const FAILOVER_BOUND: Duration = Duration::from_secs(8);
/// Deliveries started per second.
const DELIVERIES_PER_SEC: f64 = 20.0;

struct Delivery {
    event_id: String,
    body: Vec<u8>,
}

/// One answer (or connection failure) seen by the sender.
struct Answer {
    at: Instant,
    started: Instant,
    ok: bool,
}

/// When the outages happened.
#[derive(Default)]
struct Outages {
    killed_at: Option<Instant>,
    killed: String,
    back_at: Option<Instant>,
    restart_at: Option<Instant>,
    restarted: String,
    restarted_at: Option<Instant>,
}

/// The checkout queue's leader and members, asked of the first node that answers.
fn checkout_members(nodes: &[PrivateRabbit], topology: &Topology) -> (String, Vec<String>) {
    for node in nodes {
        if let Some((_, leader, members)) = node
            .queue_members()
            .into_iter()
            .find(|(name, _, _)| *name == topology.checkout_queue())
        {
            return (leader, members);
        }
    }
    panic!("no node lists {}", topology.checkout_queue());
}

/// Takes every message of `queue` (through whichever node is up), acking them.
async fn drain(urls: &str, queue: &str) -> Vec<lapin::message::Delivery> {
    let (conn, _) = connect_any(urls, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        out.push(m.delivery);
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Failed answers in `[from, to)`, and how long after `from` the last of them came.
fn window(answers: &[Answer], from: Instant, to: Instant) -> (usize, Duration) {
    let failed: Vec<&Answer> = answers
        .iter()
        .filter(|a| !a.ok && a.at >= from && a.at < to)
        .collect();
    let last = failed
        .iter()
        .map(|a| a.at.duration_since(from))
        .max()
        .unwrap_or_default();
    (failed.len(), last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_credits_every_accepted_purchase_once_through_a_leader_kill_and_a_restart()
 {
    test_support::init_tracing();
    let purchases: usize = std::env::var("CLUSTER_PURCHASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(700);
    let bins = binaries();
    let logs = log_dir("cluster");
    let work = logs.join("infra");
    std::fs::create_dir_all(&work).unwrap();

    // Three nodes, one cluster; the node list both services get.
    let nodes: Arc<Vec<PrivateRabbit>> = Arc::new(
        (0..3)
            .map(|i| PrivateRabbit::start(&work.join(format!("n{i}"))))
            .collect(),
    );
    nodes[1].join(&nodes[0]);
    nodes[2].join(&nodes[0]);
    let urls = nodes
        .iter()
        .map(PrivateRabbit::url)
        .collect::<Vec<_>>()
        .join(",");

    // ingest first: it declares the topology, and a quorum queue's leader starts on the
    // declaring client's node (`client-local`), so the SIGKILL of the checkout queue's
    // leader below also cuts ingest's own connection: ingest reconnects to a survivor and
    // publishes there while the new leader takes over.
    let client = test_support::http_client();
    let ingest_port = free_port();
    let mut ingest = Proc::start(
        "ingest",
        &bins.join("ingest"),
        &[],
        &[
            ("STRIPE_WEBHOOK_SECRET", SECRET.into()),
            ("INGEST_ADDR", format!("127.0.0.1:{ingest_port}")),
            ("INGEST_PUBLISH_TIMEOUT_MS", "2000".into()),
            ("AMQP_URL", urls.clone()),
            ("AMQP_TOPOLOGY_PREFIX", PREFIX.into()),
        ],
        &logs,
    );
    let ingest_url = format!("http://127.0.0.1:{ingest_port}");
    assert!(
        wait_ok(
            &client,
            &format!("{ingest_url}/readyz"),
            Duration::from_secs(30)
        )
        .await
    );

    let topology = Topology::new(PREFIX);
    let ingest_node = test_support::wait_for(Duration::from_secs(10), || async {
        strip_ansi(&ingest.output())
            .lines()
            .find(|l| l.contains("connected to RabbitMQ"))
            .and_then(|l| l.split("node=").nth(1))
            .and_then(|n| n.split_whitespace().next())
            .map(str::to_owned)
    })
    .await
    .expect("ingest reports the node it uses");
    let all: HashSet<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    let listed = nodes[0].queue_members();
    for queue in [
        topology.checkout_queue(),
        topology.retry_queue(),
        topology.dead_letter_queue(),
    ] {
        let (_, _, members) = listed
            .iter()
            .find(|(name, _, _)| *name == queue)
            .unwrap_or_else(|| panic!("{queue} not listed: {listed:?}"));
        let members: HashSet<&str> = members.iter().map(String::as_str).collect();
        assert_eq!(members, all, "{queue} is not replicated on all three nodes");
    }
    let (leader, _) = checkout_members(&nodes, &topology);
    let leader_port = nodes.iter().find(|n| n.node == leader).unwrap().port;
    assert_eq!(
        ingest_node,
        format!("127.0.0.1:{leader_port}"),
        "the checkout queue's leader is on the node ingest declared it from"
    );

    // The services, all given the three-node AMQP_URL.
    let db = TestDb::new().await;
    let stripe = FakeStripe::start(fake_stripe::DEFAULT_API_KEY)
        .await
        .unwrap();
    let (fulfills, apis): (Vec<Proc>, Vec<String>) = (0..2)
        .map(|i| fulfill_proc(i, &urls, &db.url, PREFIX, &stripe.base_url(), &logs))
        .unzip();
    for api in &apis {
        assert!(wait_ok(&client, &format!("{api}/readyz"), Duration::from_secs(60)).await);
    }
    // Distinct purchases, a third of them delivered twice (as Stripe may).
    let mut rng = StdRng::seed_from_u64(0xc105);
    let single = stripe.create_price(PriceSpec::credits(1));
    let pack = stripe.create_price(PriceSpec::credits(10));
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut deliveries = Vec::new();
    for i in 0..purchases {
        let user = format!("cluster-user-{}", i % 30);
        let (price, credits) = if i % 2 == 0 {
            (&single, 1)
        } else {
            (&pack, 10)
        };
        let qty = rng.random_range(1..=3);
        let s = stripe
            .create_session(SessionSpec::paid(&user, price, qty))
            .unwrap();
        *expected.entry(user).or_default() += qty * credits;
        let (event_id, body) = stripe.event_for_session(&s, COMPLETED).unwrap();
        for _ in 0..if i % 3 == 0 { 2 } else { 1 } {
            deliveries.push(Delivery {
                event_id: event_id.clone(),
                body: body.clone(),
            });
        }
    }
    deliveries.shuffle(&mut rng);
    let total_deliveries = deliveries.len() as u64;

    let accepted = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let accepted_ids = Arc::new(Mutex::new(HashSet::new()));
    let outages = Arc::new(Mutex::new(Outages::default()));
    let done = Arc::new(AtomicBool::new(false));
    let outages_over = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // The outages, driven by progress: the checkout leader SIGKILLed at 20 %, brought
    // back 12 s later; then another node restarted (stopped, 1 s down, started).
    let chaos = {
        let (nodes, topology) = (Arc::clone(&nodes), topology.clone());
        let (accepted, outages, done, over) = (
            Arc::clone(&accepted),
            Arc::clone(&outages),
            Arc::clone(&done),
            Arc::clone(&outages_over),
        );
        std::thread::spawn(move || {
            while (accepted.load(Ordering::SeqCst) as f64) < 0.2 * total_deliveries as f64 {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let (leader, _) = checkout_members(&nodes, &topology);
            let killed = nodes.iter().position(|n| n.node == leader).unwrap();
            println!("SIGKILL the checkout queue's leader {leader}");
            nodes[killed].kill();
            outages.lock().unwrap().killed_at = Some(Instant::now());
            outages.lock().unwrap().killed = leader;
            std::thread::sleep(KILLED_DOWN_FOR);
            nodes[killed].start_again();
            outages.lock().unwrap().back_at = Some(Instant::now());
            std::thread::sleep(Duration::from_secs(3));
            let other = (killed + 1) % 3;
            println!("restarting another node, {}", nodes[other].node);
            outages.lock().unwrap().restart_at = Some(Instant::now());
            outages.lock().unwrap().restarted = nodes[other].node.clone();
            nodes[other].restart(Duration::from_secs(1));
            outages.lock().unwrap().restarted_at = Some(Instant::now());
            over.store(true, Ordering::SeqCst);
        })
    };

    // Stripe's side: every delivery, paced, retried until answered 2xx. The last tenth
    // waits for the outages to be over, however slowly the nodes boot here.
    let gate = deliveries.len() * 9 / 10;
    let deadline = started + Duration::from_secs(300);
    let interval = Duration::from_secs_f64(1.0 / DELIVERIES_PER_SEC);
    stream::iter(deliveries.into_iter().enumerate())
        .for_each_concurrent(32, |(n, d)| {
            let client = client.clone();
            let url = format!("{ingest_url}/webhooks/stripe");
            let (accepted, answers, accepted_ids, over) = (
                Arc::clone(&accepted),
                Arc::clone(&answers),
                Arc::clone(&accepted_ids),
                Arc::clone(&outages_over),
            );
            async move {
                tokio::time::sleep_until((started + interval * n as u32).into()).await;
                while n >= gate && !over.load(Ordering::SeqCst) {
                    assert!(Instant::now() < deadline, "the outages never ended");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut attempt = 0u32;
                loop {
                    assert!(Instant::now() < deadline, "a delivery was never accepted");
                    let sig = fake_stripe::sign_webhook(&d.body, SECRET, fake_stripe::now());
                    let sent = Instant::now();
                    let ok = match client
                        .post(&url)
                        .header("Stripe-Signature", sig)
                        .body(d.body.clone())
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => true,
                        Ok(r) => {
                            // Never a 4xx for a correctly signed event, outage or not.
                            assert_eq!(r.status(), 503, "ingest answered {}", r.status());
                            false
                        }
                        Err(_) => false,
                    };
                    answers.lock().unwrap().push(Answer {
                        at: Instant::now(),
                        started: sent,
                        ok,
                    });
                    if ok {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        accepted_ids.lock().unwrap().insert(d.event_id.clone());
                        return;
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10))))
                        .await;
                }
            }
        })
        .await;
    let load_end = Instant::now();
    done.store(true, Ordering::SeqCst);
    chaos.join().unwrap();

    // Converge: every balance exact.
    let api = &apis[0];
    let balance = |user: String| {
        let client = client.clone();
        let api = api.clone();
        async move {
            let v: serde_json::Value = client
                .get(format!("{api}/users/{user}/balance"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["credits"].as_i64()
        }
    };
    let converged = test_support::wait_for(Duration::from_secs(120), || async {
        for (user, credits) in &expected {
            if balance(user.clone()).await != Some(*credits) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let converged_at = Instant::now();
    let mut wrong = Vec::new();
    for (user, credits) in &expected {
        let got = balance(user.clone()).await;
        if got != Some(*credits) {
            wrong.push(format!("{user}: {got:?} != {credits}"));
        }
    }

    // The ledger: one purchase entry per accepted session, never two.
    let accepted_ids = accepted_ids.lock().unwrap().clone();
    let (doubled, credited) = ledger_counts(&db.url).await;
    let lost = accepted_ids.len() as i64 - credited;

    // The broker: nothing left over, nothing dead-lettered; still three members.
    let retry_empty = test_support::wait_for(Duration::from_secs(30), || async {
        drain(&urls, &topology.retry_queue())
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    let leftover = drain(&urls, &topology.checkout_queue()).await.len();
    let dead = drain(&urls, &topology.dead_letter_queue()).await.len();
    let (_, members_after) = checkout_members(&nodes, &topology);

    // The figures, then the verdict.
    let outages = outages.lock().unwrap();
    let answers = answers.lock().unwrap();
    let (killed_at, back_at, restart_at, restarted_at) = (
        outages.killed_at.expect("the leader was never killed"),
        outages.back_at.unwrap(),
        outages.restart_at.expect("no node was restarted"),
        outages.restarted_at.unwrap(),
    );
    let (failover_503s, failover_last) = window(&answers, killed_at, restart_at);
    let (restart_503s, restart_last) = window(&answers, restart_at, load_end + interval);
    // Recovered: the first 2xx to a request sent after the kill.
    let recovered = answers
        .iter()
        .filter(|a| a.ok && a.started >= killed_at)
        .map(|a| a.at.duration_since(killed_at))
        .min()
        .unwrap_or_default();
    let answered_2xx = answers.iter().filter(|a| a.ok).count();
    let ingest_log = strip_ansi(&ingest.output());
    let retired = ingest_log
        .matches("publish not confirmed; opening fresh channels")
        .count();
    let credits: i64 = expected.values().sum();
    let credit_seconds = converged_at.duration_since(started).as_secs_f64();
    println!(
        "cluster figures: purchases={purchases} deliveries={total_deliveries} answered_2xx={answered_2xx} \
         non_2xx={} ingest_node={ingest_node} ingest_connections_retired={retired} killed={} restarted={} 503s_during_failover={failover_503s} (last {:.1}s after the kill) \
         first_2xx_after_kill={:.2}s killed_node_back_after={:.1}s 503s_during_restart={restart_503s} (last {:.1}s after it began, restart took {:.1}s) \
         load_seconds={:.1} credited={credited} credits={credits} purchases_per_sec={:.1} credits_per_sec={:.0} lost={lost} doubled={doubled} dead_letters={dead}",
        answers.len() - answered_2xx,
        outages.killed,
        outages.restarted,
        failover_last.as_secs_f64(),
        recovered.as_secs_f64(),
        back_at.duration_since(killed_at).as_secs_f64(),
        restart_last.as_secs_f64(),
        restarted_at.duration_since(restart_at).as_secs_f64(),
        load_end.duration_since(started).as_secs_f64(),
        credited as f64 / credit_seconds,
        credits as f64 / credit_seconds,
    );
    assert!(restarted_at < load_end, "both outages happen mid-load");
    assert!(
        failover_last < FAILOVER_BOUND,
        "ingest still answered 503 {failover_last:?} after the leader's SIGKILL (the node came back after {:?})",
        back_at.duration_since(killed_at)
    );
    assert_eq!(
        answered_2xx as u64, total_deliveries,
        "every delivery answered 2xx in the end"
    );
    assert!(
        converged.is_some() && wrong.is_empty(),
        "balances wrong: {wrong:?}"
    );
    assert_eq!(
        accepted_ids.len(),
        purchases,
        "every purchase's event accepted"
    );
    assert_eq!(doubled, 0, "sessions credited twice");
    assert_eq!(lost, 0, "accepted sessions never credited");
    assert!(retry_empty.is_some(), "messages left in the retry queue");
    assert_eq!(leftover, 0, "messages left in the checkout queue");
    assert_eq!(dead, 0, "messages dead-lettered");
    assert_eq!(
        members_after
            .iter()
            .map(String::as_str)
            .collect::<HashSet<_>>(),
        all,
        "the checkout queue lost a member"
    );

    // Shut down cleanly; no secret ever reached a log line.
    assert!(
        ingest
            .terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let mut outputs = vec![ingest.output()];
    for mut p in fulfills {
        assert!(
            p.terminate(Duration::from_secs(30))
                .is_some_and(|s| s.success()),
            "{}",
            p.output()
        );
        outputs.push(p.output());
    }
    for out in &outputs {
        assert!(!out.contains(SECRET), "the webhook secret reached a log");
        assert!(!out.contains("v1="), "a signature reached a log");
    }
    // Both services said which node they use.
    assert!(
        outputs.iter().all(|o| o.contains("connected to RabbitMQ")),
        "a service did not report its node"
    );
}
