//! Topology version 2 on a real broker: an upgrade from version 1 with messages in every
//! queue moves each exactly once; retries dead-letter back at least once; reading dead
//! letters again and again does not count as deliveries.

use std::{collections::BTreeSet, time::Duration};

use fulfill::dlq::DeadLetters;
use lapin::{
    BasicProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use shared::topology::{
    CHECKOUT_DELIVERY_LIMIT, consumed_event_types,
    migrate::{migrate, stale_queues},
};
use test_support::broker::TestBroker;

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The queues as topology version 1 declared them (what deployed brokers hold).
async fn declare_version_1(broker: &TestBroker) {
    let ch = broker.channel();
    let t = &broker.topology;
    for q in [t.checkout_queue(), t.retry_queue(), t.dead_letter_queue()] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(
        t.checkout_queue().as_str().into(),
        durable,
        args(&[
            ("x-queue-type", text("quorum")),
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(CHECKOUT_DELIVERY_LIMIT),
            ),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&t.dead_letter_queue())),
        ]),
    )
    .await
    .unwrap();
    for event_type in consumed_event_types() {
        ch.queue_bind(
            t.checkout_queue().as_str().into(),
            t.events_exchange().as_str().into(),
            event_type.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    ch.queue_declare(
        t.retry_queue().as_str().into(),
        durable,
        args(&[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&t.checkout_queue())),
        ]),
    )
    .await
    .unwrap();
    ch.queue_declare(
        t.dead_letter_queue().as_str().into(),
        durable,
        args(&[("x-queue-type", text("quorum"))]),
    )
    .await
    .unwrap();
}

fn with_id(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_delivery_mode(2)
}

async fn ids_in(broker: &TestBroker, queue: &str) -> Vec<String> {
    broker
        .drain(queue, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_a_version_1_broker_holding_messages_moves_each_exactly_once() {
    let broker = TestBroker::new().await;
    declare_version_1(&broker).await;
    let t = broker.topology.clone();
    let connection = lapin::Connection::connect(&broker.url, Default::default())
        .await
        .unwrap();
    let ch = connection.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let publish = |queue: String, props: BasicProperties| {
        let ch = ch.clone();
        async move {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    Default::default(),
                    b"{}",
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }
    };
    let mut owed_checkout = BTreeSet::new();
    for i in 0..20 {
        let id = format!("evt_c{i}");
        publish(t.checkout_queue(), with_id(&id)).await;
        owed_checkout.insert(id);
    }
    // Retries waiting out a long delay: the move sends them on now.
    for i in 0..10 {
        let id = format!("evt_r{i}");
        publish(
            t.retry_queue(),
            with_id(&id).with_expiration("600000".into()),
        )
        .await;
        owed_checkout.insert(id);
    }
    let mut owed_dead = BTreeSet::new();
    for i in 0..5 {
        let id = format!("evt_d{i}");
        publish(t.dead_letter_queue(), with_id(&id)).await;
        owed_dead.insert(id);
    }

    let stale: BTreeSet<_> = stale_queues(&connection, &t)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        stale,
        [t.checkout_queue(), t.retry_queue(), t.dead_letter_queue()]
            .into_iter()
            .collect()
    );
    // The current declaration is refused until the move: why the command exists.
    let refused = connection.create_channel().await.unwrap();
    assert!(t.declare(&refused).await.is_err());

    let report = migrate(&connection, &t).await.unwrap();
    println!("{report}");
    assert_eq!(report.rebuilt.len(), 3, "{report}");
    assert!(stale_queues(&connection, &t).await.unwrap().is_empty());
    // An event published now reaches the new checkout queue (its bindings are back).
    broker
        .publish_event(
            "checkout.session.completed",
            b"{}",
            with_id("evt_after_upgrade"),
        )
        .await;
    owed_checkout.insert("evt_after_upgrade".to_owned());

    let checkout = ids_in(&broker, &t.checkout_queue()).await;
    assert_eq!(
        checkout.len(),
        owed_checkout.len(),
        "no duplicates: {checkout:?}"
    );
    assert_eq!(checkout.into_iter().collect::<BTreeSet<_>>(), owed_checkout);
    let dead = ids_in(&broker, &t.dead_letter_queue()).await;
    assert_eq!(dead.len(), owed_dead.len());
    assert_eq!(dead.into_iter().collect::<BTreeSet<_>>(), owed_dead);

    // Run again: nothing to do.
    let again = migrate(&connection, &t).await.unwrap();
    assert!(again.rebuilt.is_empty(), "{again}");
    assert!(again.moved.is_empty(), "{again}");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_retry_returns_to_the_checkout_queue() {
    let broker = TestBroker::new().await;
    let t = &broker.topology;
    let ch = broker.channel();
    ch.confirm_select(Default::default()).await.unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            t.retry_queue().as_str().into(),
            Default::default(),
            b"{}",
            with_id("evt_retry_once").with_expiration("200".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let back = broker
        .take(&t.checkout_queue(), Duration::from_secs(10))
        .await
        .expect("the retry came back");
    assert_eq!(
        back.properties.message_id().as_ref().unwrap().as_str(),
        "evt_retry_once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_dead_letters_many_times_counts_no_delivery() {
    let broker = TestBroker::new().await;
    let dead = broker.topology.dead_letter_queue();
    broker.publish_to_queue(&dead, b"poison").await;
    let amqp = broker.amqp_config();
    // More inspections than RabbitMQ 4.x's default delivery limit (20).
    for _ in 0..25 {
        let letters = DeadLetters::open(&amqp).await.unwrap();
        assert_eq!(letters.list().len(), 1);
        letters.close().await.unwrap();
    }
    let left = broker.drain(&dead, Duration::from_millis(500)).await;
    assert_eq!(left.len(), 1);
    let count = left[0]
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert!(
        count.is_none() || count == Some(AMQPValue::LongLongInt(0)),
        "returned as a redelivery: {count:?}"
    );
    assert_eq!(left[0].body, b"poison");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_mixed_delays_all_return_to_the_checkout_queue() {
    let broker = TestBroker::new().await;
    let t = &broker.topology;
    let ch = broker.channel();
    ch.confirm_select(Default::default()).await.unwrap();
    for i in 0..20u64 {
        let ms = 100 + (i * 7919) % 1500;
        let confirm = ch
            .basic_publish(
                "".into(),
                t.retry_queue().as_str().into(),
                Default::default(),
                b"{}",
                with_id(&format!("evt_mixed{i}")).with_expiration(ms.to_string().into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    let mut back = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while back.len() < 20 && std::time::Instant::now() < deadline {
        if let Some(m) = broker
            .take(&t.checkout_queue(), Duration::from_millis(500))
            .await
        {
            back.insert(m.properties.message_id().as_ref().unwrap().to_string());
        }
    }
    assert_eq!(back.len(), 20, "{back:?}");
}
