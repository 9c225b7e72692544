//! Private infrastructure for the chaos suite: a RabbitMQ node and a PostgreSQL cluster of
//! its own, on their own ports and folders, started from the installed packages, so that
//! stopping and restarting them never disturbs other tests or the machine's own services.
//! The servers themselves live in [`test_support::services`], which `devstack up` uses too.

pub use test_support::services::{PrivatePostgres, PrivateRabbit, ServerTls};

use e2e::{Proc, binaries, free_port};

/// A real fulfill process `fulfill-{i}` for the chaos tests: generous retries (the
/// broker, the database and Stripe misbehave on purpose), Stripe's fake at `stripe`.
/// Returns the process and its base URL.
pub fn fulfill_proc(
    i: u64,
    amqp_url: &str,
    database_url: &str,
    topology_prefix: &str,
    stripe: &str,
    logs: &std::path::Path,
) -> (Proc, String) {
    let port = free_port();
    let p = Proc::start(
        &format!("fulfill-{i}"),
        &binaries().join("fulfill"),
        &[],
        &[
            ("DATABASE_URL", database_url.to_owned()),
            ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.into()),
            ("STRIPE_API_BASE", stripe.to_owned()),
            ("STRIPE_RATE_LIMIT", "1000".into()),
            ("STRIPE_TIMEOUT_MS", "1500".into()),
            ("STRIPE_BACKOFF_BASE_MS", "50".into()),
            ("FULFILL_ADDR", format!("127.0.0.1:{port}")),
            ("FULFILL_MAX_ATTEMPTS", "1000".into()),
            ("FULFILL_RETRY_BASE_MS", "200".into()),
            ("FULFILL_RETRY_MAX_MS", "2000".into()),
            ("FULFILL_CONCURRENCY", "16".into()),
            ("AMQP_URL", amqp_url.to_owned()),
            ("AMQP_TOPOLOGY_PREFIX", topology_prefix.to_owned()),
        ],
        logs,
    );
    (p, format!("http://127.0.0.1:{port}"))
}

/// `(sessions credited twice, purchase entries)` from the ledger at `url`.
///
/// # Panics
/// When the database cannot be read (a failed test).
pub async fn ledger_counts(url: &str) -> (i64, i64) {
    use diesel::{QueryableByName, sql_query, sql_types::BigInt};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut db = AsyncPgConnection::establish(url)
        .await
        .expect("the test database");
    let doubled: Count = sql_query(
        "SELECT count(*) AS n FROM (SELECT stripe_session_id FROM ledger_entries \
         WHERE reason = 'purchase' GROUP BY stripe_session_id HAVING count(*) > 1) d",
    )
    .get_result(&mut db)
    .await
    .expect("doubled sessions");
    let credited: Count =
        sql_query("SELECT count(*) AS n FROM ledger_entries WHERE reason = 'purchase'")
            .get_result(&mut db)
            .await
            .expect("purchase entries");
    (doubled.n, credited.n)
}
