//! Nothing lost, nothing doubled: 1,000+ purchases through the real ingest and two
//! fulfill processes while RabbitMQ and PostgreSQL restart, fulfill processes are
//! SIGKILLed, and Stripe answers 429/5xx, spikes and hangs. Run on its own:
//! `cargo test -p chaos -- --nocapture` (`CHAOS_PURCHASES` changes the count).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chaos::{PrivatePostgres, PrivateRabbit, fulfill_proc, ledger_counts};
use e2e::{Proc, binaries, free_port, log_dir, wait_ok};
use fake_stripe::{FakeStripe, Knobs, PriceSpec, SessionSpec};
use futures_util::{StreamExt, stream};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use shared::topology::Topology;

const SECRET: &str = "whsec_chaos_secret_never_logged";
const PREFIX: &str = "chaos.";
const TAP: &str = "chaos.tap";
const COMPLETED: &str = "checkout.session.completed";
const SUCCEEDED: &str = "checkout.session.async_payment_succeeded";

struct Delivery {
    event_id: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct Figures {
    accepted: AtomicU64,
    answered_5xx: AtomicU64,
    connection_errors: AtomicU64,
    kills: AtomicU64,
}

/// Shares of the accepted deliveries at which RabbitMQ and then PostgreSQL restart.
const RABBIT_AT: f64 = 0.25;
const POSTGRES_AT: f64 = 0.55;

/// Which outages have begun.
#[derive(Default)]
struct Outages {
    rabbit: AtomicBool,
    postgres: AtomicBool,
}

impl Outages {
    /// Whether every outage due at this share of accepted deliveries has begun.
    fn due_ones_begun(&self, progress: f64) -> bool {
        (progress < RABBIT_AT || self.rabbit.load(Ordering::SeqCst))
            && (progress < POSTGRES_AT || self.postgres.load(Ordering::SeqCst))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_paid_session_is_credited_exactly_once_through_chaos() {
    test_support::init_tracing();
    let purchases: usize = std::env::var("CHAOS_PURCHASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let bins = binaries();
    let logs = log_dir("chaos");
    let work = logs.join("infra");
    std::fs::create_dir_all(&work).unwrap();
    let rabbit = Arc::new(PrivateRabbit::start(&work));
    let pg = Arc::new(PrivatePostgres::start(&work));
    let stripe = FakeStripe::start(fake_stripe::DEFAULT_API_KEY)
        .await
        .unwrap();
    let client = test_support::http_client();

    // The topology, a tap on every published event, and three poison messages.
    let conn = Connection::connect(&rabbit.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topology = Topology::new(PREFIX);
    topology.declare(&ch).await.unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        TAP.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum,
    )
    .await
    .unwrap();
    ch.queue_bind(
        TAP.into(),
        topology.events_exchange().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for poison in [&b"not json at all"[..], br#"{"id":"evt_p1","object":"event","type":"checkout.session.completed","data":{"object":{}}}"#, br#"{"id":"evt_p2","object":"event","type":"invoice.paid"}"#] {
        let c = ch
            .basic_publish("".into(), topology.checkout_queue().into(), BasicPublishOptions::default(), poison, BasicProperties::default().with_delivery_mode(2))
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }
    let _ = conn.close(200, "setup done".into()).await;

    // The processes.
    let mut fulfills = Vec::new();
    for i in 0..2 {
        fulfills.push(fulfill_proc(
            i,
            &rabbit.url(),
            &pg.url(),
            PREFIX,
            &stripe.base_url(),
            &logs,
        ));
    }
    for (_, url) in &fulfills {
        assert!(wait_ok(&client, &format!("{url}/readyz"), Duration::from_secs(60)).await);
    }
    let ingest_port = free_port();
    let mut ingest = Proc::start(
        "ingest",
        &bins.join("ingest"),
        &[],
        &[
            ("STRIPE_WEBHOOK_SECRET", SECRET.into()),
            ("INGEST_ADDR", format!("127.0.0.1:{ingest_port}")),
            ("INGEST_PUBLISH_TIMEOUT_MS", "2000".into()),
            ("AMQP_URL", rabbit.url()),
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

    // The purchases, and what each user must end with.
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let single = stripe.create_price(PriceSpec::credits(1));
    let pack = stripe.create_price(PriceSpec::credits(10));
    let product_pack = stripe.create_price(PriceSpec::product_credits(25));
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut deliveries: Vec<Delivery> = Vec::new();
    let mut many_items = 0;
    let mut asyncs = 0;
    for i in 0..purchases {
        let user = format!("chaos-user-{}", i % 40);
        let dup = rng.random_range(1..=3);
        match i % 10 {
            0..=5 => {
                let (price, qty, credits) = match i % 3 {
                    0 => (&single, rng.random_range(1..=3), 1),
                    1 => (&pack, rng.random_range(1..=2), 10),
                    _ => (&product_pack, 1, 25),
                };
                let s = stripe
                    .create_session(SessionSpec::paid(&user, price, qty))
                    .unwrap();
                *expected.entry(user).or_default() += qty * credits;
                let (event_id, body) = stripe.event_for_session(&s, COMPLETED).unwrap();
                for _ in 0..dup {
                    deliveries.push(Delivery {
                        event_id: event_id.clone(),
                        body: body.clone(),
                    });
                }
            }
            6 | 7 => {
                asyncs += 1;
                let s = stripe
                    .create_session(
                        SessionSpec::paid(&user, &pack, 1).with_status("complete", "unpaid"),
                    )
                    .unwrap();
                let completed = stripe.event_for_session(&s, COMPLETED).unwrap();
                stripe.update_session(&s, None, Some("paid"));
                let succeeded = stripe.event_for_session(&s, SUCCEEDED).unwrap();
                *expected.entry(user).or_default() += 10;
                for (event_id, body) in [completed, succeeded] {
                    for _ in 0..dup {
                        deliveries.push(Delivery {
                            event_id: event_id.clone(),
                            body: body.clone(),
                        });
                    }
                }
            }
            _ => {
                many_items += 1;
                let n = rng.random_range(11..=25);
                let items = (0..n).map(|_| (single.clone(), 1)).collect();
                let s = stripe
                    .create_session(SessionSpec {
                        line_items: items,
                        ..SessionSpec::paid(&user, &single, 1)
                    })
                    .unwrap();
                *expected.entry(user).or_default() += n;
                let (event_id, body) = stripe.event_for_session(&s, COMPLETED).unwrap();
                for _ in 0..dup {
                    deliveries.push(Delivery {
                        event_id: event_id.clone(),
                        body: body.clone(),
                    });
                }
            }
        }
    }
    deliveries.shuffle(&mut rng);
    let total_deliveries = deliveries.len() as u64;

    // Stripe misbehaves for the whole run.
    stripe.set_knobs(Knobs {
        latency_ms: 5,
        jitter_ms: 60,
        rate_429: 0.1,
        rate_5xx: 0.1,
        rate_hang: 0.02,
        hang_first: 0,
        hang_ms: 2_500,
        rate_limit_per_sec: None,
        reject_key: None,
    });

    let figures = Arc::new(Figures::default());
    let accepted_ids = Arc::new(Mutex::new(HashSet::new()));
    let started = Instant::now();
    // Each outage is due at a share of the accepted deliveries. Deliveries wait at that
    // point until it has begun, so a fast load cannot finish while the chaos thread is
    // busy with a kill and skip it.
    let outages = Arc::new(Outages::default());

    // Chaos, driven by progress.
    let chaos = {
        let figures = Arc::clone(&figures);
        let rabbit = Arc::clone(&rabbit);
        let pg = Arc::clone(&pg);
        let stripe_url = stripe.base_url();
        let logs = logs.clone();
        let outages = Arc::clone(&outages);
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let handle = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(7);
            let mut rabbit_restarts = 0;
            let mut pg_restarts = 0;
            let mut next_kill = Instant::now() + Duration::from_millis(2500);
            let mut n = 2;
            while !flag.load(Ordering::SeqCst) {
                let progress =
                    figures.accepted.load(Ordering::SeqCst) as f64 / total_deliveries as f64;
                if rabbit_restarts == 0 && progress >= RABBIT_AT {
                    outages.rabbit.store(true, Ordering::SeqCst);
                    rabbit.restart(Duration::from_secs(3));
                    rabbit_restarts += 1;
                }
                if pg_restarts == 0 && progress >= POSTGRES_AT {
                    outages.postgres.store(true, Ordering::SeqCst);
                    pg.restart(Duration::from_secs(3));
                    pg_restarts += 1;
                }
                if Instant::now() >= next_kill && !fulfills.is_empty() {
                    let victim = rng.random_range(0..fulfills.len());
                    let (mut p, _) = fulfills.swap_remove(victim);
                    p.signal("-KILL");
                    p.wait(Duration::from_secs(5));
                    figures.kills.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(500));
                    fulfills.push(fulfill_proc(
                        n,
                        &rabbit.url(),
                        &pg.url(),
                        PREFIX,
                        &stripe_url,
                        &logs,
                    ));
                    n += 1;
                    next_kill =
                        Instant::now() + Duration::from_millis(rng.random_range(1500..4000));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (fulfills, rabbit_restarts, pg_restarts)
        });
        (done, handle)
    };

    // Stripe's side: every delivery retried until answered 2xx.
    let deadline = started + Duration::from_secs(600);
    stream::iter(deliveries)
        .for_each_concurrent(16, |d| {
            let client = client.clone();
            let url = format!("{ingest_url}/webhooks/stripe");
            let figures = Arc::clone(&figures);
            let accepted_ids = Arc::clone(&accepted_ids);
            let outages = Arc::clone(&outages);
            async move {
                while !outages.due_ones_begun(
                    figures.accepted.load(Ordering::SeqCst) as f64 / total_deliveries as f64,
                ) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let mut attempt = 0u32;
                loop {
                    assert!(Instant::now() < deadline, "a delivery was never accepted");
                    let sig = fake_stripe::sign_webhook(&d.body, SECRET, fake_stripe::now());
                    match client
                        .post(&url)
                        .header("Stripe-Signature", sig)
                        .body(d.body.clone())
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            figures.accepted.fetch_add(1, Ordering::SeqCst);
                            accepted_ids.lock().unwrap().insert(d.event_id.clone());
                            return;
                        }
                        Ok(r) => {
                            assert!(
                                r.status().is_server_error(),
                                "ingest answered {}",
                                r.status()
                            );
                            figures.answered_5xx.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            figures.connection_errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10))))
                        .await;
                }
            }
        })
        .await;
    let load_time = started.elapsed();
    chaos.0.store(true, Ordering::SeqCst);
    let (fulfills, rabbit_restarts, pg_restarts) = chaos.1.join().unwrap();

    // Converge: every balance exact.
    let (_, api) = fulfills.last().unwrap();
    assert!(wait_ok(&client, &format!("{api}/readyz"), Duration::from_secs(60)).await);
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
    let converged = test_support::wait_for(Duration::from_secs(300), || async {
        for (user, credits) in &expected {
            if balance(user.clone()).await != Some(*credits) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let mut wrong = Vec::new();
    for (user, credits) in &expected {
        let got = balance(user.clone()).await;
        if got != Some(*credits) {
            wrong.push(format!("{user}: {got:?} != {credits}"));
        }
    }
    assert!(
        converged.is_some() && wrong.is_empty(),
        "balances wrong: {wrong:?}"
    );

    // The ledger: one purchase entry per session, never two.
    let (doubled, credited) = ledger_counts(&pg.url()).await;
    let lost = purchases as i64 - credited;
    assert_eq!(doubled, 0, "sessions credited twice");
    assert_eq!(lost, 0, "sessions never credited");

    // The broker: everything answered 2xx is held (tap), nothing is left unacked or in
    // retry, and the dead letters are exactly the planted poison.
    let conn = Connection::connect(&rabbit.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let drain = |queue: String| {
        let ch = ch.clone();
        async move {
            let mut out = Vec::new();
            while let Some(m) = ch
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
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
            out
        }
    };
    let retry_empty = test_support::wait_for(Duration::from_secs(30), || async {
        drain(topology.retry_queue()).await.is_empty().then_some(())
    })
    .await;
    assert!(retry_empty.is_some(), "messages left in the retry queue");
    let leftover = drain(topology.checkout_queue()).await;
    assert!(
        leftover.is_empty(),
        "{} messages left unprocessed in the checkout queue",
        leftover.len()
    );
    let tapped: HashSet<String> = drain(TAP.to_owned())
        .await
        .iter()
        .filter_map(|d| d.properties.message_id().as_ref().map(|id| id.to_string()))
        .collect();
    let accepted_ids = accepted_ids.lock().unwrap().clone();
    let missing: Vec<&String> = accepted_ids.difference(&tapped).collect();
    assert!(
        missing.is_empty(),
        "answered 2xx but not held by the broker: {missing:?}"
    );
    let dead = drain(topology.dead_letter_queue()).await;
    let dead_kinds: Vec<String> = dead
        .iter()
        .map(|d| {
            shared::amqp::header_str(
                d.properties.headers().as_ref(),
                shared::amqp::headers::DEAD_KIND,
            )
            .unwrap_or("broker")
            .to_owned()
        })
        .collect();
    assert_eq!(
        dead_kinds,
        vec!["poison"; 3],
        "dead letters other than the planted poison"
    );
    let _ = conn.close(200, "done".into()).await;

    // Shut down cleanly; no secret ever reached a log line.
    assert!(
        ingest
            .terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let mut outputs = vec![ingest.output()];
    for (mut p, _) in fulfills {
        assert!(
            p.terminate(Duration::from_secs(30))
                .is_some_and(|s| s.success()),
            "{}",
            p.output()
        );
        outputs.push(p.output());
    }
    for entry in std::fs::read_dir(&logs).unwrap().filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "log") {
            outputs.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    for out in &outputs {
        assert!(!out.contains(SECRET), "the webhook secret reached a log");
        assert!(
            !out.contains(fake_stripe::DEFAULT_API_KEY),
            "the Stripe key reached a log"
        );
        assert!(!out.contains("v1="), "a signature reached a log");
    }

    let stats = stripe.stats();
    println!(
        "chaos: purchases={purchases} (async={asyncs}, >10 line items={many_items}) deliveries={total_deliveries} \
         accepted={} ingest_5xx={} connection_errors={} rabbitmq_restarts={rabbit_restarts} postgres_restarts={pg_restarts} \
         fulfill_kills={} stripe_429={} stripe_5xx={} stripe_hangs={} load_seconds={:.1} total_seconds={:.1} lost={lost} doubled={}",
        figures.accepted.load(Ordering::SeqCst),
        figures.answered_5xx.load(Ordering::SeqCst),
        figures.connection_errors.load(Ordering::SeqCst),
        figures.kills.load(Ordering::SeqCst),
        stats.injected_429,
        stats.injected_5xx,
        stats.injected_hangs,
        load_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        doubled,
    );
    assert!(
        rabbit_restarts == 1 && pg_restarts == 1,
        "the outages did not all happen"
    );
    assert!(figures.kills.load(Ordering::SeqCst) > 0);
}
