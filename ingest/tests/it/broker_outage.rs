use std::time::Duration;

use crate::helpers::{Options, QUIET, event, spawn_app_with};

#[tokio::test]
async fn with_no_broker_the_answer_is_503_with_retry_after() {
    let app = spawn_app_with(Options {
        unreachable_broker: true,
        ..Options::default()
    })
    .await;
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert_eq!(app.get("/healthz").await.status(), 200);
    let (_, body) = event("checkout.session.completed");
    let response = app.post_signed(body).await;
    assert_eq!(response.status(), 503);
    let retry_after = response.headers().get("Retry-After").expect("Retry-After");
    assert!(retry_after.to_str().unwrap().parse::<u64>().unwrap() > 0);
    let error: serde_json::Value = response.json().await.unwrap();
    let text = error["error"].as_str().unwrap();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("guest"),
        "5xx body leaks internals: {text}"
    );
    assert!(
        app.broker
            .take(&app.broker.topology.checkout_queue(), QUIET)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn ingest_answers_503_while_the_broker_is_cut_and_recovers_without_restart() {
    let app = spawn_app_with(Options {
        via_proxy: true,
        ..Options::default()
    })
    .await;
    let proxy = app.proxy.as_ref().unwrap();
    let queue = app.broker.topology.checkout_queue();

    let (_, before) = event("checkout.session.completed");
    assert_eq!(app.post_signed(before.clone()).await.status(), 200);

    proxy.cut();
    assert!(
        app.wait_not_ready(Duration::from_secs(10)).await,
        "readyz must report the broker down"
    );
    let (_, during) = event("checkout.session.completed");
    for _ in 0..3 {
        let response = app.post_signed(during.clone()).await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("Retry-After"));
    }

    proxy.restore();
    assert!(
        app.wait_ready(Duration::from_secs(20)).await,
        "ingest did not reconnect"
    );
    // Stripe retries the event it got a 503 for; now it lands.
    assert_eq!(app.post_signed(during.clone()).await.status(), 200);

    let got = app.broker.drain(&queue, QUIET).await;
    let bodies: Vec<&[u8]> = got.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(
        bodies,
        vec![before.as_slice(), during.as_slice()],
        "only the 2xx-answered events are in the queue"
    );
}

#[tokio::test]
async fn shutdown_finishes_cleanly() {
    let app = spawn_app_with(Options::default()).await;
    let (_, body) = event("checkout.session.completed");
    assert_eq!(app.post_signed(body).await.status(), 200);
    app.stop().await.expect("clean exit");
}
