//! Group commit: sessions converging at the same moment share a ledger transaction, and
//! come out exactly as if each had had its own.
//!
//! A trigger that makes every ledger insert take a while holds the committers busy, so
//! the deliveries behind them gather into groups (as they do under load).

use std::collections::BTreeMap;

use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use fake_stripe::{PriceSpec, SessionSpec};

use crate::helpers::{Instance, Options, World, metric};

const COMPLETED: &str = "checkout.session.completed";

/// Every ledger insert waits `ms`; one of `user` fails as a CHECK violation would (a
/// permanent error: the delivery is dead-lettered, not retried).
async fn slow_ledger(world: &World, ms: u32, poisoned_user: &str) {
    let mut conn = world.db.connect().await;
    conn.batch_execute(&format!(
        "CREATE FUNCTION test_slow_ledger() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           PERFORM pg_sleep({ms} / 1000.0); \
           IF NEW.user_id = '{poisoned_user}' THEN \
             RAISE EXCEPTION 'poisoned entry' USING ERRCODE = 'check_violation'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER test_slow_ledger BEFORE INSERT ON ledger_entries \
           FOR EACH ROW EXECUTE FUNCTION test_slow_ledger();"
    ))
    .await
    .unwrap();
}

/// Publishes `n` purchases spread over `users` (single credits and 10-credit packs, some
/// delivered twice); returns each user's expected balance and the sessions.
async fn purchases(
    world: &World,
    users: &[String],
    n: usize,
) -> (BTreeMap<String, i64>, Vec<String>) {
    let single = world.price(PriceSpec::credits(1));
    let pack = world.price(PriceSpec::product_credits(10));
    let mut expected = BTreeMap::new();
    let mut sessions = Vec::new();
    for i in 0..n {
        let user = &users[i % users.len()];
        let (price, credits) = if i % 2 == 0 {
            (&single, 1)
        } else {
            (&pack, 10)
        };
        let s = world.session(SessionSpec::paid(user, price, 1));
        let (id, body) = world.event(&s, COMPLETED);
        world.publish(COMPLETED, &id, &body).await;
        if i % 3 == 0 {
            world.publish(COMPLETED, &id, &body).await;
        }
        *expected.entry(user.clone()).or_insert(0) += credits;
        sessions.push(s);
    }
    (expected, sessions)
}

#[derive(diesel::QueryableByName, Debug, PartialEq, Eq)]
struct UserEntries {
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    entries: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    sessions: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    sum: i64,
    /// `sequence` runs 1..n without gaps or repeats.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    sequence_dense: bool,
}

async fn entries_by_user(world: &World) -> Vec<UserEntries> {
    let mut conn = world.db.connect().await;
    diesel::sql_query(
        "SELECT user_id, count(*) AS entries, count(DISTINCT stripe_session_id) AS sessions, \
                sum(delta)::BIGINT AS sum, \
                (min(sequence) = 1 AND max(sequence) = count(*) \
                 AND count(DISTINCT sequence) = count(*)) AS sequence_dense \
         FROM ledger_entries GROUP BY user_id ORDER BY user_id",
    )
    .load(&mut conn)
    .await
    .unwrap()
}

fn groups_formed(metrics: &str) -> bool {
    metric(metrics, "fulfill_transaction_sessions_sum")
        > metric(metrics, "fulfill_transaction_sessions_count")
}

async fn all_balances(world: &World, app: &Instance, expected: &BTreeMap<String, i64>) {
    for (user, credits) in expected {
        app.assert_balance_settles(&world.client, user, *credits)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_converging_at_once_are_written_in_groups_exactly_once() {
    let world = World::new().await;
    let options = Options {
        concurrency: 64,
        ..Options::default()
    };
    let a = world.start(&options).await;
    let b = world.start(&options).await;
    slow_ledger(&world, 150, "nobody").await;
    // Few users: groups hold several sessions of one user, and the two processes' groups
    // move the same balances at once (a lock order that differed would deadlock).
    let users: Vec<String> = (0..5).map(|i| format!("grouped-{i}")).collect();
    let (expected, sessions) = purchases(&world, &users, 60).await;
    all_balances(&world, &a, &expected).await;
    for s in &sessions {
        a.wait_state(&world.client, s, "credited").await;
    }
    let written = entries_by_user(&world).await;
    let want: Vec<UserEntries> = expected
        .iter()
        .map(|(user, sum)| UserEntries {
            user_id: user.clone(),
            entries: 12,
            sessions: 12,
            sum: *sum,
            sequence_dense: true,
        })
        .collect();
    assert_eq!(
        written, want,
        "one entry per session, numbered without gaps"
    );
    let (ma, mb) = (
        a.metrics(&world.client).await,
        b.metrics(&world.client).await,
    );
    assert!(
        groups_formed(&ma) || groups_formed(&mb),
        "some transaction wrote several sessions"
    );
    assert_eq!(
        metric(&ma, "fulfill_group_retries_total") + metric(&mb, "fulfill_group_retries_total"),
        0.0,
        "no group failed (no deadlock, no conflict)"
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_fails_in_a_group_fails_alone() {
    let world = World::new().await;
    let app = world
        .start(&Options {
            concurrency: 64,
            ..Options::default()
        })
        .await;
    slow_ledger(&world, 150, "poisoned").await;
    // Every seventh purchase is the poisoned user's: the first few purchases keep the
    // committers busy, so the poisoned ones go out in groups with the others.
    let mut users: Vec<String> = (0..6).map(|i| format!("beside-{i}")).collect();
    users.push("poisoned".to_owned());
    let (mut expected, _) = purchases(&world, &users, 35).await;
    expected.remove("poisoned");
    all_balances(&world, &app, &expected).await;
    // The poisoned sessions failed as they would have alone (dead-lettered, nothing
    // written); every session grouped with them was written once, by itself.
    let dead = eventually_dead(&world, 5).await;
    assert_eq!(dead, 5, "each poisoned session's event dead-lettered");
    let written = entries_by_user(&world).await;
    assert!(written.iter().all(|u| u.user_id != "poisoned"));
    assert!(
        written
            .iter()
            .all(|u| u.entries == 5 && u.sessions == 5 && u.sequence_dense)
    );
    assert_eq!(app.balance(&world.client, "poisoned").await, 0);
    let metrics = app.metrics(&world.client).await;
    assert!(
        metric(&metrics, "fulfill_group_retries_total") >= 1.0,
        "a group with a poisoned session was written again session by session"
    );
}

/// The number of distinct events dead-lettered, once `n` are (or after the wait).
async fn eventually_dead(world: &World, n: usize) -> usize {
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..100 {
        for letter in world.dead_letters().await {
            if let Some(id) = letter.properties.message_id() {
                ids.insert(id.to_string());
            }
        }
        if ids.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ids.len()
}
