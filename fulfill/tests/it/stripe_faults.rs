//! Stripe failing: 429/5xx and hangs are retried until they pass; a permanent error
//! dead-letters with the reason; poison never blocks the queue.

use std::time::Duration;

use fake_stripe::{Knobs, PriceSpec, SessionSpec};
use shared::amqp::{header_int, header_str, headers};

use crate::helpers::{Options, World, metric};

const COMPLETED: &str = "checkout.session.completed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_retried_until_credited() {
    let world = World::new().await;
    world.set_knobs(Knobs {
        rate_429: 0.3,
        rate_5xx: 0.3,
        ..Default::default()
    });
    let app = world
        .start(&Options {
            max_attempts: 50,
            ..Options::default()
        })
        .await;
    let price = world.price(PriceSpec::credits(1));
    for _ in 0..20 {
        let s = world.session(SessionSpec::paid("persistent", &price, 1));
        world.deliver(&s, COMPLETED).await;
    }
    app.assert_balance_settles(&world.client, "persistent", 20)
        .await;
    let stats = world.stripe.stats();
    assert!(
        stats.injected_429 > 0 && stats.injected_5xx > 0,
        "{stats:?}"
    );
    assert!(world.dead_letters().await.is_empty());
    let m = app.metrics(&world.client).await;
    assert!(metric(&m, "fulfill_stripe_retries_total") > 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_hang_past_the_timeout_are_retried() {
    let world = World::new().await;
    world.set_knobs(Knobs {
        rate_hang: 0.4,
        // At least two hang whatever the draws: the retry after a timeout is what is tested.
        hang_first: 2,
        hang_ms: 3_000,
        ..Default::default()
    });
    let app = world
        .start(&Options {
            stripe_timeout: Duration::from_millis(500),
            max_attempts: 50,
            ..Options::default()
        })
        .await;
    let price = world.price(PriceSpec::credits(1));
    for _ in 0..8 {
        let s = world.session(SessionSpec::paid("patient", &price, 1));
        world.deliver(&s, COMPLETED).await;
    }
    app.assert_balance_settles(&world.client, "patient", 8)
        .await;
    let stats = world.stripe.stats();
    assert!(stats.injected_hangs >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stripe_does_not_know_is_dead_lettered_with_the_reason() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let price = world.price(PriceSpec::credits(1));
    let real = world.session(SessionSpec::paid("someone", &price, 1));
    let (_, body) = world.event(&real, COMPLETED);
    let ghost = "cs_test_ghost0000000000000000000000000000000000000000000000000";
    let forged = String::from_utf8(body).unwrap().replace(&real, ghost);
    world
        .publish(COMPLETED, "evt_ghost0001", forged.as_bytes())
        .await;

    let dead = world
        .broker
        .take(
            &world.broker.topology.dead_letter_queue(),
            Duration::from_secs(10),
        )
        .await
        .expect("dead-lettered");
    assert_eq!(
        dead.body,
        forged.as_bytes(),
        "the dead letter is the original message"
    );
    let h = dead.properties.headers().as_ref();
    assert_eq!(header_str(h, headers::DEAD_KIND), Some("permanent"));
    let reason = header_str(h, headers::DEAD_REASON).unwrap();
    assert!(reason.contains("No such checkout.session"), "{reason}");
    assert_eq!(
        header_str(h, headers::ORIGINAL_ROUTING_KEY),
        Some(COMPLETED)
    );
    assert_eq!(header_int(h, headers::ATTEMPTS), Some(1));
    assert_eq!(app.balance(&world.client, "someone").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_beyond_the_attempt_limit_are_dead_lettered_not_dropped() {
    let world = World::new().await;
    world.set_knobs(Knobs {
        rate_5xx: 1.0,
        ..Default::default()
    });
    let app = world
        .start(&Options {
            max_attempts: 3,
            ..Options::default()
        })
        .await;
    let price = world.price(PriceSpec::credits(1));
    let s = world.session(SessionSpec::paid("unlucky", &price, 1));
    world.deliver(&s, COMPLETED).await;
    let dead = world
        .broker
        .take(
            &world.broker.topology.dead_letter_queue(),
            Duration::from_secs(15),
        )
        .await
        .expect("dead-lettered after its attempts");
    let h = dead.properties.headers().as_ref();
    assert_eq!(header_str(h, headers::DEAD_KIND), Some("exhausted"));
    assert_eq!(header_int(h, headers::ATTEMPTS), Some(3));
    assert_eq!(app.balance(&world.client, "unlucky").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_never_block_the_queue() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let queue = world.broker.topology.checkout_queue();
    let poison: [&[u8]; 3] = [
        b"this is not json",
        br#"{"id":"evt_unknown1","object":"event","type":"customer.created","data":{"object":{"id":"cus_1"}}}"#,
        br#"{"id":"evt_nosession1","object":"event","type":"checkout.session.completed","data":{"object":{}}}"#,
    ];
    for body in poison {
        world.broker.publish_to_queue(&queue, body).await;
    }
    let price = world.price(PriceSpec::credits(7));
    let s = world.session(SessionSpec::paid("after-poison", &price, 1));
    world.deliver(&s, COMPLETED).await;
    app.assert_balance_settles(&world.client, "after-poison", 7)
        .await;

    let dead = world.dead_letters().await;
    assert_eq!(dead.len(), 3);
    for d in &dead {
        let h = d.properties.headers().as_ref();
        assert_eq!(
            header_str(h, headers::DEAD_KIND),
            Some("poison"),
            "{:?}",
            String::from_utf8_lossy(&d.body)
        );
        assert!(!header_str(h, headers::DEAD_REASON).unwrap().is_empty());
    }
    let m = app.metrics(&world.client).await;
    assert_eq!(
        metric(&m, "fulfill_dead_letters_total{kind=\"poison\"}"),
        3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_together_stay_within_the_stripe_budget() {
    let world = World::new().await;
    // The fake answers 429 past 10 calls/s, as Stripe does past the account's limit.
    world.set_knobs(Knobs {
        rate_limit_per_sec: Some(10),
        ..Default::default()
    });
    let options = Options {
        rate_limit: 10.0,
        concurrency: 16,
        ..Options::default()
    };
    let a = world.start(&options).await;
    let _b = world.start(&options).await;
    let _c = world.start(&options).await;
    let price = world.price(PriceSpec::credits(1));
    let started = std::time::Instant::now();
    for _ in 0..40 {
        let s = world.session(SessionSpec::paid("budgeted", &price, 1));
        world.deliver(&s, COMPLETED).await;
    }
    a.assert_balance_settles(&world.client, "budgeted", 40)
        .await;
    let stats = world.stripe.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "the three processes together exceeded the budget: {stats:?}"
    );
    assert_eq!(stats.session_fetches, 40);
    // 40 calls at 10/s, after the fake's one-second burst, take about 3 s at the least.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
