//! Live and test kept apart; a key Stripe rejects parks the stream instead of
//! dead-lettering it, and un-revoking it drains the queue exactly.

use std::time::Duration;

use fake_stripe::{Knobs, PriceSpec, SessionSpec};
use serde_json::Value;

use crate::helpers::{Instance, Options, QUIET, World, eventually, metric};

const COMPLETED: &str = "checkout.session.completed";
const REFUNDED: &str = "charge.refunded";

/// The same event as the other mode would send it.
fn as_livemode(body: &[u8], livemode: bool) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    v["livemode"] = Value::Bool(livemode);
    v["data"]["object"]["livemode"] = Value::Bool(livemode);
    serde_json::to_vec_pretty(&v).unwrap()
}

async fn outcome(world: &World, event_id: &str) -> String {
    eventually(|| async {
        let mut conn = world.db.connect().await;
        diesel_async::RunQueryDsl::get_result::<Outcome>(
            diesel::sql_query("SELECT outcome FROM stripe_events WHERE event_id = $1")
                .bind::<diesel::sql_types::Text, _>(event_id),
            &mut conn,
        )
        .await
        .ok()
        .map(|o| o.outcome)
    })
    .await
}

#[derive(diesel::QueryableByName)]
struct Outcome {
    #[diesel(sql_type = diesel::sql_types::Text)]
    outcome: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_mode_deployment_credits_nothing_for_live_events() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    let s = world.session(SessionSpec::paid("live-user", &pack, 1));
    let (id, body) = world.event(&s, COMPLETED);
    let live = as_livemode(&body, true);
    world.stripe.reset_stats();
    for _ in 0..3 {
        world.publish(COMPLETED, &id, &live).await;
    }
    let (_, refund_id, refund_body) = world.stripe.refund_session(&s, None).unwrap();
    world
        .publish(REFUNDED, &refund_id, &as_livemode(&refund_body, true))
        .await;
    assert_eq!(outcome(&world, &id).await, "wrong_mode");
    assert_eq!(outcome(&world, &refund_id).await, "wrong_mode");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.balance(&world.client, "live-user").await, 0);
    assert_eq!(world.stripe.stats().requests, 0, "never fetched");
    assert!(world.dead_letters().await.is_empty());
    let m = app.metrics(&world.client).await;
    assert_eq!(
        metric(
            &m,
            "fulfill_events_total{event_type=\"checkout.session.completed\",outcome=\"wrong_mode\"}"
        ),
        3.0,
        "{m}"
    );
    // The event id is recorded now (as wrong_mode): the same id again, even in this
    // deployment's mode, is a duplicate and credits nothing.
    world.publish(COMPLETED, &id, &body).await;
    app.assert_balance_settles(&world.client, "live-user", 0)
        .await;
    assert_eq!(outcome(&world, &id).await, "wrong_mode");
    assert_eq!(world.stripe.stats().session_fetches, 0, "never fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_deployment_ignores_test_events_and_refuses_test_sessions() {
    let world = World::with_stripe_key("sk_live_fake_stripe_key").await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    // The fake's objects are test-mode ones.
    let s = world.session(SessionSpec::paid("test-user", &pack, 1));
    let (id, body) = world.deliver(&s, COMPLETED).await;
    assert_eq!(outcome(&world, &id).await, "wrong_mode");
    let _ = body;
    assert!(world.dead_letters().await.is_empty());
    // The success page refuses the other mode's session with a clear answer.
    let (status, answer) = app.fulfill(&world.client, &s).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["code"], "wrong_mode");
    assert_eq!(app.balance(&world.client, "test-user").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_on_a_live_deployment_refuses_listed_test_events_and_sessions_unfetched() {
    let world = World::with_stripe_key("sk_live_fake_stripe_key").await;
    let app = world.start(&Options::default()).await; // migrates the database
    let pack = world.price(PriceSpec::credits(10));
    // Paid test-mode sessions whose events exist at Stripe and were never delivered.
    let mut missed = Vec::new();
    for i in 0..3 {
        let s = world.session(SessionSpec::paid(&format!("test-user-{i}"), &pack, 1));
        let (event_id, _) = world.event(&s, COMPLETED);
        missed.push((s, event_id));
    }
    world.stripe.reset_stats();
    let services = world.services(&Options::default());
    let report = fulfill::reconcile::run(
        &services,
        &fulfill::domain::account::Account::PLATFORM,
        Some(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    // Each event and each listed session refused, once: nothing healed, nothing failed.
    assert_eq!(report.events, 3, "{report}");
    assert_eq!(report.sessions, 3, "{report}");
    assert_eq!(report.wrong_mode, 6, "{report}");
    assert_eq!(report.events_new, 0, "{report}");
    assert_eq!(report.sessions_checked, 0, "{report}");
    assert_eq!(report.healed, 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    // Two listings (events, sessions), one page each, and not one fetch beyond them.
    let stats = world.stripe.stats();
    assert_eq!(stats.requests, 2, "{stats:?}");
    assert_eq!(stats.session_fetches, 0, "{stats:?}");
    assert_eq!(stats.line_item_pages, 0, "{stats:?}");
    for (session, event_id) in &missed {
        assert_eq!(outcome(&world, event_id).await, "wrong_mode");
        assert!(app.session_state(&world.client, session).await.is_none());
    }
    for i in 0..3 {
        assert_eq!(
            app.balance(&world.client, &format!("test-user-{i}")).await,
            0
        );
    }
    assert!(world.dead_letters().await.is_empty());
    // Run again: refused the same way, still unfetched, still one row per event.
    let again = fulfill::reconcile::run(
        &services,
        &fulfill::domain::account::Account::PLATFORM,
        Some(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(
        (again.wrong_mode, again.healed, again.errors),
        (6, 0, 0),
        "{again}"
    );
    assert_eq!(world.stripe.stats().session_fetches, 0);
    for (_, event_id) in &missed {
        assert_eq!(outcome(&world, event_id).await, "wrong_mode");
    }
}

async fn ready(app: &Instance, world: &World) -> (u16, Value) {
    let r = app.get(&world.client, "/readyz").await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[derive(diesel::QueryableByName)]
struct Credited {
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    entries: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    credits: i64,
}

/// The ledger per user: how many entries, how many credits.
async fn ledger(world: &World) -> Vec<Credited> {
    let mut conn = world.db.connect().await;
    diesel_async::RunQueryDsl::load(
        diesel::sql_query(
            "SELECT user_id, count(*) AS entries, sum(delta)::int8 AS credits \
             FROM ledger_entries GROUP BY user_id ORDER BY user_id",
        ),
        &mut conn,
    )
    .await
    .unwrap()
}

const LOAD: usize = 200;

async fn a_rejected_key_parks_the_stream(status: u16) {
    let world = World::new().await;
    let pack = world.price(PriceSpec::credits(10));
    // Stripe answers slowly enough that the load takes a few seconds.
    let slow = Knobs {
        latency_ms: 40,
        ..Knobs::default()
    };
    world.set_knobs(slow.clone());
    let mut events = Vec::with_capacity(LOAD);
    let mut users = Vec::with_capacity(LOAD);
    for i in 0..LOAD {
        let user = format!("user-{i:03}");
        let s = world.session(SessionSpec::paid(&user, &pack, 1));
        events.push(world.event(&s, COMPLETED));
        users.push(user);
    }
    // The whole load is queued before fulfill starts on it.
    for (id, body) in &events {
        world.publish(COMPLETED, id, body).await;
    }
    let app = world.start(&Options::default()).await;
    // The key is revoked (or loses a permission) while deliveries are in flight.
    eventually(|| async { (ledger(&world).await.len() >= 20).then_some(()) }).await;
    world.set_knobs(Knobs {
        reject_key: Some(status),
        ..slow.clone()
    });
    let at_revocation = ledger(&world).await.len();
    assert!(
        at_revocation < LOAD,
        "the load was over before the revocation"
    );
    eventually(|| async {
        let (code, body) = ready(&app, &world).await;
        (code == 503 && body["stripe"] == "key_rejected").then_some(())
    })
    .await;
    // Parked: what was in flight settles or goes back, then nothing moves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let parked = ledger(&world).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = ledger(&world).await;
    assert_eq!(still.len(), parked.len(), "credited while parked");
    assert!(
        parked.len() < LOAD,
        "{} credited while parked",
        parked.len()
    );
    assert!(parked.iter().all(|c| c.entries == 1 && c.credits == 10));
    // The balance API keeps serving, for those credited and those waiting.
    let waiting = users
        .iter()
        .find(|u| !parked.iter().any(|c| &c.user_id == *u))
        .unwrap();
    assert_eq!(app.balance(&world.client, waiting).await, 0);
    assert_eq!(app.balance(&world.client, &parked[0].user_id).await, 10);
    assert_eq!(app.get(&world.client, "/readyz/api").await.status(), 200);
    // Not one message in the dead-letter queue.
    let dead = world.dead_letters().await;
    assert!(dead.is_empty(), "{} dead-lettered", dead.len());
    let m = app.metrics(&world.client).await;
    assert_eq!(metric(&m, "fulfill_stripe_key_rejected "), 1.0, "{m}");
    // The key is accepted again: the queue drains with every user credited exactly once.
    world.set_knobs(slow);
    let drained = test_support::wait_for(Duration::from_secs(90), || async {
        (ledger(&world).await.len() == LOAD).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "{} of {LOAD} credited",
        ledger(&world).await.len()
    );
    tokio::time::sleep(QUIET).await;
    let done = ledger(&world).await;
    assert_eq!(
        done.iter().map(|c| c.user_id.clone()).collect::<Vec<_>>(),
        users
    );
    for c in &done {
        assert_eq!((c.entries, c.credits), (1, 10), "{}", c.user_id);
    }
    for user in &users {
        assert_eq!(app.balance(&world.client, user).await, 10, "{user}");
    }
    assert_eq!(ready(&app, &world).await.0, 200);
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_parks_the_stream_and_un_revoking_it_drains_the_queue_exactly() {
    a_rejected_key_parks_the_stream(401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_key_lacking_a_permission_parks_the_stream_too() {
    a_rejected_key_parks_the_stream(403).await;
}
