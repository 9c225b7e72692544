//! Stripe Connect: events of connected accounts are handled for those accounts (every
//! Stripe call with `Stripe-Account`), and balances, ledgers, holds, grants, idempotency
//! keys and credit events are keyed by (account, user): two accounts and the platform with
//! colliding user ids stay apart.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use fake_stripe::{PriceSpec, SessionSpec};
use fulfill::{domain::account::Account, reconcile};
use serde_json::{Value, json};

use crate::{
    helpers::{Instance, Options, World, eventually},
    spending::{Answer, key, post},
};

const COMPLETED: &str = "checkout.session.completed";
const REFUNDED: &str = "charge.refunded";
const A: &str = "acct_1ConnectAlpha";
const B: &str = "acct_1ConnectBravo";

/// `path` for `account` (`None`: the platform).
fn scoped(path: &str, account: Option<&str>) -> String {
    match account {
        None => path.to_owned(),
        Some(a) if path.contains('?') => format!("{path}&account={a}"),
        Some(a) => format!("{path}?account={a}"),
    }
}

async fn balance(world: &World, app: &Instance, user: &str, account: Option<&str>) -> Value {
    let r = app
        .get(
            &world.client,
            &scoped(&format!("/users/{user}/balance"), account),
        )
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn credits_settle(
    world: &World,
    app: &Instance,
    user: &str,
    account: Option<&str>,
    want: i64,
) {
    eventually(|| async {
        let b = balance(world, app, user, account).await;
        (b["credits"] == want).then_some(())
    })
    .await;
}

async fn send(
    world: &World,
    app: &Instance,
    path: &str,
    account: Option<&str>,
    body: Value,
) -> Answer {
    post(world, app, &scoped(path, account), Some(&key()), &body).await
}

#[derive(diesel::QueryableByName, Debug, PartialEq, Eq)]
struct Announced {
    #[diesel(sql_type = diesel::sql_types::Text)]
    account: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    user_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    sequence: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    payload: Value,
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connected_accounts_and_the_platform_with_colliding_user_ids_stay_apart() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    // "alice" buys on the platform, on account A and on account B.
    let on_platform = world.session(SessionSpec::paid("alice", &pack, 1));
    let on_a = world.session(SessionSpec::paid("alice", &pack, 2).on_account(A));
    let on_b = world.session(SessionSpec::paid("alice", &pack, 3).on_account(B));
    for s in [&on_platform, &on_a, &on_b] {
        let (_, body) = world.deliver(s, COMPLETED).await;
        let account = serde_json::from_slice::<Value>(&body).unwrap()["account"].clone();
        assert_eq!(account.is_null(), s == &on_platform, "{account}");
    }
    credits_settle(&world, &app, "alice", None, 10).await;
    credits_settle(&world, &app, "alice", Some(A), 20).await;
    credits_settle(&world, &app, "alice", Some(B), 30).await;

    // A refund on account A takes back A's credits only (the charge and refunds are
    // fetched with A's Stripe-Account, or Stripe would answer 404).
    let (_, refund_event, refund_body) = world.stripe.refund_session(&on_a, None).unwrap();
    world.publish(REFUNDED, &refund_event, &refund_body).await;
    credits_settle(&world, &app, "alice", Some(A), 0).await;
    assert_eq!(balance(&world, &app, "alice", None).await["credits"], 10);
    assert_eq!(balance(&world, &app, "alice", Some(B)).await["credits"], 30);

    // Ledgers are per account.
    let ledger = |account: Option<&'static str>| {
        let world = &world;
        let app = &app;
        async move {
            let r = app
                .get(
                    &world.client,
                    &scoped("/users/alice/ledger?limit=100", account),
                )
                .await;
            assert_eq!(r.status(), 200);
            r.json::<Vec<Value>>().await.unwrap()
        }
    };
    let deltas = |entries: Vec<Value>| {
        entries
            .iter()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap().to_owned(),
                    e["delta"].as_i64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(deltas(ledger(None).await), [("purchase".to_owned(), 10)]);
    assert_eq!(
        deltas(ledger(Some(A)).await),
        [("purchase".to_owned(), 20), ("refund".to_owned(), -20)]
    );
    assert_eq!(deltas(ledger(Some(B)).await), [("purchase".to_owned(), 30)]);

    // Spending: the same Idempotency-Key is another key in another account.
    let k = key();
    let debit_b = post(
        &world,
        &app,
        &scoped("/users/alice/debits", Some(B)),
        Some(&k),
        &json!({"amount": 5}),
    )
    .await;
    assert_eq!(debit_b.status, 201, "{}", debit_b.body);
    assert_eq!(debit_b.body["credits"], 25);
    let debit_p = post(
        &world,
        &app,
        "/users/alice/debits",
        Some(&k),
        &json!({"amount": 3}),
    )
    .await;
    assert_eq!(debit_p.status, 201, "{}", debit_p.body);
    assert!(!debit_p.replayed);
    assert_eq!(debit_p.body["credits"], 7);
    let again = post(
        &world,
        &app,
        &scoped("/users/alice/debits", Some(B)),
        Some(&k),
        &json!({"amount": 5}),
    )
    .await;
    assert!(again.replayed);
    assert_eq!(again.body, debit_b.body);
    // Account A has nothing left to spend, whatever the platform's alice has.
    let refused = send(
        &world,
        &app,
        "/users/alice/debits",
        Some(A),
        json!({"amount": 1}),
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["code"], "insufficient_credits");

    // Holds belong to their account: another account (or the platform) cannot see,
    // capture or release them.
    let hold = send(
        &world,
        &app,
        "/users/alice/holds",
        Some(B),
        json!({"amount": 5}),
    )
    .await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let hold_id = hold.body["hold_id"].as_str().unwrap().to_owned();
    assert_eq!(
        balance(&world, &app, "alice", Some(B)).await["available"],
        20
    );
    assert_eq!(balance(&world, &app, "alice", None).await["held"], 0);
    for account in [None, Some(A)] {
        let capture = send(
            &world,
            &app,
            &format!("/holds/{hold_id}/capture"),
            account,
            json!({}),
        )
        .await;
        assert_eq!(capture.status, 404, "{}", capture.body);
        let shown = app
            .get(
                &world.client,
                &scoped(&format!("/holds/{hold_id}"), account),
            )
            .await;
        assert_eq!(shown.status(), 404);
    }
    let capture = send(
        &world,
        &app,
        &format!("/holds/{hold_id}/capture"),
        Some(B),
        json!({}),
    )
    .await;
    assert_eq!(capture.status, 200, "{}", capture.body);
    assert_eq!(capture.body["credits"], 20);

    // Grants too.
    let grant = send(
        &world,
        &app,
        "/users/alice/grants",
        Some(A),
        json!({"amount": 4, "reason": "goodwill"}),
    )
    .await;
    assert_eq!(grant.status, 201, "{}", grant.body);
    assert_eq!(balance(&world, &app, "alice", Some(A)).await["credits"], 4);
    assert_eq!(balance(&world, &app, "alice", None).await["credits"], 7);
    assert_eq!(balance(&world, &app, "alice", Some(B)).await["credits"], 20);

    // Sessions are their account's: another account does not see them.
    let seen = app
        .get(&world.client, &format!("/checkout/sessions/{on_a}"))
        .await;
    assert_eq!(seen.status(), 404);
    let seen = app
        .get(
            &world.client,
            &scoped(&format!("/checkout/sessions/{on_a}"), Some(A)),
        )
        .await;
    assert_eq!(seen.status(), 200);

    // Credit events name their account and number each (account, user) on its own.
    let mut conn = world.db.connect().await;
    let rows: Vec<Announced> = diesel::sql_query(
        "SELECT account, user_id, sequence, payload FROM credit_events \
         WHERE sequence IS NOT NULL ORDER BY account, sequence",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let per_account = |account: &str| {
        rows.iter()
            .filter(|r| r.account == account)
            .map(|r| {
                assert_eq!(r.user_id.as_deref(), Some("alice"));
                let named = if account.is_empty() {
                    Value::Null
                } else {
                    json!(account)
                };
                assert_eq!(r.payload["account"], named, "{}", r.payload);
                (
                    r.payload["type"].as_str().unwrap().to_owned(),
                    r.sequence.unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        per_account(""),
        [
            ("credits.purchase".to_owned(), 1),
            ("credits.debit".to_owned(), 2)
        ]
    );
    assert_eq!(
        per_account(A),
        [
            ("credits.purchase".to_owned(), 1),
            ("credits.refund".to_owned(), 2),
            ("credits.grant".to_owned(), 3)
        ]
    );
    assert_eq!(
        per_account(B),
        [
            ("credits.purchase".to_owned(), 1),
            ("credits.debit".to_owned(), 2),
            ("credits.debit".to_owned(), 3)
        ]
    );

    // Stripe counts requests per account: each account spent its own budget row.
    let budgets: Vec<Name> = diesel::sql_query("SELECT name FROM stripe_rate_budget ORDER BY name")
        .load(&mut conn)
        .await
        .unwrap();
    let names: Vec<String> = budgets.into_iter().map(|n| n.name).collect();
    assert_eq!(
        names,
        ["stripe", &format!("stripe:{A}"), &format!("stripe:{B}")]
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_success_page_and_reconcile_work_per_account() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    let on_a = world.session(SessionSpec::paid("bob", &pack, 1).on_account(A));
    // The platform's Stripe does not know A's session: 404, nothing recorded.
    let (status, answer) = app.fulfill(&world.client, &on_a).await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        app.get(
            &world.client,
            &scoped(&format!("/checkout/sessions/{on_a}"), Some(A))
        )
        .await
        .status(),
        404
    );
    let r = world
        .client
        .post(format!(
            "{}/checkout/sessions/{on_a}/fulfill?account={A}",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let state: Value = r.json().await.unwrap();
    assert_eq!(state["credited_now"], true, "{state}");
    credits_settle(&world, &app, "bob", Some(A), 10).await;
    assert_eq!(balance(&world, &app, "bob", None).await["credits"], 0);
    // Asking for A's session as the platform's is refused, never guessed.
    let (status, answer) = app.fulfill(&world.client, &on_a).await;
    assert_eq!(status, 404, "{answer}");

    // A session on B whose webhook was lost: the platform's reconcile does not see it,
    // B's heals it.
    let lost = world.session(SessionSpec::paid("bob", &pack, 2).on_account(B));
    let _ = world.event(&lost, COMPLETED);
    let services = world.services(&Options::default());
    let platform = reconcile::run(
        &services,
        &Account::PLATFORM,
        Some(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(platform.healed, 0, "{platform}");
    let b = Account::parse(Some(B)).unwrap();
    let report = reconcile::run(&services, &b, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(report.healed, 1, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert!(
        report.to_string().contains(&format!("account={B}")),
        "{report}"
    );
    credits_settle(&world, &app, "bob", Some(B), 20).await;
    let again = reconcile::run(&services, &b, None).await.unwrap();
    assert_eq!(again.healed, 0, "{again}");
    assert_eq!(balance(&world, &app, "bob", Some(B)).await["credits"], 20);
    assert_eq!(balance(&world, &app, "bob", Some(A)).await["credits"], 10);
    assert!(world.dead_letters().await.is_empty());
}

/// Runs the real `fulfill` binary with `args`, configured for `world` only.
async fn fulfill_command(world: &World, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fulfill"));
    command
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &world.db.url)
        .env("STRIPE_SECRET_KEY", world.stripe_key)
        .env("STRIPE_API_BASE", world.stripe.base_url())
        .env("AMQP_URL", &world.broker.url)
        .env("AMQP_TOPOLOGY_PREFIX", &world.broker.prefix);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_command_heals_the_named_account_only() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    // Two paid sessions whose webhooks were lost: one on A, one of the platform, the same
    // user id on both.
    let on_a = world.session(SessionSpec::paid("carol", &pack, 1).on_account(A));
    let _ = world.event(&on_a, COMPLETED);
    let own = world.session(SessionSpec::paid("carol", &pack, 2));
    let _ = world.event(&own, COMPLETED);

    let out = fulfill_command(&world, &["reconcile", "--account", A, "--since", "1h"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("reconcile:"))
        .unwrap_or_else(|| panic!("no summary in {stdout}{stderr}"));
    for part in [&format!("account={A}"), "healed=1", "errors=0"] {
        assert!(summary.contains(part), "{summary}");
    }
    // Credited under A; the platform's session untouched, not even fetched.
    credits_settle(&world, &app, "carol", Some(A), 10).await;
    let state = app
        .session_state(&world.client, &format!("{on_a}?account={A}"))
        .await;
    assert_eq!(state.unwrap()["state"], "credited");
    assert_eq!(balance(&world, &app, "carol", None).await["credits"], 0);
    assert!(app.session_state(&world.client, &own).await.is_none());
    let fetches = world.stripe.stats().fetches_by_session;
    assert_eq!(fetches.get(&own), None, "{fetches:?}");
    assert!(world.dead_letters().await.is_empty());

    // A malformed account is refused before anything runs, naming the flag.
    for bad in ["bogus", "acct_", ""] {
        let out = fulfill_command(&world, &["reconcile", "--account", bad, "--since", "1h"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--account {bad:?} was accepted");
        assert!(stderr.contains("--account"), "{bad:?}: {stderr}");
    }
    assert_eq!(balance(&world, &app, "carol", None).await["credits"], 0);
    assert_eq!(balance(&world, &app, "carol", Some(A)).await["credits"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_malformed_account_is_a_400_never_the_platform() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    for bad in ["", "bogus", "acct_", "acct_1%20x"] {
        for path in ["/users/alice/balance", "/users/alice/ledger"] {
            let r = app
                .get(&world.client, &format!("{path}?account={bad}"))
                .await;
            assert_eq!(r.status(), 400, "{path}?account={bad}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "bad_request", "{body}");
        }
        let debit = post(
            &world,
            &app,
            &format!("/users/alice/debits?account={bad}"),
            Some(&key()),
            &json!({"amount": 1}),
        )
        .await;
        assert_eq!(debit.status, 400, "{}", debit.body);
    }
    // An event whose account is malformed is poison: dead-lettered, nothing credited.
    let pack = world.price(PriceSpec::credits(10));
    let s = world.session(SessionSpec::paid("carol", &pack, 1));
    let (id, body) = world.event(&s, COMPLETED);
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["account"] = json!("not-an-account");
    world
        .publish(COMPLETED, &id, &serde_json::to_vec_pretty(&v).unwrap())
        .await;
    let dead = eventually(|| async {
        let dead = world.dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(balance(&world, &app, "carol", None).await["credits"], 0);
}
