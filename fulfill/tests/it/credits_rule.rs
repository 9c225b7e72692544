//! The credits rule of CONTRACT.md, table-driven through the whole path: event on the
//! queue → refetch from (fake) Stripe → decide → PostgreSQL → balance over HTTP.

use fake_stripe::{PriceSpec, SessionSpec};
use serde_json::json;

use crate::helpers::{Options, World};

const COMPLETED: &str = "checkout.session.completed";

struct Case {
    name: &'static str,
    /// `(price credits, product credits, quantity)` per line item.
    items: Vec<(Option<&'static str>, Option<&'static str>, i64)>,
    client_reference_id: Option<&'static str>,
    metadata_user: Option<&'static str>,
    expected_state: &'static str,
    /// Balance of `user` afterwards.
    expected_credits: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credits_rule_table() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let c = &world.client;
    let many: Vec<_> = (1..=25)
        .map(|i| (Some("1"), None, i64::from(i % 3 + 1)))
        .collect();
    let many_total: i64 = many.iter().map(|(_, _, q)| q).sum();
    let cases = vec![
        Case {
            name: "single credit",
            items: vec![(Some("1"), None, 1)],
            client_reference_id: Some("single"),
            metadata_user: None,
            expected_state: "credited",
            expected_credits: 1,
        },
        Case {
            name: "pack of 10",
            items: vec![(Some("10"), None, 1)],
            client_reference_id: Some("pack"),
            metadata_user: None,
            expected_state: "credited",
            expected_credits: 10,
        },
        Case {
            name: "quantity 3 of a pack",
            items: vec![(Some("10"), None, 3)],
            client_reference_id: Some("qty"),
            metadata_user: None,
            expected_state: "credited",
            expected_credits: 30,
        },
        Case {
            name: "product metadata",
            items: vec![(None, Some("5"), 2)],
            client_reference_id: Some("product"),
            metadata_user: None,
            expected_state: "credited",
            expected_credits: 10,
        },
        Case {
            name: "price wins over product",
            items: vec![(Some("2"), Some("50"), 1)],
            client_reference_id: Some("precedence"),
            metadata_user: None,
            expected_state: "credited",
            expected_credits: 2,
        },
        Case {
            name: "mixed basket",
            items: vec![(Some("1"), None, 2), (None, Some("10"), 1)],
            client_reference_id: Some("mixed"),
            metadata_user: None,
            expected_state: "credited",
            expected_credits: 12,
        },
        Case {
            name: "25 line items (paged)",
            items: many,
            client_reference_id: Some("many"),
            metadata_user: None,
            expected_state: "credited",
            expected_credits: many_total,
        },
        Case {
            name: "metadata.user_id",
            items: vec![(Some("3"), None, 1)],
            client_reference_id: None,
            metadata_user: Some("meta"),
            expected_state: "credited",
            expected_credits: 3,
        },
        Case {
            name: "no user",
            items: vec![(Some("3"), None, 1)],
            client_reference_id: None,
            metadata_user: None,
            expected_state: "needs_attention",
            expected_credits: 0,
        },
        Case {
            name: "unmappable item",
            items: vec![(Some("1"), None, 1), (None, None, 1)],
            client_reference_id: Some("unmappable"),
            metadata_user: None,
            expected_state: "needs_attention",
            expected_credits: 0,
        },
        Case {
            name: "credits not a number",
            items: vec![(Some("ten"), None, 1)],
            client_reference_id: Some("nan"),
            metadata_user: None,
            expected_state: "needs_attention",
            expected_credits: 0,
        },
    ];
    let mut sessions = Vec::new();
    for case in &cases {
        let line_items = case
            .items
            .iter()
            .map(|(price, product, qty)| {
                let id = world.price(PriceSpec {
                    credits: price.map(str::to_owned),
                    product_credits: product.map(str::to_owned),
                    ..PriceSpec::no_credits()
                });
                (id, *qty)
            })
            .collect();
        let mut metadata = serde_json::Map::new();
        if let Some(u) = case.metadata_user {
            metadata.insert("user_id".into(), json!(u));
        }
        let session = world.session(SessionSpec {
            client_reference_id: case.client_reference_id.map(str::to_owned),
            metadata,
            line_items,
            ..SessionSpec::paid("x", "x", 1)
        });
        world.deliver(&session, COMPLETED).await;
        sessions.push(session);
    }
    for (case, session) in cases.iter().zip(&sessions) {
        let state = app.wait_state(c, session, case.expected_state).await;
        if case.expected_state == "needs_attention" {
            assert!(
                state["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{}: {state}",
                case.name
            );
        }
        let user = case.client_reference_id.or(case.metadata_user);
        if let Some(user) = user {
            assert_eq!(
                app.balance(c, user).await,
                case.expected_credits,
                "{}",
                case.name
            );
        }
    }
    // Paging happened only for the 25-item session: one extra page after the first 10.
    let stats = world.stripe.stats();
    assert_eq!(stats.line_item_pages, 1, "{stats:?}");
    assert_eq!(
        stats.session_fetches,
        cases.len() as u64,
        "one fetch per session: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_payment_is_credited_only_once_it_succeeds() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let c = &world.client;
    let price = world.price(PriceSpec::credits(10));
    let session =
        world.session(SessionSpec::paid("async-user", &price, 1).with_status("complete", "unpaid"));
    world.deliver(&session, COMPLETED).await;
    app.wait_state(c, &session, "pending").await;
    assert_eq!(app.balance(c, "async-user").await, 0);

    world.stripe.update_session(&session, None, Some("paid"));
    world
        .deliver(&session, "checkout.session.async_payment_succeeded")
        .await;
    app.wait_state(c, &session, "credited").await;
    app.assert_balance_settles(c, "async-user", 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_async_payment_and_an_expired_session_credit_nothing() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let c = &world.client;
    let price = world.price(PriceSpec::credits(10));
    // `completed` (unpaid) and `async_payment_failed` race: whichever commits last, the
    // session ends failed (an unpaid view never overwrites what is known).
    let mut all_failed = Vec::new();
    for _ in 0..8 {
        let s = world
            .session(SessionSpec::paid("unlucky", &price, 1).with_status("complete", "unpaid"));
        tokio::join!(
            world.deliver(&s, COMPLETED),
            world.deliver(&s, "checkout.session.async_payment_failed")
        );
        all_failed.push(s);
    }
    for s in &all_failed {
        app.wait_state(c, s, "failed").await;
    }
    let failed = all_failed[0].clone();

    let expired =
        world.session(SessionSpec::paid("unlucky", &price, 1).with_status("expired", "unpaid"));
    world.deliver(&expired, "checkout.session.expired").await;
    app.wait_state(c, &expired, "expired").await;
    app.assert_balance_settles(c, "unlucky", 0).await;

    // Settled sessions cost no further Stripe call.
    let before = world.stripe.stats().session_fetches;
    world.deliver(&expired, "checkout.session.expired").await;
    world
        .deliver(&failed, "checkout.session.async_payment_failed")
        .await;
    tokio::time::sleep(crate::helpers::QUIET).await;
    assert_eq!(world.stripe.stats().session_fetches, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_needing_attention_is_credited_once_the_operator_fixes_the_price() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let c = &world.client;
    let price = world.price(PriceSpec::no_credits());
    let session = world.session(SessionSpec::paid("fixme", &price, 2));
    world.deliver(&session, COMPLETED).await;
    let state = app.wait_state(c, &session, "needs_attention").await;
    assert!(
        state["reason"].as_str().unwrap().contains(&price),
        "the reason names the price: {state}"
    );

    world.stripe.set_price_credits(&price, Some("5"));
    let (status, body) = app.fulfill(c, &session).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "credited");
    assert_eq!(body["credits"], 10);
    app.assert_balance_settles(c, "fixme", 10).await;
}
