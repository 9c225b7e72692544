//! Expiring credits: lots are spent soonest-expiring first, what is left of an expired lot
//! leaves the balance as one `expiry` entry (exactly once, with two sweeping processes),
//! holds keep what they reserve, and reversals take back from their session's own lot.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use crate::{
    helpers::{Options, World, eventually},
    spending::{balance, key, ledger, post},
};

async fn grant_expiring(
    world: &World,
    app: &crate::helpers::Instance,
    user: &str,
    amount: i64,
    in_ms: i64,
) {
    let at = Utc::now() + chrono::Duration::milliseconds(in_ms);
    let a = post(
        world,
        app,
        &format!("/users/{user}/grants"),
        Some(&key()),
        &json!({"amount": amount, "reason": "promo", "expires_at": at.to_rfc3339()}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

fn expiries(entries: &[Value]) -> Vec<i64> {
    entries
        .iter()
        .filter(|e| e["reason"] == "expiry")
        .map(|e| e["delta"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_left_of_an_expired_grant_leaves_once_with_two_sweepers() {
    let world = World::new().await;
    let a = world.start(&Options::default()).await;
    let b = world.start(&Options::default()).await;
    grant_expiring(&world, &a, "lena", 10, 1500).await;
    crate::spending::grant(&world, &a, "lena", 5).await;
    // Spending takes the expiring credits first: 6 of them are left to expire.
    let d = post(
        &world,
        &b,
        "/users/lena/debits",
        Some(&key()),
        &json!({"amount": 4}),
    )
    .await;
    assert_eq!(d.status, 201);
    eventually(|| async { (balance(&world, &a, "lena").await["credits"] == 5).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let entries = ledger(&world, &a, "lena").await;
    assert_eq!(expiries(&entries), [-6], "one expiry entry, once");
    assert_eq!(balance(&world, &b, "lena").await["credits"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_takes_the_soonest_expiring_credits_first() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant_expiring(&world, &app, "max", 5, 60_000).await;
    grant_expiring(&world, &app, "max", 5, 1500).await;
    crate::spending::grant(&world, &app, "max", 5).await;
    // 7 = the 5 expiring soonest + 2 of those expiring in a minute.
    let d = post(
        &world,
        &app,
        "/users/max/debits",
        Some(&key()),
        &json!({"amount": 7}),
    )
    .await;
    assert_eq!(d.status, 201);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let entries = ledger(&world, &app, "max").await;
    assert!(expiries(&entries).is_empty(), "nothing was left to expire");
    assert_eq!(balance(&world, &app, "max").await["credits"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_reserved_by_an_active_hold_do_not_expire_under_it() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant_expiring(&world, &app, "nina", 10, 1500).await;
    let h = post(
        &world,
        &app,
        "/users/nina/holds",
        Some(&key()),
        &json!({"amount": 4, "ttl_secs": 600}),
    )
    .await;
    assert_eq!(h.status, 201);
    let hold = h.body["hold_id"].as_str().unwrap().to_owned();
    eventually(|| async { (balance(&world, &app, "nina").await["credits"] == 4).then_some(()) })
        .await;
    assert_eq!(
        balance(&world, &app, "nina").await,
        json!({"user_id": "nina", "credits": 4, "held": 4, "available": 0})
    );
    let c = post(
        &world,
        &app,
        &format!("/holds/{hold}/capture"),
        None,
        &json!({}),
    )
    .await;
    assert_eq!((c.status, c.body["credits"].as_i64()), (200, Some(0)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(expiries(&ledger(&world, &app, "nina").await), [-6]);
    assert_eq!(balance(&world, &app, "nina").await["credits"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_hold_lets_its_expired_credits_go() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant_expiring(&world, &app, "olga", 10, 1000).await;
    let h = post(
        &world,
        &app,
        "/users/olga/holds",
        Some(&key()),
        &json!({"amount": 10}),
    )
    .await;
    let hold = h.body["hold_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(balance(&world, &app, "olga").await["credits"], 10);
    post(
        &world,
        &app,
        &format!("/holds/{hold}/release"),
        None,
        &json!({}),
    )
    .await;
    eventually(|| async { (balance(&world, &app, "olga").await["credits"] == 0).then_some(()) })
        .await;
    assert_eq!(expiries(&ledger(&world, &app, "olga").await), [-10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_takes_back_from_its_own_sessions_lot_first() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant_expiring(&world, &app, "pia", 5, 2000).await;
    let mut conn = world.db.connect().await;
    let entry = |delta: i64, key: &'static str| fulfill::db::ledger::NewEntry {
        user_id: "pia",
        delta,
        reason: if delta > 0 { "purchase" } else { "refund" },
        idempotency_key: key,
        stripe_session_id: Some("cs_test_pia"),
        ..Default::default()
    };
    fulfill::db::ledger::append(&mut conn, &entry(10, "purchase:cs_test_pia"))
        .await
        .unwrap();
    fulfill::db::ledger::append(&mut conn, &entry(-10, "refund:cs_test_pia:1"))
        .await
        .unwrap();
    // The refund took the purchase's own (non-expiring) lot; the grant's 5 still expire.
    eventually(|| async { (balance(&world, &app, "pia").await["credits"] == 0).then_some(()) })
        .await;
    assert_eq!(expiries(&ledger(&world, &app, "pia").await), [-5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_past_its_credits_valid_days_expires_within_ten_seconds() {
    use fake_stripe::{PriceSpec, SessionSpec};
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    // 10 credits valid 1 day, bought 2 days ago (its webhook is late); 3 that never expire.
    let expiring = world.price(PriceSpec {
        valid_days: Some("1".into()),
        ..PriceSpec::credits(10)
    });
    let lasting = world.price(PriceSpec::credits(3));
    let two_days_ago = Utc::now().timestamp() - 2 * 86_400;
    let s = world.session(SessionSpec {
        line_items: vec![(expiring, 1), (lasting, 1)],
        created: Some(two_days_ago),
        ..SessionSpec::paid("quinn", "unused", 1)
    });
    world.deliver(&s, "checkout.session.completed").await;
    let settled = test_support::wait_for(Duration::from_secs(10), || async {
        (balance(&world, &app, "quinn").await["credits"] == 3).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "{:?}",
        ledger(&world, &app, "quinn").await
    );
    let entries = ledger(&world, &app, "quinn").await;
    assert_eq!(entries[0]["reason"], "purchase");
    assert_eq!(entries[0]["delta"], 13);
    assert_eq!(expiries(&entries), [-10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_credits_valid_days_needs_attention_and_credits_nothing() {
    use fake_stripe::{PriceSpec, SessionSpec};
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let bad = world.price(PriceSpec {
        valid_days: Some("soon".into()),
        ..PriceSpec::credits(10)
    });
    let s = world.session(SessionSpec::paid("rita", &bad, 1));
    world.deliver(&s, "checkout.session.completed").await;
    let state = app.wait_state(&world.client, &s, "needs_attention").await;
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("credits_valid_days"),
        "{state}"
    );
    assert_eq!(balance(&world, &app, "rita").await["credits"], 0);
}
