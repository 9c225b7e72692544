use serde_json::Value;

use crate::helpers::{
    Options, QUIET, REAL_EVENT, ROTATED_SECRET, SECRET, event, now, signature, spawn_app,
    spawn_app_with,
};

#[tokio::test]
async fn a_valid_event_lands_in_the_checkout_queue_byte_for_byte() {
    let app = spawn_app().await;
    let response = app.post_signed(REAL_EVENT.to_vec()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"received": true}));

    let message = app
        .broker
        .take(
            &app.broker.topology.checkout_queue(),
            std::time::Duration::from_secs(5),
        )
        .await
        .expect("the event is in the checkout queue");
    assert_eq!(
        message.body, REAL_EVENT,
        "published bytes differ from the received bytes"
    );
    assert_eq!(message.routing_key, "checkout.session.completed");
    assert_eq!(message.exchange, app.broker.topology.events_exchange());
    let props = &message.properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some("evt_1RL4opGMYJBaxnOIgMhDDV71")
    );
    assert_eq!(
        props.kind().as_ref().map(|s| s.as_str()),
        Some("checkout.session.completed")
    );
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*props.delivery_mode(), Some(2), "must be persistent");
    assert!(
        app.broker
            .take(&app.broker.topology.checkout_queue(), QUIET)
            .await
            .is_none(),
        "exactly one copy"
    );
}

#[tokio::test]
async fn a_pretty_printed_event_signed_with_the_rotated_secret_is_accepted_unchanged() {
    let app = spawn_app().await;
    let (_, body) = event("checkout.session.async_payment_succeeded");
    let sig = signature(&body, ROTATED_SECRET);
    assert_eq!(
        app.post_webhook(body.clone(), Some(&sig)).await.status(),
        200
    );
    let message = app
        .broker
        .take(
            &app.broker.topology.checkout_queue(),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(message.body, body);
    assert_eq!(
        message.routing_key,
        "checkout.session.async_payment_succeeded"
    );
}

async fn assert_rejected(app: &crate::helpers::TestApp, response: reqwest::Response, status: u16) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("a JSON error body");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    for queue in [
        app.broker.topology.checkout_queue(),
        app.broker.topology.unrouted_queue(),
    ] {
        assert!(
            app.broker.take(&queue, QUIET).await.is_none(),
            "a rejected event reached {queue}"
        );
    }
}

#[tokio::test]
async fn invalid_signatures_are_rejected_with_400_and_land_nowhere() {
    let app = spawn_app().await;
    let body = REAL_EVENT.to_vec();
    let good = signature(&body, SECRET);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("empty header", Some(String::new())),
        ("garbage header", Some("nonsense".into())),
        ("wrong secret", Some(signature(&body, "whsec_someone_else"))),
        ("no v1", Some(good.replace("v1=", "v0="))),
        (
            "stale",
            Some(fake_stripe::sign_webhook(&body, SECRET, now() - 400)),
        ),
        (
            "future",
            Some(fake_stripe::sign_webhook(&body, SECRET, now() + 400)),
        ),
    ];
    for (name, header) in cases {
        let response = app.post_webhook(body.clone(), header.as_deref()).await;
        assert_eq!(response.status(), 400, "{name}");
        assert_rejected(&app, response, 400).await;
    }
}

#[tokio::test]
async fn a_tampered_or_reserialized_body_is_rejected() {
    let app = spawn_app().await;
    let (_, body) = event("checkout.session.completed");
    let sig = signature(&body, SECRET);
    // What a framework that parses JSON before the handler would hand over.
    let value: Value = serde_json::from_slice(&body).unwrap();
    let reserialized = serde_json::to_vec(&value).unwrap();
    let response = app.post_webhook(reserialized, Some(&sig)).await;
    assert_rejected(&app, response, 400).await;
    let mut tampered = body.clone();
    let pos = tampered.iter().position(|b| *b == b'9').unwrap();
    tampered[pos] = b'8';
    let response = app.post_webhook(tampered, Some(&sig)).await;
    assert_rejected(&app, response, 400).await;
}

#[tokio::test]
async fn a_signed_body_that_is_not_a_stripe_event_gets_400() {
    let app = spawn_app().await;
    for body in [
        &br#"{"id":"evt_1","object":"charge","type":"charge.succeeded"}"#[..],
        br#"{"object":"event","type":"checkout.session.completed"}"#,
        br#"["not", "an", "object"]"#,
        b"\xff\xfe not utf-8",
    ] {
        let response = app.post_signed(body.to_vec()).await;
        assert_rejected(&app, response, 400).await;
    }
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_lands_nowhere() {
    let app = spawn_app_with(Options {
        body_limit: Some(4096),
        ..Options::default()
    })
    .await;
    let (_, mut body) = event("checkout.session.completed");
    body.truncate(body.len() - 2);
    body.extend(std::iter::repeat_n(b' ', 5000));
    body.extend_from_slice(b"\n}");
    let response = app.post_signed(body).await;
    assert_rejected(&app, response, 413).await;
    // Exactly at the limit is fine.
    let (_, small) = event("checkout.session.completed");
    assert!(small.len() < 4096);
    assert_eq!(app.post_signed(small).await.status(), 200);
}

#[tokio::test]
async fn an_event_nobody_consumes_goes_to_the_bounded_unrouted_queue() {
    let app = spawn_app().await;
    let (id, body) = event("payment_intent.succeeded");
    assert_eq!(app.post_signed(body.clone()).await.status(), 200);
    let message = app
        .broker
        .take(
            &app.broker.topology.unrouted_queue(),
            std::time::Duration::from_secs(5),
        )
        .await
        .expect("kept in the unrouted queue");
    assert_eq!(message.body, body);
    assert_eq!(
        message
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        Some(id)
    );
    assert!(
        app.broker
            .take(&app.broker.topology.checkout_queue(), QUIET)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn the_same_event_delivered_twice_is_published_twice_for_fulfill_to_deduplicate() {
    let app = spawn_app().await;
    let (_, body) = event("checkout.session.completed");
    assert_eq!(app.post_signed(body.clone()).await.status(), 200);
    assert_eq!(app.post_signed(body.clone()).await.status(), 200);
    let got = app
        .broker
        .drain(&app.broker.topology.checkout_queue(), QUIET)
        .await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.body == body));
}
