//! Upgrading a deployment with data: the spending migration turns every positive balance
//! into one non-expiring lot, numbers new entries after the existing ones, and reverts.

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
