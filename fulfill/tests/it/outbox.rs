//! Credit events: every committed ledger entry (and every session newly needing
//! attention) is announced on `credits.events`, in per-user sequence, at least once,
//! across broker outages and several relaying processes.

use std::{collections::HashMap, time::Duration};

use fake_stripe::{PriceSpec, SessionSpec};
use lapin::{
    options::{QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};

use crate::{
    helpers::{Options, World},
    spending::{grant, key, post},
};

/// A website's queue bound to every credit event (exclusive: gone with the test).
async fn website_queue(world: &World) -> String {
    let name = format!("{}website.credits", world.broker.prefix);
    let channel = world.broker.channel();
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.as_str().into(),
            world
                .broker
                .topology
                .credit_events_exchange()
                .as_str()
                .into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    name
}

struct Event {
    routing_key: String,
    message_id: String,
    persistent: bool,
    body: Value,
}

/// Reads events until `want` distinct ones arrived (or the wait is over).
async fn receive(world: &World, queue: &str, want: usize) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let distinct = out
            .iter()
            .map(|e| e.message_id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        if distinct >= want || tokio::time::Instant::now() > deadline {
            return out;
        }
        if let Some(m) = world.broker.take(queue, Duration::from_secs(1)).await {
            out.push(Event {
                routing_key: m.routing_key,
                message_id: m
                    .properties
                    .message_id()
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                persistent: *m.properties.delivery_mode() == Some(2),
                body: serde_json::from_slice(&m.body).unwrap(),
            });
        }
    }
}

/// Per user: the sequences in arrival order, duplicates (redeliveries) dropped.
fn sequences(events: &[Event]) -> HashMap<String, Vec<i64>> {
    let mut seen = std::collections::HashSet::new();
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for e in events {
        if !seen.insert(e.message_id.clone()) {
            continue;
        }
        if let (Some(user), Some(seq)) = (e.body["user_id"].as_str(), e.body["sequence"].as_i64()) {
            out.entry(user.to_owned()).or_default().push(seq);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_is_announced_with_its_ids_in_sequence() {
    let world = World::new().await;
    let queue = website_queue(&world).await;
    let app = world.start(&Options::default()).await;
    let g = grant(&world, &app, "ivy", 10).await;
    let d = post(
        &world,
        &app,
        "/users/ivy/debits",
        Some(&key()),
        &json!({"amount": 2}),
    )
    .await;
    let h = post(
        &world,
        &app,
        "/users/ivy/holds",
        Some(&key()),
        &json!({"amount": 3}),
    )
    .await;
    let hold = h.body["hold_id"].as_str().unwrap();
    post(
        &world,
        &app,
        &format!("/holds/{hold}/capture"),
        None,
        &json!({}),
    )
    .await;

    let events = receive(&world, &queue, 3).await;
    assert_eq!(events.len(), 3);
    let keys: Vec<&str> = events.iter().map(|e| e.routing_key.as_str()).collect();
    assert_eq!(keys, ["credits.grant", "credits.debit", "credits.debit"]);
    assert!(events.iter().all(|e| e.persistent));
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(ids.len(), 3);
    let first = &events[0].body;
    assert_eq!(first["id"].as_str(), Some(events[0].message_id.as_str()));
    assert_eq!(
        (
            first["type"].as_str(),
            first["user_id"].as_str(),
            first["delta"].as_i64(),
            first["credits_after"].as_i64(),
            first["sequence"].as_i64()
        ),
        (
            Some("credits.grant"),
            Some("ivy"),
            Some(10),
            Some(10),
            Some(1)
        )
    );
    assert_eq!(first["grant_id"], g["grant_id"]);
    assert!(
        first["debit_id"].is_null() && first["hold_id"].is_null() && first["session_id"].is_null()
    );
    assert!(first["created"].is_string());
    assert_eq!(events[1].body["debit_id"], d.body["debit_id"]);
    assert_eq!(
        (
            events[1].body["credits_after"].as_i64(),
            events[1].body["sequence"].as_i64()
        ),
        (Some(8), Some(2))
    );
    assert_eq!(
        (
            events[2].body["hold_id"].as_str(),
            events[2].body["delta"].as_i64(),
            events[2].body["sequence"].as_i64()
        ),
        (Some(hold), Some(-3), Some(3))
    );
    // Nothing more, not even a second copy.
    assert!(
        world
            .broker
            .take(&queue, Duration::from_millis(700))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_and_sessions_needing_attention_are_announced() {
    let world = World::new().await;
    let queue = website_queue(&world).await;
    let app = world.start(&Options::default()).await;
    let price = world.price(PriceSpec::credits(5));
    let s = world.session(SessionSpec::paid("jack", &price, 2));
    assert_eq!(app.fulfill(&world.client, &s).await.0, 200);
    let bad = world.price(PriceSpec::no_credits());
    let t = world.session(SessionSpec::paid("jack", &bad, 1));
    assert_eq!(
        app.fulfill(&world.client, &t).await.1["state"],
        "needs_attention"
    );
    // Not newly: no second announcement.
    app.fulfill(&world.client, &t).await;

    let events = receive(&world, &queue, 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].routing_key, "credits.purchase");
    assert_eq!(
        (
            events[0].body["session_id"].as_str(),
            events[0].body["delta"].as_i64(),
            events[0].body["sequence"].as_i64()
        ),
        (Some(s.as_str()), Some(10), Some(1))
    );
    assert_eq!(events[1].routing_key, "session.needs_attention");
    assert_eq!(events[1].body["type"], "session.needs_attention");
    assert_eq!(events[1].body["session_id"].as_str(), Some(t.as_str()));
    assert_eq!(events[1].body["user_id"], "jack");
    assert!(events[1].body["reason"].is_string());
    assert!(
        world
            .broker
            .take(&queue, Duration::from_millis(700))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_the_broker_is_away_are_announced_once_it_is_back() {
    let world = World::new().await;
    let queue = website_queue(&world).await;
    let options = Options {
        via_proxy: true,
        ..Options::default()
    };
    let app = world.start(&options).await;
    grant(&world, &app, "kim", 1000).await;
    let mut debits = 0;
    for round in 0..3 {
        app.cut_broker();
        for _ in 0..10 {
            let a = post(
                &world,
                &app,
                "/users/kim/debits",
                Some(&key()),
                &json!({"amount": 1}),
            )
            .await;
            assert_eq!(a.status, 201, "round {round}: {}", a.body);
            debits += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.restore_broker();
        for _ in 0..10 {
            post(
                &world,
                &app,
                "/users/kim/debits",
                Some(&key()),
                &json!({"amount": 1}),
            )
            .await;
            debits += 1;
        }
    }
    let events = receive(&world, &queue, 1 + debits).await;
    let seqs = sequences(&events);
    let expected: Vec<i64> = (1..=i64::try_from(1 + debits).unwrap()).collect();
    assert_eq!(
        seqs["kim"], expected,
        "every entry announced, in order, no gaps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relaying_processes_announce_each_entry_once_in_per_user_order() {
    let world = World::new().await;
    let queue = website_queue(&world).await;
    let a = world.start(&Options::default()).await;
    let b = world.start(&Options::default()).await;
    let users = ["u1", "u2", "u3"];
    for u in users {
        grant(&world, &a, u, 1000).await;
    }
    let mut tasks = Vec::new();
    for i in 0..90 {
        let client = world.client.clone();
        let address = if i % 2 == 0 {
            a.address.clone()
        } else {
            b.address.clone()
        };
        let user = users[i % 3];
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("{address}/users/{user}/debits"))
                .header("Idempotency-Key", test_support::unique_name("r-"))
                .json(&json!({"amount": 1}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let events = receive(&world, &queue, 93).await;
    assert_eq!(events.len(), 93, "no event announced twice");
    let seqs = sequences(&events);
    let expected: Vec<i64> = (1..=31).collect();
    for u in users {
        assert_eq!(seqs[u], expected, "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_written_again_changes_nothing_balance_sequence_lots_or_events() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use fulfill::db::ledger::{self, NewEntry};

    let world = World::new().await;
    let _app = world.start(&Options::default()).await;
    let mut conn = world.db.connect().await;
    let entry = |delta, key| NewEntry {
        user_id: "twice",
        delta,
        reason: if delta > 0 { "grant" } else { "debit" },
        idempotency_key: key,
        ..NewEntry::default()
    };
    for (delta, key) in [(10, "grant:twice"), (-4, "debit:twice")] {
        for attempt in 0..2 {
            let written = conn
                .transaction(async |c: &mut AsyncPgConnection| {
                    ledger::append_entry(c, &entry(delta, key)).await
                })
                .await
                .unwrap();
            assert_eq!(written.is_some(), attempt == 0, "{key} attempt {attempt}");
        }
    }
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        credits: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        sequence: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        lots: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        events: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        entries: i64,
    }
    let row: Row = diesel::sql_query(
        "SELECT b.credits, b.sequence, \
                (SELECT sum(remaining)::int8 FROM credit_lots WHERE user_id = 'twice') AS lots, \
                (SELECT count(*) FROM credit_events WHERE user_id = 'twice') AS events, \
                (SELECT count(*) FROM ledger_entries WHERE user_id = 'twice') AS entries \
           FROM balances b WHERE b.user_id = 'twice'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        (row.credits, row.sequence, row.lots, row.events, row.entries),
        (6, 2, 6, 2, 2)
    );
}
