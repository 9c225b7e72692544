//! The shared Stripe budget cannot be starved or stalled: the success page answers 503
//! with `Retry-After` instead of queueing behind a far slot, and no pause or clock step
//! pushes the next slot more than a minute out; connected accounts have a budget each, or
//! share the platform's (`STRIPE_RATE_LIMIT_SCOPE`).

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use fake_stripe::{PriceSpec, SessionSpec};
use fulfill::{
    db::budget::{self, Slot},
    domain::account::Account,
    stripe::{RateLimitScope, rate_limit::MAX_PAUSE},
};

use crate::helpers::{Options, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_success_page_answers_503_with_retry_after_rather_than_queue() {
    let world = World::new().await;
    // One Stripe call per 5 s for the whole fleet.
    let app = world
        .start(&Options {
            rate_limit: 0.2,
            ..Options::default()
        })
        .await;
    let pack = world.price(PriceSpec::credits(3));
    let first = world.session(SessionSpec::paid("early", &pack, 1));
    let second = world.session(SessionSpec::paid("late", &pack, 1));
    let (status, _) = app.fulfill(&world.client, &first).await;
    assert_eq!(status, 200);
    // The first fulfillment spent the budget for the next seconds: the second is told when
    // to come back instead of waiting behind it.
    let r = world
        .client
        .post(format!(
            "{}/checkout/sessions/{second}/fulfill",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let retry_after: u64 = r
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Nothing was taken or half done: after the wait it is credited.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, body) = app.fulfill(&world.client, &second).await;
    assert_eq!(status, 200, "{body}");
    app.assert_balance_settles(&world.client, "late", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pause_or_clock_step_holds_the_budget_past_the_cap() {
    let world = World::new().await;
    let _app = world.start(&Options::default()).await; // migrates the database
    let mut conn = world.db.connect().await;
    let interval = Duration::from_millis(10);

    // A Retry-After of an hour (from Stripe or anything between).
    budget::pause(&mut conn, "stripe", Duration::from_secs(3600), MAX_PAUSE)
        .await
        .unwrap();
    match budget::take_slot(&mut conn, "stripe", interval, MAX_PAUSE, None)
        .await
        .unwrap()
    {
        Slot::Taken(wait) => assert!(wait <= MAX_PAUSE, "{wait:?}"),
        other => panic!("{other:?}"),
    }

    // A slot written by a clock an hour ahead (the database's clock then stepped back).
    diesel::sql_query(
        "UPDATE stripe_rate_budget SET next_slot = clock_timestamp() + interval '1 hour'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    match budget::take_slot(&mut conn, "stripe", interval, MAX_PAUSE, None)
        .await
        .unwrap()
    {
        Slot::Taken(wait) => assert!(wait <= MAX_PAUSE + interval, "{wait:?}"),
        other => panic!("{other:?}"),
    }
    // And with a bound, a far slot is refused without being taken.
    match budget::take_slot(
        &mut conn,
        "stripe",
        interval,
        MAX_PAUSE,
        Some(Duration::from_secs(1)),
    )
    .await
    .unwrap()
    {
        Slot::TooFar(wait) => {
            assert!(wait > Duration::from_secs(1) && wait <= MAX_PAUSE + interval * 2)
        }
        other => panic!("{other:?}"),
    }
}

/// At a budget far above demand, slots come in blocks (one update of the row takes the
/// next 10 ms of them). Callers that all find the block spent wait for one refill and
/// share it: a burst of them costs one update, not one each queueing on the row's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_finding_the_block_spent_share_one_refill() {
    use fulfill::stripe::rate_limit::RateLimiter;
    let world = World::new().await;
    let _app = world.start(&Options::default()).await; // migrates the database
    let mut conn = world.db.connect().await;
    // Count the updates of the budget rows (this test's own database).
    for statement in [
        "CREATE TABLE budget_updates (n INT NOT NULL)",
        "INSERT INTO budget_updates VALUES (0)",
        "CREATE FUNCTION count_budget_update() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN UPDATE budget_updates SET n = n + 1; RETURN NEW; END $$",
        "CREATE TRIGGER count_budget_update AFTER UPDATE ON stripe_rate_budget \
         FOR EACH ROW EXECUTE FUNCTION count_budget_update()",
    ] {
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let url = secrecy::SecretString::from(world.db.url.clone());
    let limiter = std::sync::Arc::new(RateLimiter::shared(fulfill::db::pool(&url, 16), 100_000.0));
    for burst in 1..=3 {
        // 16 callers at once find the block spent (or none yet).
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let limiter = std::sync::Arc::clone(&limiter);
                tokio::spawn(async move { limiter.acquire(&Account::PLATFORM).await })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        let counted: Vec<Count> = diesel::sql_query("SELECT n::BIGINT AS n FROM budget_updates")
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            counted[0].n, burst,
            "updates of the budget row after burst {burst}"
        );
        // Past the block's lateness: the next burst finds it spent again.
        tokio::time::sleep(
            fulfill::stripe::rate_limit::BLOCK_LATE_AT_MOST + Duration::from_millis(30),
        )
        .await;
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

/// Five session fetches for each of two connected accounts at once, at 5 calls/s: how
/// long they took together, and the budget rows they spent.
async fn two_accounts_calling(scope: RateLimitScope) -> (Duration, Vec<String>) {
    const A: &str = "acct_1BudgetAlpha";
    const B: &str = "acct_1BudgetBravo";
    let world = World::new().await;
    let options = Options {
        rate_limit: 5.0,
        rate_limit_scope: scope,
        ..Options::default()
    };
    let _app = world.start(&options).await; // migrates the database
    let pack = world.price(PriceSpec::credits(1));
    let services = world.services(&options);
    let calls = |account: &'static str| {
        let session = world.session(SessionSpec::paid("u", &pack, 1).on_account(account));
        let stripe = services
            .stripe
            .for_account(&Account::parse(Some(account)).unwrap());
        async move {
            for _ in 0..5 {
                stripe
                    .get::<serde_json::Value>(
                        "checkout_sessions.retrieve",
                        &format!("/v1/checkout/sessions/{session}"),
                        &[],
                    )
                    .await
                    .unwrap();
            }
        }
    };
    let (a, b) = (calls(A), calls(B));
    let started = Instant::now();
    tokio::join!(a, b);
    let elapsed = started.elapsed();
    assert_eq!(world.stripe.stats().session_fetches, 10);
    let mut conn = world.db.connect().await;
    let rows: Vec<Row> = diesel::sql_query("SELECT name FROM stripe_rate_budget ORDER BY name")
        .load(&mut conn)
        .await
        .unwrap();
    let names = rows
        .into_iter()
        .map(|r| r.name.replace(A, "A").replace(B, "B"))
        .collect();
    (elapsed, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_platform_scope_connected_accounts_share_the_platforms_budget() {
    let (elapsed, rows) = two_accounts_calling(RateLimitScope::Platform).await;
    assert_eq!(rows, ["stripe"]);
    // Ten calls on one budget of 5/s: the last one 1.8 s after the first.
    assert!(elapsed >= Duration::from_millis(1700), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_account_scope_each_connected_account_has_its_own_budget() {
    let (elapsed, rows) = two_accounts_calling(RateLimitScope::Account).await;
    assert_eq!(rows, ["stripe", "stripe:A", "stripe:B"]);
    // Five calls on each of two budgets of 5/s, side by side: the last 0.8 s after the first.
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
}
