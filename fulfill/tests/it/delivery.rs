//! However Stripe delivers — twice, concurrently, out of order, stale, to several
//! consumers, with one dying mid-batch, racing the success page — balances come out exact.

use std::time::Duration;

use fake_stripe::{PriceSpec, SessionSpec};
use futures_util::future::join_all;

use crate::helpers::{Options, QUIET, World};

const COMPLETED: &str = "checkout.session.completed";
const SUCCEEDED: &str = "checkout.session.async_payment_succeeded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_bought_twice_credits_exactly_20_whatever_is_replayed() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let c = &world.client;
    let pack = world.price(PriceSpec::credits(10));
    let first = world.session(SessionSpec::paid("buyer", &pack, 1));
    let second = world.session(SessionSpec::paid("buyer", &pack, 1));
    let (id1, body1) = world.deliver(&first, COMPLETED).await;
    let (id2, body2) = world.deliver(&second, COMPLETED).await;
    app.assert_balance_settles(c, "buyer", 20).await;

    for _ in 0..5 {
        world.publish(COMPLETED, &id1, &body1).await;
        world.publish(COMPLETED, &id2, &body2).await;
    }
    // New events for the same sessions (Stripe re-sends with new ids after a resend).
    world.deliver(&first, COMPLETED).await;
    world.deliver(&second, SUCCEEDED).await;
    app.assert_balance_settles(c, "buyer", 20).await;

    let ledger: serde_json::Value = app
        .get(c, "/users/buyer/ledger")
        .await
        .json()
        .await
        .unwrap();
    let entries = ledger.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{ledger}");
    let mut credited: Vec<&str> = entries
        .iter()
        .map(|e| e["stripe_session_id"].as_str().unwrap())
        .collect();
    credited.sort_unstable();
    let mut bought = vec![first.as_str(), second.as_str()];
    bought.sort_unstable();
    assert_eq!(credited, bought);
    for entry in entries {
        assert_eq!(entry["delta"], 10);
        assert_eq!(entry["reason"], "purchase");
        assert!(
            entry["stripe_object_id"]
                .as_str()
                .unwrap()
                .starts_with("pi_")
        );
        assert!(
            entry["stripe_event_id"]
                .as_str()
                .unwrap()
                .starts_with("evt_")
        );
        assert!(entry["created_at"].is_string());
    }
    // Replays of a settled session cost no Stripe call.
    assert_eq!(world.stripe.stats().session_fetches, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_many_times_at_once_credits_once() {
    let world = World::new().await;
    let app = world
        .start(&Options {
            concurrency: 16,
            ..Options::default()
        })
        .await;
    let pack = world.price(PriceSpec::credits(10));
    let session = world.session(SessionSpec::paid("hammered", &pack, 1));
    let (id, body) = world.event(&session, COMPLETED);
    join_all((0..30).map(|_| world.publish(COMPLETED, &id, &body))).await;
    app.assert_balance_settles(&world.client, "hammered", 10)
        .await;
    // Single flight: the concurrent copies waited for the first fetch instead of repeating it.
    assert_eq!(world.stripe.stats().session_fetches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_success_arriving_before_completed_credits_once() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    let session =
        world.session(SessionSpec::paid("early", &pack, 1).with_status("complete", "unpaid"));
    let completed = world.event(&session, COMPLETED); // built while unpaid, delivered late
    world.stripe.update_session(&session, None, Some("paid"));
    world.deliver(&session, SUCCEEDED).await;
    app.wait_state(&world.client, &session, "credited").await;
    world.publish(COMPLETED, &completed.0, &completed.1).await;
    app.assert_balance_settles(&world.client, "early", 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_payload_is_never_trusted() {
    let world = World::new().await;
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    // The event says unpaid; Stripe, asked now, says paid: credit.
    let session =
        world.session(SessionSpec::paid("stale", &pack, 1).with_status("complete", "unpaid"));
    let (id, body) = world.event(&session, COMPLETED);
    world.stripe.update_session(&session, None, Some("paid"));
    world.publish(COMPLETED, &id, &body).await;
    app.assert_balance_settles(&world.client, "stale", 10).await;

    // The event says paid; Stripe, asked now, says expired: credit nothing.
    let other = world.session(SessionSpec::paid("stale2", &pack, 1));
    let (id, body) = world.event(&other, COMPLETED);
    world
        .stripe
        .update_session(&other, Some("expired"), Some("unpaid"));
    world.publish(COMPLETED, &id, &body).await;
    app.wait_state(&world.client, &other, "expired").await;
    assert_eq!(app.balance(&world.client, "stale2").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_consumers_with_shuffled_duplicates_give_exact_balances() {
    let world = World::new().await;
    let a = world.start(&Options::default()).await;
    let b = world.start(&Options::default()).await;
    let c = world.start(&Options::default()).await;
    let single = world.price(PriceSpec::credits(1));
    let pack = world.price(PriceSpec::product_credits(10));
    let mut events = Vec::new();
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..40 {
        let user = format!("user-{}", i % 7);
        let (price, qty, credits) = if i % 2 == 0 {
            (&single, 3, 3)
        } else {
            (&pack, 1, 10)
        };
        let session = world.session(SessionSpec::paid(&user, price, qty));
        *expected.entry(user).or_insert(0) += credits;
        let (id, body) = world.event(&session, COMPLETED);
        for _ in 0..3 {
            events.push((id.clone(), body.clone()));
        }
        events.push(world.event(&session, SUCCEEDED));
    }
    // A deterministic shuffle.
    let n = events.len();
    for i in 0..n {
        events.swap(i, (i * 7919 + 13) % n);
    }
    for (id, body) in &events {
        let event_type = if String::from_utf8_lossy(body).contains(SUCCEEDED) {
            SUCCEEDED
        } else {
            COMPLETED
        };
        world.publish(event_type, id, body).await;
    }
    for (user, credits) in &expected {
        a.assert_balance_settles(&world.client, user, *credits)
            .await;
    }
    for instance in [&b, &c] {
        for (user, credits) in &expected {
            assert_eq!(instance.balance(&world.client, user).await, *credits);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_lost_mid_batch_leaves_its_work_to_another_with_exact_balances() {
    let world = World::new().await;
    // Slow Stripe so that the first consumer holds many deliveries when it dies.
    world.set_knobs(fake_stripe::Knobs {
        latency_ms: 150,
        ..Default::default()
    });
    let doomed = world
        .start(&Options {
            via_proxy: true,
            concurrency: 8,
            ..Options::default()
        })
        .await;
    let price = world.price(PriceSpec::credits(2));
    let mut sessions = Vec::new();
    for _ in 0..30 {
        let s = world.session(SessionSpec::paid("survivor", &price, 1));
        world.deliver(&s, COMPLETED).await;
        sessions.push(s);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    doomed.cut_broker();
    let heir = world.start(&Options::default()).await;
    heir.assert_balance_settles(&world.client, "survivor", 60)
        .await;
    // Every session is credited exactly once in the ledger.
    let ledger: serde_json::Value = heir
        .get(&world.client, "/users/survivor/ledger?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ledger.as_array().unwrap().len(), 30);
    drop(doomed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_success_page_racing_the_webhook_credits_once() {
    let world = World::new().await;
    world.set_knobs(fake_stripe::Knobs {
        latency_ms: 50,
        jitter_ms: 50,
        ..Default::default()
    });
    let app = world.start(&Options::default()).await;
    let pack = world.price(PriceSpec::credits(10));
    for round in 0..5 {
        let user = format!("racer-{round}");
        let session = world.session(SessionSpec::paid(&user, &pack, 1));
        let webhook = async {
            world.deliver(&session, COMPLETED).await;
        };
        let pages = join_all((0..4).map(|_| app.fulfill(&world.client, &session)));
        let ((), results) = tokio::join!(webhook, pages);
        let credited_now = results
            .iter()
            .filter(|(_, b)| b["credited_now"] == true)
            .count();
        for (status, body) in &results {
            assert_eq!(*status, 200, "{body}");
            assert_eq!(body["state"], "credited");
        }
        assert!(credited_now <= 1);
        app.assert_balance_settles(&world.client, &user, 10).await;
    }
    tokio::time::sleep(QUIET).await;
}

/// Acks go out batched (one `multiple` ack for a run of done deliveries, done ones held
/// behind a slow one), yet every delivery is acked once it is done and only once: after
/// a burst of shuffled duplicates with jittery Stripe answers, every delivery was
/// handled once (none came back) and, the consumer stopped, none is left in the queue
/// (an unacked one would have been returned to it when the channel closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acks_settle_every_delivery_exactly_once() {
    let world = World::new().await;
    let app = world
        .start(&Options {
            concurrency: 16,
            ..Options::default()
        })
        .await;
    // Some answers are slow, so deliveries finish out of order.
    world.set_knobs(fake_stripe::Knobs {
        jitter_ms: 40,
        ..fake_stripe::Knobs::default()
    });
    let pack = world.price(PriceSpec::credits(10));
    let mut events = Vec::new();
    for n in 0..40 {
        let session = world.session(SessionSpec::paid(&format!("acked-{n}"), &pack, 1));
        let (id, body) = world.event(&session, COMPLETED);
        for _ in 0..3 {
            events.push((id.clone(), body.clone()));
        }
    }
    // Shuffled: a fixed permutation (stride coprime with the length).
    let n = events.len();
    let shuffled: Vec<_> = (0..n).map(|i| events[(i * 7) % n].clone()).collect();
    join_all(
        shuffled
            .iter()
            .map(|(id, body)| world.publish(COMPLETED, id, body)),
    )
    .await;
    for n in 0..40 {
        app.assert_balance_settles(&world.client, &format!("acked-{n}"), 10)
            .await;
    }
    let handled = crate::helpers::eventually(|| async {
        let handled = handled(&app.metrics(&world.client).await);
        (handled >= n as f64).then_some(handled)
    })
    .await;
    assert_eq!(
        handled, n as f64,
        "deliveries handled (a redelivered one counts twice)"
    );
    app.stop().await.unwrap();
    let left = world
        .broker
        .take(&world.broker.topology.checkout_queue(), QUIET)
        .await;
    assert!(left.is_none(), "a delivery was left unacked: {left:?}");
}

/// Every delivery handled, whatever its outcome: the sum of `fulfill_events_total`.
fn handled(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("fulfill_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The first question of many deliveries in one statement: each gets its own answer, in
/// its place, whether its event was seen and whether its session has a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_look_answers_each_delivery_in_its_place() {
    use fulfill::db::{events, sessions};
    let world = World::new().await;
    let _app = world.start(&Options::default()).await; // migrates the database
    let mut conn = world.db.connect().await;
    events::record(&conn, "evt_seen", COMPLETED, Some("cs_known"), "credited")
        .await
        .unwrap();
    sessions::claim_fetch(&mut conn, "", "cs_known", Duration::from_secs(1))
        .await
        .unwrap();
    let asks = [
        ("evt_new", Some("cs_missing")),
        ("evt_seen", Some("cs_known")),
        ("evt_new_too", None),
        ("evt_seen", None),
        ("evt_new", Some("cs_known")),
    ];
    let looks = sessions::first_look(&mut conn, &asks).await.unwrap();
    let got: Vec<(bool, Option<String>)> = looks
        .into_iter()
        .map(|(seen, row)| (seen, row.map(|r| r.session_id)))
        .collect();
    let known = || Some("cs_known".to_owned());
    assert_eq!(
        got,
        [
            (false, None),
            (true, known()),
            (false, None),
            (true, None),
            (false, known()),
        ]
    );
    assert!(
        sessions::first_look(&mut conn, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

/// The first look probes indexes for each question, however many events are recorded:
/// its generic plan (the one a prepared statement settles on, guessing the arrays'
/// length) never scans a table, nor hashes one whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_look_probes_indexes_never_scans() {
    use diesel_async::RunQueryDsl;
    let world = World::new().await;
    let _app = world.start(&Options::default()).await; // migrates the database
    let mut conn = world.db.connect().await;
    for statement in [
        "INSERT INTO stripe_events (event_id, event_type, outcome) \
         SELECT 'evt_' || g, 'checkout.session.completed', 'credited' FROM generate_series(1, 5000) g"
            .to_owned(),
        "INSERT INTO checkout_sessions (session_id, state) \
         SELECT 'cs_' || g, 'credited' FROM generate_series(1, 5000) g"
            .to_owned(),
        "ANALYZE stripe_events, checkout_sessions".to_owned(),
        "SET plan_cache_mode = force_generic_plan".to_owned(),
        format!(
            "PREPARE first_look (text[], text[]) AS {}",
            fulfill::db::sessions::FIRST_LOOK
        ),
    ] {
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let plan: Vec<Line> =
        diesel::sql_query("EXPLAIN EXECUTE first_look ('{evt_1,evt_none}', '{cs_1,NULL}')")
            .load(&mut conn)
            .await
            .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
    assert!(
        plan.iter().all(|l| !l.contains("Seq Scan")),
        "a table scan in {plan:#?}"
    );
    assert!(
        plan.iter().any(|l| l.contains("stripe_events_pkey"))
            && plan.iter().any(|l| l.contains("checkout_sessions_pkey")),
        "{plan:#?}"
    );
}

/// The fetch leases of many deliveries in one statement: each gets its own claim, in its
/// place; a session asked for twice is claimed once; a held lease is found held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_leases_claimed_together_answer_each_in_its_place() {
    use diesel_async::AsyncConnection;
    use fulfill::db::sessions;
    let world = World::new().await;
    let _app = world.start(&Options::default()).await; // migrates the database
    let mut conn = world.db.connect().await;
    let lease = Duration::from_secs(30);
    sessions::claim_fetch(&mut conn, "", "cs_held", lease)
        .await
        .unwrap();
    let claims = sessions::claim_fetches(
        &mut conn,
        &[
            ("", "cs_b"),
            ("", "cs_held"),
            ("", "cs_a"),
            ("", "cs_b"),
            ("acct_1Other0000000000", "cs_c"),
        ],
        lease,
    )
    .await
    .unwrap();
    let got: Vec<(bool, bool, Option<String>, Option<String>)> = claims
        .iter()
        .map(|c| {
            (
                c.claimed,
                c.inserted,
                c.row.as_ref().map(|r| r.session_id.clone()),
                c.row.as_ref().map(|r| r.account.clone()),
            )
        })
        .collect();
    let row = |id: &str, account: &str| (Some(id.to_owned()), Some(account.to_owned()));
    let claim = |claimed, inserted, (id, account)| (claimed, inserted, id, account);
    assert_eq!(
        got,
        [
            claim(true, true, row("cs_b", "")),
            claim(false, false, row("cs_held", "")),
            claim(true, true, row("cs_a", "")),
            // The second asking finds the first's lease.
            claim(false, false, row("cs_b", "")),
            claim(true, true, row("cs_c", "acct_1Other0000000000")),
        ]
    );
    // A claim's `now` is its lease's identity: the second asking of cs_b, which holds no
    // lease, has a clock reading of its own, after the first's (were they equal, a waiter
    // fetching past the deadline could release the holder's lease, and the stale-view
    // guard could not order their views).
    assert!(claims[3].now > claims[0].now);
    // A claim commits asynchronously, so never inside a transaction (it would make the
    // transaction's commit asynchronous too).
    let refused = conn
        .transaction(async |conn| {
            sessions::claim_fetches(conn, &[("", "cs_d")], lease)
                .await
                .map(|_| ())
        })
        .await;
    assert!(refused.is_err(), "a claim inside a transaction is refused");
    let again = sessions::claim_fetch(&mut conn, "", "cs_d", lease)
        .await
        .unwrap();
    assert!(
        again.claimed && again.inserted,
        "and nothing of it was kept"
    );
}
