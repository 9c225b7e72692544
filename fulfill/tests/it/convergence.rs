//! Credits converge to what Stripe says now, whatever the order of the cues: one named
//! regression test per money bug of the event-driven design, the upgrade of old ledger
//! entries, and a randomized run of shuffled, duplicated histories.

use std::{collections::BTreeMap, time::Duration};

use fake_stripe::{PriceSpec, SessionSpec};
use rand::{Rng, seq::SliceRandom};

use crate::helpers::{Instance, Options, World, eventually};

const COMPLETED: &str = "checkout.session.completed";
const ASYNC_SUCCEEDED: &str = "checkout.session.async_payment_succeeded";
const REFUNDED: &str = "charge.refunded";
const REFUND_UPDATED: &str = "charge.refund.updated";
const DISPUTE_CREATED: &str = "charge.dispute.created";
const DISPUTE_CLOSED: &str = "charge.dispute.closed";

/// A paid 10-credit pack priced 1000 for `user`, not yet delivered.
fn pack_session(world: &World, user: &str) -> String {
    let pack = world.price(PriceSpec {
        unit_amount: 1000,
        ..PriceSpec::credits(10)
    });
    world.session(SessionSpec::paid(user, &pack, 1))
}

async fn credited(world: &World, app: &Instance, user: &str) -> String {
    let s = pack_session(world, user);
    world.deliver(&s, COMPLETED).await;
    app.wait_state(&world.client, &s, "credited").await;
    s
}

async fn ledger(world: &World, app: &Instance, user: &str) -> Vec<(i64, String)> {
    crate::reversals::ledger(world, app, user).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_won_dispute_whose_close_arrives_before_its_creation_takes_nothing() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited(&world, &app, "won-first").await;
    let (dispute, created_id, created) = world.stripe.dispute_session(&s).unwrap();
    let (closed_id, closed) = world.stripe.close_dispute(&dispute, "won").unwrap();
    world.publish(DISPUTE_CLOSED, &closed_id, &closed).await;
    world.wait_event(&closed_id).await;
    world.publish(DISPUTE_CREATED, &created_id, &created).await;
    world.wait_event(&created_id).await;
    assert_eq!(app.balance(&world.client, "won-first").await, 10);
    assert_eq!(
        ledger(&world, &app, "won-first").await,
        vec![(10, "purchase".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_created_event_for_a_dispute_already_won_takes_nothing() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited(&world, &app, "already-won").await;
    let (dispute, created_id, created) = world.stripe.dispute_session(&s).unwrap();
    world.stripe.close_dispute(&dispute, "won").unwrap();
    // Only the (late) created event is delivered; Stripe says won now.
    world.publish(DISPUTE_CREATED, &created_id, &created).await;
    world.wait_event(&created_id).await;
    assert_eq!(app.balance(&world.client, "already-won").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_opened_then_won_takes_and_gives_back() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited(&world, &app, "opened-won").await;
    let (dispute, created_id, created) = world.stripe.dispute_session(&s).unwrap();
    world.publish(DISPUTE_CREATED, &created_id, &created).await;
    app.assert_balance_settles(&world.client, "opened-won", 0)
        .await;
    let (closed_id, closed) = world.stripe.close_dispute(&dispute, "won").unwrap();
    world.publish(DISPUTE_CLOSED, &closed_id, &closed).await;
    app.assert_balance_settles(&world.client, "opened-won", 10)
        .await;
    assert_eq!(
        ledger(&world, &app, "opened-won").await,
        vec![
            (10, "purchase".into()),
            (-10, "dispute".into()),
            (10, "dispute_won".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_seen_while_the_session_needs_attention_is_applied_when_it_is_credited() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let unmapped = world.price(PriceSpec {
        unit_amount: 1000,
        ..PriceSpec::no_credits()
    });
    let s = world.session(SessionSpec::paid("fixed-later", &unmapped, 1));
    world.deliver(&s, COMPLETED).await;
    app.wait_state(&world.client, &s, "needs_attention").await;
    // Half the money goes back while nobody has fixed the catalogue yet.
    let (_, refund_id, body) = world.stripe.refund_session(&s, Some(500)).unwrap();
    world.publish(REFUNDED, &refund_id, &body).await;
    world.wait_event(&refund_id).await;
    assert_eq!(app.balance(&world.client, "fixed-later").await, 0);
    // The operator fixes the price and fulfills the session again.
    assert!(world.stripe.set_price_credits(&unmapped, Some("10")));
    let (status, state) = app.fulfill(&world.client, &s).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["state"], "credited");
    assert_eq!(app.balance(&world.client, "fixed-later").await, 5);
    assert_eq!(
        ledger(&world, &app, "fixed-later").await,
        vec![(10, "purchase".into()), (-5, "refund".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refunds_of_the_same_second_take_what_their_sum_takes() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited(&world, &app, "same-second").await;
    let (_, first_id, first) = world.stripe.refund_session(&s, Some(350)).unwrap();
    let (_, second_id, second) = world.stripe.refund_session(&s, Some(350)).unwrap();
    world.publish(REFUNDED, &first_id, &first).await;
    world.publish(REFUNDED, &second_id, &second).await;
    world.wait_event(&first_id).await;
    world.wait_event(&second_id).await;
    // ⌈10 × 700 ÷ 1000⌉ = 7 taken back, not ⌈3.5⌉ + ⌈3.5⌉ = 8.
    assert_eq!(app.balance(&world.client, "same-second").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_fails_afterwards_gives_the_credits_back() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited(&world, &app, "refund-failed").await;
    let (refund, event_id, body) = world
        .stripe
        .refund_session_with(&s, Some(1000), "pending")
        .unwrap();
    world.publish(REFUNDED, &event_id, &body).await;
    app.assert_balance_settles(&world.client, "refund-failed", 0)
        .await;
    let (failed_id, failed) = world.stripe.set_refund_status(&refund, "failed").unwrap();
    world.publish(REFUND_UPDATED, &failed_id, &failed).await;
    app.assert_balance_settles(&world.client, "refund-failed", 10)
        .await;
    assert_eq!(
        ledger(&world, &app, "refund-failed").await,
        vec![
            (10, "purchase".into()),
            (-10, "refund".into()),
            (10, "adjustment".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_success_read_as_unpaid_is_retried_not_recorded() {
    let world = World::new().await;
    let app = world
        .start(&Options {
            max_attempts: 40,
            ..Options::default()
        })
        .await;
    let pack = world.price(PriceSpec::credits(10));
    let s = world.session(SessionSpec::paid("lagging", &pack, 1).with_status("complete", "unpaid"));
    world.deliver(&s, COMPLETED).await;
    app.wait_state(&world.client, &s, "pending").await;
    // The success event arrives while Stripe's read still says unpaid.
    let (id, body) = world.event(&s, ASYNC_SUCCEEDED);
    world.publish(ASYNC_SUCCEEDED, &id, &body).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let conn = world.db.connect().await;
    assert!(
        !fulfill::db::events::seen(&conn, &id).await.unwrap(),
        "an unanswered cue was recorded as done"
    );
    assert_eq!(app.balance(&world.client, "lagging").await, 0);
    // Stripe catches up: the retried cue credits.
    world.stripe.update_session(&s, None, Some("paid"));
    app.assert_balance_settles(&world.client, "lagging", 10)
        .await;
    world.wait_event(&id).await;
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_written_before_components_count_as_applied() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = pack_session(&world, "upgraded");
    let (refund, _, _) = world.stripe.refund_session(&s, Some(300)).unwrap();
    // What the previous release wrote for this history: the purchase, and a refund entry
    // keyed by the refund id, with no component.
    let mut conn = world.db.connect().await;
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut conn,
        &format!(
            "INSERT INTO checkout_sessions (session_id, state, user_id, credits, stripe_status, \
             payment_status, reversed_credits) VALUES ('{s}', 'credited', 'upgraded', 10, \
             'complete', 'paid', 3); \
             INSERT INTO ledger_entries (user_id, delta, reason, idempotency_key, stripe_session_id) \
             VALUES ('upgraded', 10, 'purchase', 'purchase:{s}', '{s}'), \
                    ('upgraded', -3, 'refund', 'refund:{refund}', '{s}'); \
             INSERT INTO balances (user_id, credits) VALUES ('upgraded', 7);"
        ),
    )
    .await
    .unwrap();
    // A second refund: the target (⌈10 × 600 ÷ 1000⌉ = 6) is reached by 3 more, not 6.
    let (_, event_id, body) = world.stripe.refund_session(&s, Some(300)).unwrap();
    world.publish(REFUNDED, &event_id, &body).await;
    world.wait_event(&event_id).await;
    assert_eq!(app.balance(&world.client, "upgraded").await, 4);
    assert_eq!(
        ledger(&world, &app, "upgraded").await,
        vec![
            (10, "purchase".into()),
            (-3, "refund".into()),
            (-3, "refund".into())
        ]
    );
}

/// What a random history does to one session: the events it emits, in Stripe's order.
async fn random_history(
    world: &World,
    user: &str,
    rng: &mut impl Rng,
) -> (String, Vec<(String, String, Vec<u8>)>) {
    let pack = world.price(PriceSpec {
        unit_amount: 1000,
        ..PriceSpec::credits(10)
    });
    let is_async = rng.random_bool(0.3);
    let spec = if is_async {
        SessionSpec::paid(user, &pack, 1).with_status("complete", "unpaid")
    } else {
        SessionSpec::paid(user, &pack, 1)
    };
    let s = world.session(spec);
    let mut events = Vec::new();
    let (id, body) = world.event(&s, COMPLETED);
    events.push((COMPLETED.to_owned(), id, body));
    if is_async {
        world.stripe.update_session(&s, None, Some("paid"));
        let (id, body) = world.event(&s, ASYNC_SUCCEEDED);
        events.push((ASYNC_SUCCEEDED.to_owned(), id, body));
    }
    for _ in 0..rng.random_range(0..=3) {
        let amount = rng.random_range(1..=400);
        let status = if rng.random_bool(0.3) {
            "pending"
        } else {
            "succeeded"
        };
        let Ok((refund, id, body)) = world.stripe.refund_session_with(&s, Some(amount), status)
        else {
            break;
        };
        events.push((REFUNDED.to_owned(), id, body));
        if rng.random_bool(0.3) {
            let (id, body) = world.stripe.set_refund_status(&refund, "failed").unwrap();
            events.push((REFUND_UPDATED.to_owned(), id, body));
        }
    }
    if rng.random_bool(0.5) {
        let (dispute, id, body) = world.stripe.dispute_session(&s).unwrap();
        events.push((DISPUTE_CREATED.to_owned(), id, body));
        if rng.random_bool(0.7) {
            let outcome = if rng.random_bool(0.5) { "won" } else { "lost" };
            let (id, body) = world.stripe.close_dispute(&dispute, outcome).unwrap();
            events.push((DISPUTE_CLOSED.to_owned(), id, body));
        }
    }
    (s, events)
}

/// The balance Stripe's final state implies for a 10-credit pack priced 1000.
fn expected_balance(world: &World, session: &str) -> i64 {
    let charge = fake_stripe::State::charge_id(&world.stripe.payment_intent_of(session).unwrap());
    let (refunded, disputed) = world.stripe.money_of(&charge);
    let taken_by_refunds = if refunded == 0 {
        0
    } else {
        (10 * refunded + 999) / 1000
    };
    if disputed {
        0
    } else {
        10 - taken_by_refunds.min(10)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_histories_on_two_consumers_end_exact() {
    let world = World::new().await;
    let a = world.start(&Options::default()).await;
    let b = world.start(&Options::default()).await;
    let mut rng = rand::rng();
    let mut deliveries = Vec::new();
    let mut sessions = BTreeMap::new();
    for i in 0..24 {
        let user = format!("history-{i}");
        let (s, events) = random_history(&world, &user, &mut rng).await;
        for (t, id, body) in events {
            for _ in 0..rng.random_range(1..=3) {
                deliveries.push((t.clone(), id.clone(), body.clone()));
            }
        }
        sessions.insert(user, s);
    }
    deliveries.shuffle(&mut rng);
    for (t, id, body) in &deliveries {
        world.publish(t, id, body).await;
    }
    for (user, s) in &sessions {
        let expected = expected_balance(&world, s);
        eventually(|| async { (a.balance(&world.client, user).await == expected).then_some(()) })
            .await;
        assert_eq!(b.balance(&world.client, user).await, expected, "{user}");
    }
    // Everything was processed: no cue left in retry or dead-lettered.
    for (_, id, _) in &deliveries {
        world.wait_event(id).await;
    }
    assert!(world.dead_letters().await.is_empty());
}
