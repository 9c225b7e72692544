//! The operator's tools: reconciliation, the dead-letter queue, the attention list.

use std::time::Duration;

use fake_stripe::{PriceSpec, SessionSpec};
use fulfill::{dlq::DeadLetters, domain::account::Account, reconcile};
use futures_util::future::join_all;

use crate::helpers::{Options, World};

const COMPLETED: &str = "checkout.session.completed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_credits_what_webhooks_missed_exactly_once() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let services = world.services(&Options::default());
    let pack = world.price(PriceSpec::credits(10));
    // Paid, the event exists at Stripe, but it was never delivered.
    let missed = world.session(SessionSpec::paid("healed", &pack, 1));
    world.event(&missed, COMPLETED);
    // Paid, and Stripe never even created an event: only the sessions sweep finds it.
    let silent = world.session(SessionSpec::paid("healed", &pack, 2));
    // Delivered normally.
    let delivered = world.session(SessionSpec::paid("healed", &pack, 1));
    world.deliver(&delivered, COMPLETED).await;
    app.assert_balance_settles(&world.client, "healed", 10)
        .await;

    let report = reconcile::run(
        &services,
        &Account::PLATFORM,
        Some(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(report.healed, 2, "{report}");
    assert_eq!(report.errors, 0);
    assert_eq!(app.balance(&world.client, "healed").await, 40);
    for s in [&missed, &silent, &delivered] {
        app.wait_state(&world.client, s, "credited").await;
    }

    // A second run heals nothing and asks Stripe about no settled session.
    let fetches = world.stripe.stats().session_fetches;
    let again = reconcile::run(&services, &Account::PLATFORM, None)
        .await
        .unwrap();
    assert_eq!((again.healed, again.errors), (0, 0), "{again}");
    assert_eq!(world.stripe.stats().session_fetches, fetches);
    app.assert_balance_settles(&world.client, "healed", 40)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_racing_late_webhooks_still_credits_once() {
    let world = World::new().await;
    world.set_knobs(fake_stripe::Knobs {
        latency_ms: 20,
        jitter_ms: 30,
        ..Default::default()
    });
    let app = world.start(&Options::default()).await;
    let services = world.services(&Options::default());
    let single = world.price(PriceSpec::credits(1));
    let mut late = Vec::new();
    for _ in 0..15 {
        let s = world.session(SessionSpec::paid("racer", &single, 1));
        late.push(world.event(&s, COMPLETED));
    }
    let webhooks = join_all(
        late.iter()
            .map(|(id, body)| world.publish(COMPLETED, id, body)),
    );
    let (_, report) = tokio::join!(
        webhooks,
        reconcile::run(
            &services,
            &Account::PLATFORM,
            Some(Duration::from_secs(600))
        )
    );
    assert_eq!(report.unwrap().errors, 0);
    app.assert_balance_settles(&world.client, "racer", 15).await;
    let ledger: serde_json::Value = app
        .get(&world.client, "/users/racer/ledger?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ledger.as_array().unwrap().len(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_refuses_a_window_beyond_stripes_event_retention() {
    let world = World::new().await;
    let _app = world.start(&Options::default()).await;
    let services = world.services(&Options::default());
    let err = reconcile::run(
        &services,
        &Account::PLATFORM,
        Some(Duration::from_secs(31 * 86_400)),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("30 days"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_after_the_cause_is_fixed_credits_once() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    // The event names a session Stripe does not know (yet): a permanent error.
    let future_id = "cs_test_replayme000000000000000000000000000000000000000000000000";
    let template = world.session(SessionSpec::paid("patient", &pack, 1));
    let (_, body) = world.event(&template, COMPLETED);
    let body = String::from_utf8(body)
        .unwrap()
        .replace(&template, future_id);
    world
        .publish(COMPLETED, "evt_replayme0001", body.as_bytes())
        .await;

    let amqp = world.broker.amqp_config();
    let listed = crate::helpers::eventually(|| async {
        let letters = DeadLetters::open(&amqp).await.unwrap();
        let list = letters.list();
        letters.close().await.expect("dead letters put back");
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "evt_replayme0001");
    assert_eq!(listed[0].kind.as_deref(), Some("permanent"));
    assert!(
        listed[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("No such checkout.session")
    );

    // Listing is not consuming.
    let letters = DeadLetters::open(&amqp).await.unwrap();
    assert_eq!(letters.list().len(), 1);
    letters.close().await.expect("dead letters put back");

    // The operator fixes the cause (the session exists now) and replays.
    world.session(SessionSpec {
        id: Some(future_id.to_owned()),
        ..SessionSpec::paid("patient", &pack, 1)
    });
    let mut letters = DeadLetters::open(&amqp).await.unwrap();
    assert!(letters.replay(Some("evt_nosuch")).await.is_err());
    assert_eq!(
        letters.replay(Some("evt_replayme0001")).await.unwrap(),
        vec!["evt_replayme0001"]
    );
    letters.close().await.expect("dead letters put back");
    app.assert_balance_settles(&world.client, "patient", 10)
        .await;
    let letters = DeadLetters::open(&amqp).await.unwrap();
    assert!(letters.list().is_empty());
    letters.close().await.expect("dead letters put back");

    // Replaying the same event again changes nothing.
    world
        .publish(COMPLETED, "evt_replayme0001", body.as_bytes())
        .await;
    app.assert_balance_settles(&world.client, "patient", 10)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_dead_letters() {
    let world = World::new().await;
    let _app = world.start(&Options::default()).await;
    let queue = world.broker.topology.checkout_queue();
    world.broker.publish_to_queue(&queue, b"garbage one").await;
    world.broker.publish_to_queue(&queue, b"garbage two").await;
    let amqp = world.broker.amqp_config();
    crate::helpers::eventually(|| async {
        let letters = DeadLetters::open(&amqp).await.unwrap();
        let n = letters.list().len();
        letters.close().await.expect("dead letters put back");
        (n == 2).then_some(())
    })
    .await;
    let mut letters = DeadLetters::open(&amqp).await.unwrap();
    assert_eq!(letters.purge().await.unwrap().len(), 2);
    letters.close().await.expect("dead letters put back");
    let letters = DeadLetters::open(&amqp).await.unwrap();
    assert!(letters.list().is_empty());
    letters.close().await.expect("dead letters put back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attention_list_shows_sessions_an_operator_must_fix() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let unmapped = world.price(PriceSpec::no_credits());
    let fine = world.price(PriceSpec::credits(1));
    let broken = world.session(SessionSpec::paid("someone", &unmapped, 1));
    let orphan = world.session(SessionSpec {
        client_reference_id: None,
        ..SessionSpec::paid("x", &fine, 1)
    });
    let ok = world.session(SessionSpec::paid("someone", &fine, 1));
    for s in [&broken, &orphan, &ok] {
        world.deliver(s, COMPLETED).await;
    }
    app.wait_state(&world.client, &ok, "credited").await;
    app.wait_state(&world.client, &broken, "needs_attention")
        .await;
    app.wait_state(&world.client, &orphan, "needs_attention")
        .await;
    let list: serde_json::Value = app
        .get(&world.client, "/attention")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&broken.as_str()) && ids.contains(&orphan.as_str()));
    for s in list.as_array().unwrap() {
        assert!(s["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
}
