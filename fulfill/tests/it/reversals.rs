//! Refunds and disputes take credits back, exactly, whatever the delivery order.

use fake_stripe::{PriceSpec, SessionSpec};
use fulfill::domain::target::RefundPolicy;
use serde_json::Value;

use crate::helpers::{Instance, Options, World, metric};

const COMPLETED: &str = "checkout.session.completed";
const REFUNDED: &str = "charge.refunded";

/// A credited purchase of a 10-credit pack priced 900 for `user`.
async fn credited_pack(world: &World, app: &Instance, user: &str) -> String {
    let pack = world.price(PriceSpec {
        unit_amount: 900,
        ..PriceSpec::credits(10)
    });
    let s = world.session(SessionSpec::paid(user, &pack, 1));
    world.deliver(&s, COMPLETED).await;
    app.wait_state(&world.client, &s, "credited").await;
    s
}

async fn refund(world: &World, session: &str, amount: Option<i64>) -> (String, Vec<u8>) {
    let (_, event_id, body) = world.stripe.refund_session(session, amount).unwrap();
    world.publish(REFUNDED, &event_id, &body).await;
    (event_id, body)
}

/// A user's ledger as `(delta, reason)` pairs, oldest first.
pub async fn ledger(world: &World, app: &Instance, user: &str) -> Vec<(i64, String)> {
    let v: Value = app
        .get(&world.client, &format!("/users/{user}/ledger"))
        .await
        .json()
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["delta"].as_i64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refund_takes_back_every_credit_once() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited_pack(&world, &app, "refunded").await;
    let (event_id, body) = refund(&world, &s, None).await;
    app.assert_balance_settles(&world.client, "refunded", 0)
        .await;
    for _ in 0..3 {
        world.publish(REFUNDED, &event_id, &body).await;
    }
    app.assert_balance_settles(&world.client, "refunded", 0)
        .await;
    assert_eq!(
        ledger(&world, &app, "refunded").await,
        vec![(10, "purchase".into()), (-10, "refund".into())]
    );
    // Counted once, however often the refund was delivered; the Stripe calls were timed,
    // each after waiting its turn in the rate budget.
    let m = app.metrics(&world.client).await;
    assert_eq!(metric(&m, "fulfill_credits_reversed_total"), 10.0, "{m}");
    assert!(
        metric(
            &m,
            "fulfill_stripe_request_duration_seconds_count{endpoint=\"refunds.list\",status=\"200\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(metric(&m, "fulfill_stripe_budget_wait_duration_seconds_count") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refunds_take_back_their_share_rounded_up_and_add_up() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited_pack(&world, &app, "partial").await;
    refund(&world, &s, Some(300)).await; // a third of 900: ⌈3.33⌉ = 4
    app.assert_balance_settles(&world.client, "partial", 6)
        .await;
    refund(&world, &s, Some(600)).await; // the rest: 10 in all
    app.assert_balance_settles(&world.client, "partial", 0)
        .await;
    assert_eq!(
        ledger(&world, &app, "partial").await,
        vec![
            (10, "purchase".into()),
            (-4, "refund".into()),
            (-6, "refund".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_events_out_of_order_give_the_same_ledger() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited_pack(&world, &app, "shuffled").await;
    let (_, first_id, first) = world.stripe.refund_session(&s, Some(300)).unwrap();
    let (_, second_id, second) = world.stripe.refund_session(&s, Some(300)).unwrap();
    // The second refund's event arrives first: both refunds are read from Stripe anyway,
    // so the ledger reaches the target at once and the first event finds nothing to do.
    world.publish(REFUNDED, &second_id, &second).await;
    app.assert_balance_settles(&world.client, "shuffled", 3)
        .await;
    world.publish(REFUNDED, &first_id, &first).await;
    world.wait_event(&first_id).await;
    // 600 of 900 refunded: ⌈6.67⌉ = 7.
    assert_eq!(app.balance(&world.client, "shuffled").await, 3);
    assert_eq!(
        ledger(&world, &app, "shuffled").await,
        vec![(10, "purchase".into()), (-7, "refund".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_nothing_takes_everything_back_on_a_partial_refund() {
    let world = World::new().await;
    let options = Options {
        refund_policy: RefundPolicy::AllOrNothing,
        ..Options::default()
    };
    let app = world.start(&options).await;
    let s = credited_pack(&world, &app, "strict").await;
    refund(&world, &s, Some(100)).await;
    app.assert_balance_settles(&world.client, "strict", 0).await;
    refund(&world, &s, Some(100)).await;
    app.assert_balance_settles(&world.client, "strict", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_dispute_takes_credits_back_and_a_won_one_gives_them_back() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let lost = credited_pack(&world, &app, "disputed").await;
    let won = credited_pack(&world, &app, "disputed").await;
    app.assert_balance_settles(&world.client, "disputed", 20)
        .await;

    let (lost_dispute, event_id, body) = world.stripe.dispute_session(&lost).unwrap();
    world
        .publish("charge.dispute.created", &event_id, &body)
        .await;
    let (won_dispute, event_id, body) = world.stripe.dispute_session(&won).unwrap();
    world
        .publish("charge.dispute.created", &event_id, &body)
        .await;
    app.assert_balance_settles(&world.client, "disputed", 0)
        .await;

    let (event_id, body) = world.stripe.close_dispute(&lost_dispute, "lost").unwrap();
    world
        .publish("charge.dispute.closed", &event_id, &body)
        .await;
    let (event_id, body) = world.stripe.close_dispute(&won_dispute, "won").unwrap();
    world
        .publish("charge.dispute.closed", &event_id, &body)
        .await;
    world
        .publish("charge.dispute.closed", &event_id, &body)
        .await;
    app.assert_balance_settles(&world.client, "disputed", 10)
        .await;
    let reasons: Vec<String> = ledger(&world, &app, "disputed")
        .await
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(reasons.iter().filter(|r| *r == "dispute").count(), 2);
    assert_eq!(reasons.iter().filter(|r| *r == "dispute_won").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_the_credits_were_spent_flags_the_negative_balance() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let s = credited_pack(&world, &app, "spender").await;
    // The website spent 8 of the 10 credits (an entry of its own in the ledger).
    let mut conn = world.db.connect().await;
    fulfill::db::ledger::append(
        &mut conn,
        &fulfill::db::ledger::NewEntry {
            user_id: "spender",
            delta: -8,
            reason: "adjustment",
            idempotency_key: "spent:1",
            stripe_session_id: None,
            stripe_event_id: None,
            stripe_object_id: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    refund(&world, &s, None).await;
    app.assert_balance_settles(&world.client, "spender", -8)
        .await;
    let list: Value = app
        .get(&world.client, "/attention")
        .await
        .json()
        .await
        .unwrap();
    let flagged = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["session_id"] == s.as_str())
        .expect("flagged");
    assert!(
        flagged["attention"].as_str().unwrap().contains("-8"),
        "{flagged}"
    );
    assert_eq!(flagged["state"], "credited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_for_a_session_never_delivered_credits_then_reverses() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec {
        unit_amount: 900,
        ..PriceSpec::credits(10)
    });
    let s = world.session(SessionSpec::paid("late", &pack, 1));
    // No checkout event ever arrives; the refund does.
    refund(&world, &s, Some(450)).await;
    app.assert_balance_settles(&world.client, "late", 5).await;
    // The late checkout event changes nothing.
    world.deliver(&s, COMPLETED).await;
    app.assert_balance_settles(&world.client, "late", 5).await;
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct EventRecord {
    #[diesel(sql_type = diesel::sql_types::Text)]
    event_type: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    object_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    outcome: String,
}

async fn event_record(world: &World, event_id: &str) -> Option<EventRecord> {
    use diesel_async::RunQueryDsl;
    let mut conn = world.db.connect().await;
    diesel::sql_query(
        "SELECT event_type, object_id, outcome FROM stripe_events WHERE event_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .get_result(&mut conn)
    .await
    .ok()
}

/// The record of an event that moved credits is written with the entry's own statement
/// (lots, credit event, record): whether the entry gave credits or took them back, it is
/// there, says what came of the event, and answers every redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_move_credits_are_recorded_with_their_outcome() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec {
        unit_amount: 900,
        ..PriceSpec::credits(10)
    });
    let s = world.session(SessionSpec::paid("recorded", &pack, 1));
    let (bought, bought_body) = world.deliver(&s, COMPLETED).await;
    app.wait_state(&world.client, &s, "credited").await;
    world.wait_event(&bought).await;
    let (refunded, refunded_body) = refund(&world, &s, None).await;
    app.assert_balance_settles(&world.client, "recorded", 0)
        .await;
    world.wait_event(&refunded).await;
    assert_eq!(
        event_record(&world, &bought).await,
        Some(EventRecord {
            event_type: COMPLETED.into(),
            object_id: Some(s.clone()),
            outcome: "credited".into(),
        })
    );
    assert_eq!(
        event_record(&world, &refunded).await,
        Some(EventRecord {
            event_type: REFUNDED.into(),
            object_id: Some(s.clone()),
            outcome: "reversed".into(),
        })
    );
    // Redelivered, both are answered from their records.
    world.publish(COMPLETED, &bought, &bought_body).await;
    world.publish(REFUNDED, &refunded, &refunded_body).await;
    let duplicates = |metrics: &str| {
        metric(
            metrics,
            "fulfill_events_total{event_type=\"checkout.session.completed\",outcome=\"duplicate\"}",
        ) + metric(
            metrics,
            "fulfill_events_total{event_type=\"charge.refunded\",outcome=\"duplicate\"}",
        )
    };
    crate::helpers::eventually(|| async {
        let metrics = app.metrics(&world.client).await;
        (duplicates(&metrics) == 2.0).then_some(())
    })
    .await;
    assert_eq!(
        ledger(&world, &app, "recorded").await,
        vec![(10, "purchase".into()), (-10, "refund".into())]
    );
}
