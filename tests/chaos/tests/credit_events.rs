//! Credit events through chaos: debits and grants through two real fulfill processes
//! while the broker (a private RabbitMQ node) restarts and a fulfill process is
//! SIGKILLed and started again. Afterwards every ledger entry has been announced on
//! `credits.events`, each user's sequences are 1..n without a gap, none was announced out
//! of order; duplicates (the at-least-once redeliveries after the kill) are counted.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use chaos::PrivateRabbit;
use e2e::{Proc, binaries, free_port, log_dir, wait_ok};
use futures_util::{StreamExt, stream};
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use shared::topology::Topology;
use test_support::db::TestDb;

const PREFIX: &str = "chaosev.";
const QUEUE: &str = "chaosev.website";
const USERS: usize = 20;

fn fulfill(i: u64, rabbit: &PrivateRabbit, db: &TestDb, logs: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let p = Proc::start(
        &format!("fulfill-{i}"),
        &binaries().join("fulfill"),
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.into()),
            ("STRIPE_API_BASE", "http://127.0.0.1:9".into()),
            ("FULFILL_ADDR", format!("127.0.0.1:{port}")),
            ("AMQP_URL", rabbit.url()),
            ("AMQP_TOPOLOGY_PREFIX", PREFIX.into()),
        ],
        logs,
    );
    (p, format!("http://127.0.0.1:{port}"))
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    use diesel::{QueryableByName, sql_query, sql_types::BigInt};
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = db.connect().await;
    let row: Row = sql_query(sql).get_result(&mut conn).await.unwrap();
    row.n
}

/// The website's queue: durable and quorum, so it outlives the broker restart.
async fn bind_website_queue(url: &str) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    Topology::new(PREFIX).declare(&ch).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        QUEUE.into(),
        Topology::new(PREFIX)
            .credit_events_exchange()
            .as_str()
            .into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "bound".into()).await;
}

/// Every message in the website's queue, in queue order.
async fn drain(url: &str) -> Vec<(String, Value)> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(QUEUE.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        out.push((id, serde_json::from_slice(&m.delivery.data).unwrap()));
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = conn.close(200, "drained".into()).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_is_announced_in_order_through_a_broker_restart_and_a_sigkill() {
    test_support::init_tracing();
    binaries();
    let logs = log_dir("chaos-credit-events");
    let rabbit = PrivateRabbit::start(&logs);
    let db = TestDb::new().await;
    bind_website_queue(&rabbit.url()).await;
    let client = test_support::http_client();
    let (a, a_url) = fulfill(0, &rabbit, &db, &logs);
    let (b, b_url) = fulfill(1, &rabbit, &db, &logs);
    for url in [&a_url, &b_url] {
        assert!(wait_ok(&client, &format!("{url}/readyz"), Duration::from_secs(60)).await);
    }
    let mut procs = vec![a, b];
    let urls = std::sync::Arc::new(std::sync::Mutex::new(vec![a_url.clone(), b_url.clone()]));

    let requests = std::env::var("CHAOS_DEBITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500_usize);
    let load = {
        let client = client.clone();
        let urls = std::sync::Arc::clone(&urls);
        tokio::spawn(async move {
            stream::iter(0..requests)
                .for_each_concurrent(16, |i| {
                    let client = client.clone();
                    let urls = std::sync::Arc::clone(&urls);
                    async move {
                        let user = format!("user{}", i % USERS);
                        let key = format!("chaos-{i}");
                        let (path, body) = if i < USERS {
                            (
                                format!("/users/{user}/grants"),
                                json!({"amount": 1_000_000, "reason": "seed"}),
                            )
                        } else {
                            (format!("/users/{user}/debits"), json!({"amount": 1}))
                        };
                        // The same key until answered: a retry after a kill is never a second debit.
                        for attempt in 0.. {
                            let url = urls.lock().unwrap()[(i + attempt) % 2].clone();
                            let r = client
                                .post(format!("{url}{path}"))
                                .header("Idempotency-Key", &key)
                                .json(&body)
                                .timeout(Duration::from_secs(5))
                                .send()
                                .await;
                            match r {
                                Ok(r) if r.status().as_u16() == 201 => return,
                                Ok(r) if r.status().as_u16() == 409 => return,
                                _ => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        }
                    }
                })
                .await;
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbit.restart(Duration::from_secs(3));
    println!("broker restarted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut killed = procs.remove(0);
    killed.signal("-KILL");
    killed.wait(Duration::from_secs(10));
    println!("fulfill-0 SIGKILLed");
    let (c, c_url) = fulfill(2, &rabbit, &db, &logs);
    assert!(wait_ok(&client, &format!("{c_url}/readyz"), Duration::from_secs(60)).await);
    urls.lock().unwrap()[0] = c_url;
    procs.push(c);
    load.await.unwrap();

    // Everything committed leaves the outbox once the broker confirmed it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while scalar(
        &db,
        "SELECT count(*) AS n FROM credit_events WHERE sent_at IS NULL",
    )
    .await
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox never emptied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let entries = scalar(&db, "SELECT count(*) AS n FROM ledger_entries").await;
    let received = drain(&rabbit.url()).await;
    let mut ids = HashSet::new();
    let mut per_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut duplicates = 0;
    for (id, body) in &received {
        if !ids.insert(id.clone()) {
            duplicates += 1;
            continue;
        }
        per_user
            .entry(body["user_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["sequence"].as_i64().unwrap());
    }
    let mut lost = 0;
    let mut out_of_order = 0;
    for seqs in per_user.values() {
        if seqs.windows(2).any(|w| w[1] < w[0]) {
            out_of_order += 1;
        }
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        let n = i64::try_from(sorted.len()).unwrap();
        if sorted != (1..=n).collect::<Vec<_>>() {
            lost += 1;
        }
    }
    let announced = i64::try_from(ids.len()).unwrap();
    println!(
        "credit events: entries={entries} announced={announced} lost={} duplicates={duplicates} \
         users_with_gaps={lost} users_out_of_order={out_of_order}",
        entries - announced
    );
    assert_eq!(announced, entries, "every committed entry announced");
    assert_eq!(lost, 0, "sequences without gaps");
    assert_eq!(out_of_order, 0, "per-user order kept");
    for mut p in procs {
        p.terminate(Duration::from_secs(15));
    }
}
