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
    // Few users: groups hold several sessions of one user, and the two processes' groups
    // move the same balances at once (a lock order that differed would deadlock).
    two_processes_in_groups(5, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_many_users_share_statements_in_two_processes_exactly_once() {
    // Enough users that many groups move each balance once (one statement per table),
    // few enough that the two processes' groups still move the same balances at once.
    let (a, b) = two_processes_in_groups(20, 60).await;
    assert!(
        metric(&a, "fulfill_group_shared_statements_total")
            + metric(&b, "fulfill_group_shared_statements_total")
            >= 1.0,
        "some group shared its statements"
    );
}

/// `n` purchases over `users` users, two processes, a slow ledger: every balance exact,
/// one entry per session, numbered without gaps; no group failed. Returns both
/// processes' metrics.
async fn two_processes_in_groups(users: usize, n: usize) -> (String, String) {
    let world = World::new().await;
    let options = Options {
        concurrency: 64,
        ..Options::default()
    };
    let a = world.start(&options).await;
    let b = world.start(&options).await;
    slow_ledger(&world, 150, "nobody").await;
    let users: Vec<String> = (0..users).map(|i| format!("grouped-{i}")).collect();
    let (expected, sessions) = purchases(&world, &users, n).await;
    all_balances(&world, &a, &expected).await;
    for s in &sessions {
        a.wait_state(&world.client, s, "credited").await;
    }
    let written = entries_by_user(&world).await;
    let per_user = (n / users.len()) as i64;
    let want: Vec<UserEntries> = expected
        .iter()
        .map(|(user, sum)| UserEntries {
            user_id: user.clone(),
            entries: per_user,
            sessions: per_user,
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
    (ma, mb)
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

/// Every row fulfill keeps for the world's sessions, as text, without what differs from
/// one world to the next (generated ids, timestamps): what two worlds given the same
/// sessions must agree on.
async fn rows_kept(world: &World) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    let mut conn = world.db.connect().await;
    let mut all = Vec::new();
    for (table, query) in [
        (
            "balance",
            "SELECT account, user_id, credits, sequence FROM balances",
        ),
        (
            "entry",
            "SELECT e.account, e.user_id, e.delta, e.reason, e.idempotency_key, \
                    e.stripe_session_id, e.component, e.sequence, \
                    e.stripe_event_id = s.last_event_id AS by_the_event, \
                    e.stripe_object_id = s.payment_intent_id AS names_the_payment, \
                    e.debit_id, e.hold_id, e.grant_id, e.memo, e.metadata \
               FROM ledger_entries e JOIN checkout_sessions s \
                 ON s.session_id = e.stripe_session_id",
        ),
        (
            "lot",
            "SELECT l.account, l.user_id, l.stripe_session_id, l.credits, l.remaining, \
                    l.expires_at, l.entry_id = e.id AS of_the_entry \
               FROM credit_lots l JOIN ledger_entries e \
                 ON e.stripe_session_id = l.stripe_session_id",
        ),
        (
            "credit_event",
            "SELECT c.routing_key, c.account, c.user_id, c.sequence, \
                    c.payload - 'id' - 'entry_id' - 'created' AS payload, \
                    c.event_id = 'ce_' || e.id AS named_by_entry, \
                    (c.payload->>'entry_id')::bigint = e.id AS names_entry, \
                    c.payload->>'id' = c.event_id AS names_itself \
               FROM credit_events c JOIN ledger_entries e \
                 ON e.stripe_session_id = c.payload->>'session_id'",
        ),
        (
            "stripe_event",
            "SELECT r.event_type, r.object_id, r.outcome, r.event_id = s.last_event_id AS last \
               FROM stripe_events r JOIN checkout_sessions s ON s.session_id = r.object_id",
        ),
        (
            "session",
            "SELECT session_id, account, state, user_id, credits, reason, stripe_status, \
                    payment_status, payment_intent_id IS NOT NULL AS has_payment, amount_total, \
                    currency, livemode, last_event_id IS NOT NULL AS has_event, \
                    reversed_credits, attention, fetch_lease_until IS NULL AS lease_given_back, \
                    view_started_at IS NOT NULL AS has_view \
               FROM checkout_sessions",
        ),
    ] {
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT '{table} ' || row_to_json(t)::text AS row FROM ({query}) t"
        ))
        .load(&mut conn)
        .await
        .unwrap();
        all.extend(rows.into_iter().map(|r| r.row));
    }
    all.sort();
    all
}

/// The same sessions in a world: fixed ids, so two worlds can be compared row by row.
/// Distinct users but one who buys twice (the second purchase delivered once the first
/// is written, so that both worlds number them alike), single credits, packs, credits
/// that expire, two items in one session, sessions not paid yet, and two sessions of a
/// connected account (one of them of a user id the platform has too); every third
/// delivered twice.
/// `created`: the sessions' (Unix seconds; recent, so nothing expires while compared).
/// Returns the event ids.
async fn same_sessions(world: &World, created: i64) -> Vec<String> {
    let single = world.price(PriceSpec {
        id: Some("price_single".into()),
        ..PriceSpec::credits(1)
    });
    let pack = world.price(PriceSpec {
        id: Some("price_pack".into()),
        ..PriceSpec::product_credits(10)
    });
    let expiring = world.price(PriceSpec {
        id: Some("price_expiring".into()),
        valid_days: Some("30".into()),
        ..PriceSpec::credits(5)
    });
    let mut events = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..40 {
        let user = if i == 7 || i == 13 {
            "buys-twice".to_owned()
        } else {
            format!("user-{i}")
        };
        let line_items = match i % 4 {
            0 => vec![(single.clone(), 1)],
            1 => vec![(pack.clone(), 2)],
            2 => vec![(expiring.clone(), 1)],
            _ => vec![(expiring.clone(), 1), (single.clone(), 3)],
        };
        let mut spec = SessionSpec {
            id: Some(format!("cs_test_same_{i:02}")),
            line_items,
            created: Some(created + i),
            ..SessionSpec::paid(&user, "unused", 1)
        };
        if i % 10 == 9 {
            spec = spec.with_status("complete", "unpaid");
        }
        if i == 21 || i == 22 {
            spec = spec.on_account("acct_1SameSessions");
        }
        if i == 22 {
            spec.client_reference_id = Some("user-3".into());
        }
        let s = world.session(spec);
        let (id, body) = world.event(&s, COMPLETED);
        events.push(id.clone());
        bodies.push((id, body, i % 3 == 0));
    }
    let (second, rest): (Vec<_>, Vec<_>) =
        bodies.into_iter().enumerate().partition(|(i, _)| *i == 13);
    for (_, (id, body, twice)) in rest.iter().chain(&second) {
        if second.iter().any(|(_, (s, _, _))| s == id) {
            world.wait_event(&events[7]).await;
        }
        world.publish(COMPLETED, id, body).await;
        if *twice {
            world.publish(COMPLETED, id, body).await;
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_written_by_shared_statements_keeps_what_each_session_alone_keeps() {
    let created = chrono::Utc::now().timestamp() - 3_600;
    // Grouped: a slow ledger holds the committers busy, so deliveries gather.
    let grouped = World::new().await;
    let app = grouped
        .start(&Options {
            concurrency: 64,
            ..Options::default()
        })
        .await;
    slow_ledger(&grouped, 100, "nobody").await;
    let events = same_sessions(&grouped, created).await;
    for id in &events {
        grouped.wait_event(id).await;
    }
    let metrics = app.metrics(&grouped.client).await;
    assert!(
        metric(&metrics, "fulfill_group_shared_statements_total") >= 1.0,
        "some group was written by shared statements"
    );
    assert_eq!(metric(&metrics, "fulfill_group_retries_total"), 0.0);

    // Alone: one delivery at a time, each session its own transaction.
    let alone = World::new().await;
    let single = alone
        .start(&Options {
            concurrency: 1,
            ..Options::default()
        })
        .await;
    let events = same_sessions(&alone, created).await;
    for id in &events {
        alone.wait_event(id).await;
    }
    let metrics = single.metrics(&alone.client).await;
    assert!(!groups_formed(&metrics), "each session written alone");

    let (kept_grouped, kept_alone) = (rows_kept(&grouped).await, rows_kept(&alone).await);
    assert_eq!(kept_grouped.len(), kept_alone.len());
    for (g, a) in kept_grouped.iter().zip(&kept_alone) {
        assert_eq!(g, a, "grouped (left) and alone (right) differ");
    }
    // And what alone keeps is right: 36 paid sessions, one entry each.
    let count = |kind: &str| kept_alone.iter().filter(|r| r.starts_with(kind)).count();
    assert_eq!(count("entry "), 36);
    assert_eq!(count("credit_event "), 36);
    assert_eq!(count("session "), 40);
    assert_eq!(count("stripe_event "), 40);
    assert_eq!(count("balance "), 35);
    assert!(
        kept_alone
            .iter()
            .filter(|r| r.starts_with("lot "))
            .all(|r| r.contains(r#""of_the_entry":true"#))
    );
    assert!(
        kept_alone
            .iter()
            .filter(|r| r.starts_with("entry "))
            .all(|r| r.contains(r#""by_the_event":true"#)
                && r.contains(r#""names_the_payment":true"#))
    );
    // 5 credits that expire and 3 that do not, then two packs of 10.
    assert_eq!(app.balance(&grouped.client, "buys-twice").await, 28);
    assert!(grouped.dead_letters().await.is_empty());
    assert!(alone.dead_letters().await.is_empty());
}
