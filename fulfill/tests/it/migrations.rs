//! Upgrading a deployment with data: the spending migration turns every positive balance
//! into one non-expiring lot, numbers new entries after the existing ones, and reverts;
//! the Connect migration gives every existing row to the platform, losing nothing.

use diesel::{Connection, RunQueryDsl, sql_query};
use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};
use diesel_migrations::MigrationHarness;
use serde_json::json;

use crate::{
    helpers::{Options, World},
    spending::{balance, grant, key, ledger, post},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_of_the_previous_release_stay_spendable_after_the_upgrade() {
    let world = World::new().await;
    let url = world.db.url.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url).unwrap();
        // The schema of the release before spending (its three migrations), with data.
        for _ in 0..3 {
            conn.run_next_migration(fulfill::db::MIGRATIONS).unwrap();
        }
        sql_query(
            "INSERT INTO ledger_entries (user_id, delta, reason, idempotency_key) VALUES \
             ('old', 10, 'purchase', 'purchase:cs_1'), ('old', -3, 'adjustment', 'adj:1'), \
             ('neg', 5, 'purchase', 'purchase:cs_2'), ('neg', -8, 'refund', 'refund:cs_2:1')",
        )
        .execute(&mut conn)
        .unwrap();
        sql_query("INSERT INTO balances (user_id, credits) VALUES ('old', 7), ('neg', -3)")
            .execute(&mut conn)
            .unwrap();
        conn.run_pending_migrations(fulfill::db::MIGRATIONS)
            .unwrap();
        // Down and up again: the migration is reversible.
        conn.revert_last_migration(fulfill::db::MIGRATIONS).unwrap();
        conn.run_pending_migrations(fulfill::db::MIGRATIONS)
            .unwrap();
    })
    .await
    .unwrap();
    let app = world.start(&Options::default()).await;
    assert_eq!(
        balance(&world, &app, "old").await,
        json!({"user_id": "old", "credits": 7, "held": 0, "available": 7})
    );
    let d = post(
        &world,
        &app,
        "/users/old/debits",
        Some(&key()),
        &json!({"amount": 7}),
    )
    .await;
    assert_eq!(d.status, 201, "{}", d.body);
    let entries = ledger(&world, &app, "old").await;
    assert_eq!(entries.len(), 3);
    assert!(
        entries[0]["sequence"].is_null(),
        "old entries are not rewritten"
    );
    assert_eq!(
        entries[2]["sequence"], 3,
        "new entries are numbered after the old ones"
    );
    // A negative balance has no lot; credits given later first pay it back.
    grant(&world, &app, "neg", 5).await;
    assert_eq!(balance(&world, &app, "neg").await["available"], 2);
    let d = post(
        &world,
        &app,
        "/users/neg/debits",
        Some(&key()),
        &json!({"amount": 2}),
    )
    .await;
    assert_eq!(d.status, 201, "{}", d.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_before_connect_are_the_platforms_and_keep_working() {
    let world = World::new().await;
    let url = world.db.url.clone();
    // The release before Connect (its five migrations), with a balance, an open hold,
    // an answered idempotency key and a credited session.
    let old_key = key();
    let k = old_key.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url).unwrap();
        for _ in 0..5 {
            conn.run_next_migration(fulfill::db::MIGRATIONS).unwrap();
        }
        sql_query(
            "INSERT INTO ledger_entries (user_id, delta, reason, idempotency_key, stripe_session_id, sequence) \
             VALUES ('dora', 10, 'purchase', 'purchase:cs_test_old:1:10', 'cs_test_old', 1)",
        )
        .execute(&mut conn)
        .unwrap();
        sql_query("INSERT INTO balances (user_id, credits, sequence) VALUES ('dora', 10, 1)")
            .execute(&mut conn)
            .unwrap();
        sql_query("INSERT INTO credit_lots (user_id, credits, remaining) VALUES ('dora', 10, 10)")
            .execute(&mut conn)
            .unwrap();
        sql_query(
            "INSERT INTO checkout_sessions (session_id, state, user_id, credits) \
             VALUES ('cs_test_old', 'credited', 'dora', 10)",
        )
        .execute(&mut conn)
        .unwrap();
        sql_query(
            "INSERT INTO holds (hold_id, user_id, amount, expires_at) \
             VALUES ('hold_old', 'dora', 4, now() + interval '1 hour')",
        )
        .execute(&mut conn)
        .unwrap();
        sql_query(format!(
            "INSERT INTO idempotency_keys (key, fingerprint, status, response) \
             VALUES ('{k}', 'old-fingerprint', 201, '{{\"old\": true}}')"
        ))
        .execute(&mut conn)
        .unwrap();
        conn.run_pending_migrations(fulfill::db::MIGRATIONS).unwrap();
    })
    .await
    .unwrap();
    let app = world.start(&Options::default()).await;
    assert_eq!(
        balance(&world, &app, "dora").await,
        json!({"user_id": "dora", "credits": 10, "held": 4, "available": 6})
    );
    // Nothing of it belongs to a connected account.
    let other = app
        .get(&world.client, "/users/dora/balance?account=acct_1Someone")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(other["credits"], 0);
    let session = app
        .get(&world.client, "/checkout/sessions/cs_test_old")
        .await;
    assert_eq!(session.status(), 200);
    // The old key is still the platform's: used for another request, it is refused.
    let reused = post(
        &world,
        &app,
        "/users/dora/debits",
        Some(&old_key),
        &json!({"amount": 1}),
    )
    .await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    // The old hold captures, from the platform's balance.
    let captured = post(&world, &app, "/holds/hold_old/capture", None, &json!({})).await;
    assert_eq!(captured.status, 200, "{}", captured.body);
    assert_eq!(captured.body["credits"], 6);
    let entries = ledger(&world, &app, "dora").await;
    assert_eq!(entries.len(), 2);
}
