//! The HTTP API: balances, ledger, success-page fulfillment, auth, health, metrics.

use fake_stripe::{PriceSpec, SessionSpec};
use serde_json::Value;

use crate::helpers::{Options, World, encode, eventually, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_never_credited_has_a_zero_balance_and_an_empty_ledger() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let r = app.get(&world.client, "/users/nobody/balance").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"user_id": "nobody", "credits": 0, "held": 0, "available": 0})
    );
    let r = app.get(&world.client, "/users/nobody/ledger").await;
    assert_eq!(r.json::<Value>().await.unwrap(), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_user_ids_credit_cleanly_or_are_refused_cleanly() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let price = world.price(PriceSpec::credits(4));
    let long = "é".repeat(500);
    for user in [
        "o'brien\"; DROP TABLE balances; --",
        "ünïcødé 🚀",
        long.as_str(),
        "%2F..%2F",
    ] {
        let s = world.session(SessionSpec::paid(user, &price, 1));
        let (status, body) = app.fulfill(&world.client, &s).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "credited", "{user}");
        assert_eq!(app.balance(&world.client, user).await, 4, "{user}");
    }
    let nul = world.session(SessionSpec::paid("a\u{0}b", &price, 1));
    let (status, body) = app.fulfill(&world.client, &nul).await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "needs_attention");
    let r = app
        .get(
            &world.client,
            &format!("/users/{}/balance", encode("a\u{1}b")),
        )
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_success_page_path_reports_the_state_and_errors_clearly() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let price = world.price(PriceSpec::credits(10));
    let open = world.session(SessionSpec::paid("shopper", &price, 1).with_status("open", "unpaid"));
    let (status, body) = app.fulfill(&world.client, &open).await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "pending");
    assert_eq!(body["credited_now"], false);

    world
        .stripe
        .update_session(&open, Some("complete"), Some("paid"));
    let (status, body) = app.fulfill(&world.client, &open).await;
    assert_eq!(
        (status, body["state"].as_str(), body["credits"].as_i64()),
        (200, Some("credited"), Some(10))
    );
    assert_eq!(body["credited_now"], true);
    let (_, again) = app.fulfill(&world.client, &open).await;
    assert_eq!(again["credited_now"], false);
    assert_eq!(app.balance(&world.client, "shopper").await, 10);

    let (status, body) = app.fulfill(&world.client, "not-a-session").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.fulfill(&world.client, "cs_test_doesnotexist").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("No such"));

    let m = app.metrics(&world.client).await;
    assert_eq!(metric(&m, "fulfill_credits_granted_total"), 10.0, "{m}");
    assert_eq!(metric(&m, "fulfill_sessions_credited_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_set_balances_and_checkout_need_it_but_health_and_metrics_do_not() {
    let world = World::new().await;
    let app = world
        .start(&Options {
            api_token: Some("s3cret-token".into()),
            ..Options::default()
        })
        .await;
    let c = &world.client;
    for path in [
        "/users/u/balance",
        "/users/u/ledger",
        "/checkout/sessions/cs_test_x",
        "/attention",
    ] {
        let r = app.get(c, path).await;
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = c
            .get(format!("{}{path}", app.address))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = c
        .post(format!(
            "{}/checkout/sessions/cs_test_x/fulfill",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/users/u/balance", app.address))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/healthz", "/readyz", "/readyz/api", "/metrics"] {
        assert_eq!(app.get(c, path).await.status(), 200, "{path}");
    }
    let m = app.metrics(c).await;
    assert!(!m.contains("s3cret-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_are_counted_and_timed_by_route_pattern_and_status() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let c = &world.client;
    for user in ["alice", "bob"] {
        assert_eq!(
            app.get(c, &format!("/users/{user}/balance")).await.status(),
            200
        );
    }
    assert_eq!(app.get(c, "/no/such/route").await.status(), 404);
    let m = app.metrics(c).await;
    assert_eq!(
        metric(
            &m,
            "fulfill_api_requests_total{method=\"GET\",route=\"/users/{user_id}/balance\",status=\"200\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "fulfill_api_request_duration_seconds_count{method=\"GET\",route=\"/users/{user_id}/balance\",status=\"200\"}"
        ),
        2.0
    );
    assert!(
        m.contains("route=\"unmatched\",status=\"404\""),
        "unknown paths share one series: {m}"
    );
    assert!(!m.contains("alice"), "no raw path in a label");
    assert!(m.contains("fulfill_build_info{version=\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_broker_the_api_stays_ready_and_readyz_says_what_is_down() {
    let world = World::new().await;
    let app = world
        .start(&Options {
            via_proxy: true,
            ..Options::default()
        })
        .await;
    let c = &world.client;
    app.cut_broker();
    let body = eventually(|| async {
        let r = app.get(c, "/readyz").await;
        (r.status() == 503).then_some(())?;
        r.json::<serde_json::Value>().await.ok()
    })
    .await;
    assert_eq!(body["broker"], "down");
    assert_eq!(body["database"], "up");
    let r = app.get(c, "/readyz/api").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["consuming"], false);
    assert_eq!(body["serving_api"], true);
    assert_eq!(app.get(c, "/users/u/balance").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_cleanly() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    app.stop().await.expect("clean exit");
}
