//! The error shape of the API: JSON `{"error", "code"}` for unknown routes (404), wrong
//! methods (405), bad paths, query strings and bodies (400); and the ledger's cursor.

use serde_json::{Value, json};

use crate::{
    helpers::{Options, World},
    spending::{grant, key, post},
};

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "status {status}"
    );
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_bad_input_answer_json_errors() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let c = &world.client;
    let (s, b) = error_of(app.get(c, "/nowhere").await).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));
    let (s, b) = error_of(
        c.delete(format!("{}/users/x/balance", app.address))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (405, Some("method_not_allowed")));
    let r = app.get(c, "/users/x/debits").await;
    assert_eq!(r.headers().get("allow").unwrap(), "POST");
    let (s, b) = error_of(r).await;
    assert_eq!((s, b["code"].as_str()), (405, Some("method_not_allowed")));
    let (s, b) = error_of(app.get(c, "/users/x/ledger?limit=abc").await).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("bad_request")));
    let (s, _) = error_of(app.get(c, "/users/x/ledger?limit=0").await).await;
    assert_eq!(s, 400);
    let (s, _) = error_of(app.get(c, "/attention?limit=x").await).await;
    assert_eq!(s, 400);
    for body in [
        "{",
        "[]",
        r#"{"amount": "5"}"#,
        r#"{"amount": 1.5}"#,
        r#"{"reason": "x"}"#,
    ] {
        let r = c
            .post(format!("{}/users/x/debits", app.address))
            .header("Idempotency-Key", key())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (s, b) = error_of(r).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
    }
    let r = c
        .post(format!("{}/holds/h/capture", app.address))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_pages_with_a_cursor_named_in_the_headers() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    grant(&world, &app, "quinn", 10).await;
    for _ in 0..4 {
        post(
            &world,
            &app,
            "/users/quinn/debits",
            Some(&key()),
            &json!({"amount": 1}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut path = "/users/quinn/ledger?limit=2".to_owned();
    loop {
        let r = app.get(&world.client, &path).await;
        let next = r
            .headers()
            .get("Next-Cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let link = r
            .headers()
            .get("Link")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<Value> = r.json().await.unwrap();
        seen.extend(page.iter().map(|e| e["sequence"].as_i64().unwrap()));
        match next {
            Some(cursor) => {
                assert!(link.unwrap().contains(&format!("after={cursor}")));
                path = format!("/users/quinn/ledger?limit=2&after={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
}
