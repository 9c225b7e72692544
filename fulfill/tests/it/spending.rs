//! Spending credits: debits, holds, grants, idempotency keys, and the one rule that
//! matters most — however many requests race, spending never takes `available` below 0.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Instance, Options, World};

pub struct Answer {
    pub status: u16,
    pub replayed: bool,
    pub body: Value,
}

pub async fn post(
    world: &World,
    app: &Instance,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> Answer {
    let mut request = world
        .client
        .post(format!("{}{path}", app.address))
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let replayed = r
        .headers()
        .get("Idempotent-Replayed")
        .is_some_and(|v| v == "true");
    let body = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        replayed,
        body,
    }
}

pub fn key() -> String {
    test_support::unique_name("k-")
}

pub async fn grant(world: &World, app: &Instance, user: &str, amount: i64) -> Value {
    let a = post(
        world,
        app,
        &format!("/users/{user}/grants"),
        Some(&key()),
        &json!({"amount": amount, "reason": "test"}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body
}

pub async fn balance(world: &World, app: &Instance, user: &str) -> Value {
    app.get(&world.client, &format!("/users/{user}/balance"))
        .await
        .json()
        .await
        .unwrap()
}

pub async fn ledger(world: &World, app: &Instance, user: &str) -> Vec<Value> {
    app.get(&world.client, &format!("/users/{user}/ledger?limit=1000"))
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_spends_available_credits_and_names_itself_in_the_ledger() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant(&world, &app, "alice", 10).await;
    let a = post(
        &world,
        &app,
        "/users/alice/debits",
        Some(&key()),
        &json!({"amount": 4, "reason": "export", "metadata": {"job": "j1"}}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        (
            a.body["amount"].as_i64(),
            a.body["credits"].as_i64(),
            a.body["held"].as_i64(),
            a.body["available"].as_i64()
        ),
        (Some(4), Some(6), Some(0), Some(6))
    );
    let debit_id = a.body["debit_id"].as_str().unwrap().to_owned();
    assert!(debit_id.starts_with("deb_"));
    let entries = ledger(&world, &app, "alice").await;
    let last = entries.last().unwrap();
    assert_eq!(last["reason"], "debit");
    assert_eq!(last["delta"], -4);
    assert_eq!(last["debit_id"], debit_id.as_str());
    assert_eq!(last["memo"], "export");
    assert_eq!(last["metadata"], json!({"job": "j1"}));
    assert_eq!(
        balance(&world, &app, "alice").await,
        json!({"user_id": "alice", "credits": 6, "held": 0, "available": 6})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_beyond_available_is_refused_and_records_nothing() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant(&world, &app, "bob", 5).await;
    let k = key();
    let a = post(
        &world,
        &app,
        "/users/bob/debits",
        Some(&k),
        &json!({"amount": 6}),
    )
    .await;
    assert_eq!(a.status, 409);
    assert_eq!(a.body["code"], "insufficient_credits");
    assert_eq!(a.body["available"], 5);
    assert!(a.body["error"].is_string());
    assert_eq!(ledger(&world, &app, "bob").await.len(), 1);
    // The refused key is judged anew later, even with another body.
    grant(&world, &app, "bob", 5).await;
    let a = post(
        &world,
        &app,
        "/users/bob/debits",
        Some(&k),
        &json!({"amount": 7}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["available"], 3);
    let none = post(
        &world,
        &app,
        "/users/nobody/debits",
        Some(&key()),
        &json!({"amount": 1}),
    )
    .await;
    assert_eq!(
        (none.status, none.body["available"].as_i64()),
        (409, Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_replays_the_first_answer_and_another_request_with_it_is_refused() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant(&world, &app, "carol", 10).await;
    let k = key();
    let body = json!({"amount": 3, "reason": "r"});
    let first = post(&world, &app, "/users/carol/debits", Some(&k), &body).await;
    assert_eq!((first.status, first.replayed), (201, false));
    // Same body in another key order and layout: the same request.
    let again = post(
        &world,
        &app,
        "/users/carol/debits",
        Some(&k),
        &json!({"reason": "r", "amount": 3}),
    )
    .await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body, first.body);
    assert_eq!(balance(&world, &app, "carol").await["credits"], 7);

    let other_body = post(
        &world,
        &app,
        "/users/carol/debits",
        Some(&k),
        &json!({"amount": 4}),
    )
    .await;
    assert_eq!(
        (other_body.status, other_body.body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    grant(&world, &app, "dave", 10).await;
    let other_user = post(&world, &app, "/users/dave/debits", Some(&k), &body).await;
    assert_eq!(other_user.status, 422);
    let other_endpoint = post(&world, &app, "/users/carol/holds", Some(&k), &body).await;
    assert_eq!(other_endpoint.status, 422);
    assert_eq!(balance(&world, &app, "carol").await["credits"], 7);
    assert_eq!(balance(&world, &app, "dave").await["credits"], 10);

    let missing = post(&world, &app, "/users/carol/debits", None, &body).await;
    assert_eq!(
        (missing.status, missing.body["code"].as_str()),
        (400, Some("idempotency_key_missing"))
    );
    let bad = post(
        &world,
        &app,
        "/users/carol/debits",
        Some("has space"),
        &body,
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_debits_and_holds_on_one_balance_never_overdraw_it() {
    let world = World::new().await;
    let a = world.start(&Options::default()).await;
    let b = world.start(&Options::default()).await;
    grant(&world, &a, "racer", 100).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let client = world.client.clone();
        let address = if i % 2 == 0 {
            a.address.clone()
        } else {
            b.address.clone()
        };
        let (path, body) = if i % 3 == 0 {
            ("holds", json!({"amount": 3, "ttl_secs": 600}))
        } else {
            ("debits", json!({"amount": 3}))
        };
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{address}/users/racer/{path}"))
                .header("Idempotency-Key", test_support::unique_name("race-"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (path, status, body)
        }));
    }
    let mut debits = Vec::new();
    let mut holds = 0;
    for t in tasks {
        let (path, status, body) = t.await.unwrap();
        assert!(status == 201 || status == 409, "{status} {body}");
        if status == 201 {
            assert!(body["available"].as_i64().unwrap() >= 0, "{body}");
            if path == "debits" {
                debits.push(body["debit_id"].as_str().unwrap().to_owned());
            } else {
                holds += 1;
            }
        }
    }
    // 100 credits buy at most 33 spends of 3; contention must not refuse any that fit.
    assert_eq!(debits.len() + holds, 33);
    let totals = balance(&world, &a, "racer").await;
    assert_eq!(
        totals["credits"].as_i64().unwrap(),
        100 - 3 * debits.len() as i64
    );
    assert_eq!(totals["held"].as_i64().unwrap(), 3 * holds as i64);
    assert_eq!(totals["available"], 1);
    let entries = ledger(&world, &a, "racer").await;
    for id in &debits {
        assert_eq!(
            entries
                .iter()
                .filter(|e| e["debit_id"] == id.as_str())
                .count(),
            1,
            "{id}"
        );
    }
    assert_eq!(entries.len(), 1 + debits.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_a_promise_captured_in_part_after_other_spending() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant(&world, &app, "erin", 10).await;
    let h = post(
        &world,
        &app,
        "/users/erin/holds",
        Some(&key()),
        &json!({"amount": 6, "reason": "render"}),
    )
    .await;
    assert_eq!(h.status, 201, "{}", h.body);
    assert_eq!(h.body["status"], "active");
    assert_eq!(
        (h.body["held"].as_i64(), h.body["available"].as_i64()),
        (Some(6), Some(4))
    );
    assert!(h.body["expires_at"].is_string());
    let hold = h.body["hold_id"].as_str().unwrap().to_owned();
    // Spending what is not held works; spending the held credits does not.
    let d = post(
        &world,
        &app,
        "/users/erin/debits",
        Some(&key()),
        &json!({"amount": 4}),
    )
    .await;
    assert_eq!(d.status, 201);
    let d = post(
        &world,
        &app,
        "/users/erin/debits",
        Some(&key()),
        &json!({"amount": 1}),
    )
    .await;
    assert_eq!((d.status, d.body["available"].as_i64()), (409, Some(0)));

    let c = post(
        &world,
        &app,
        &format!("/holds/{hold}/capture"),
        None,
        &json!({"amount": 5}),
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        c.body,
        json!({"hold_id": hold, "status": "captured", "captured": 5, "credits": 1, "held": 0, "available": 1})
    );
    let again = post(
        &world,
        &app,
        &format!("/holds/{hold}/capture"),
        None,
        &json!({}),
    )
    .await;
    assert_eq!((again.status, &again.body), (200, &c.body));
    let r = post(
        &world,
        &app,
        &format!("/holds/{hold}/release"),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["code"].as_str(), r.body["status"].as_str()),
        (409, Some("hold_not_active"), Some("captured"))
    );
    let entries = ledger(&world, &app, "erin").await;
    let capture = entries.last().unwrap();
    assert_eq!(
        (capture["delta"].as_i64(), capture["hold_id"].as_str()),
        (Some(-5), Some(hold.as_str()))
    );
    assert_eq!(balance(&world, &app, "erin").await["credits"], 1);

    let unknown = post(&world, &app, "/holds/hold_nope/capture", None, &json!({})).await;
    assert_eq!(
        (unknown.status, unknown.body["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_released_or_expired_stops_counting_and_cannot_be_captured() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant(&world, &app, "frank", 10).await;
    let h = post(
        &world,
        &app,
        "/users/frank/holds",
        Some(&key()),
        &json!({"amount": 4}),
    )
    .await;
    let hold = h.body["hold_id"].as_str().unwrap().to_owned();
    let r = post(
        &world,
        &app,
        &format!("/holds/{hold}/release"),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str(), r.body["held"].as_i64()),
        (200, Some("released"), Some(0))
    );
    let again = post(
        &world,
        &app,
        &format!("/holds/{hold}/release"),
        None,
        &json!({}),
    )
    .await;
    assert_eq!((again.status, &again.body), (200, &r.body));
    let c = post(
        &world,
        &app,
        &format!("/holds/{hold}/capture"),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(
        (c.status, c.body["status"].as_str()),
        (409, Some("released"))
    );

    let h = post(
        &world,
        &app,
        "/users/frank/holds",
        Some(&key()),
        &json!({"amount": 10, "ttl_secs": 1}),
    )
    .await;
    assert_eq!(h.status, 201, "{}", h.body);
    let hold = h.body["hold_id"].as_str().unwrap().to_owned();
    assert_eq!(balance(&world, &app, "frank").await["available"], 0);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        balance(&world, &app, "frank").await,
        json!({"user_id": "frank", "credits": 10, "held": 0, "available": 10})
    );
    let c = post(
        &world,
        &app,
        &format!("/holds/{hold}/capture"),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(
        (c.status, c.body["code"].as_str(), c.body["status"].as_str()),
        (409, Some("hold_not_active"), Some("expired"))
    );
    let r = post(
        &world,
        &app,
        &format!("/holds/{hold}/release"),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("expired"))
    );
    for bad in [
        json!({"amount": 1, "ttl_secs": 0}),
        json!({"amount": 1, "ttl_secs": 604_801}),
        json!({"amount": 0}),
    ] {
        let a = post(&world, &app, "/users/frank/holds", Some(&key()), &bad).await;
        assert_eq!(
            (a.status, a.body["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_needs_a_reason_and_a_future_expiry() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let at = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let g = post(
        &world,
        &app,
        "/users/gina/grants",
        Some(&key()),
        &json!({"amount": 5, "reason": "goodwill", "expires_at": at}),
    )
    .await;
    assert_eq!(g.status, 201, "{}", g.body);
    assert!(g.body["grant_id"].as_str().unwrap().starts_with("grant_"));
    assert_eq!(
        (g.body["credits"].as_i64(), g.body["available"].as_i64()),
        (Some(5), Some(5))
    );
    assert!(g.body["expires_at"].is_string());
    let entries = ledger(&world, &app, "gina").await;
    assert_eq!(
        (
            entries[0]["reason"].as_str(),
            entries[0]["grant_id"].as_str()
        ),
        (Some("grant"), g.body["grant_id"].as_str())
    );
    for bad in [
        json!({"amount": 5}),
        json!({"amount": 5, "reason": ""}),
        json!({"amount": 5, "reason": "x", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"amount": 5, "reason": "x", "expires_at": "tomorrow"}),
        json!({"amount": -5, "reason": "x"}),
    ] {
        let a = post(&world, &app, "/users/gina/grants", Some(&key()), &bad).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
        assert!(a.body["code"].is_string(), "{bad}: {}", a.body);
    }
}
