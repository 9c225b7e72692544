//! The pool's connections live on the runtime that made the pool, wherever the checkout
//! that opened one ran (an HTTP worker has a runtime of its own).

use diesel_async::RunQueryDsl;
use test_support::db::TestDb;

#[derive(diesel::QueryableByName)]
struct Backend {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// The server process serving the connection the pool hands out.
async fn backend(pool: &fulfill::db::Pool) -> Result<i32, String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Backend>(&mut conn)
        .await
        .map(|b| b.pid)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_from_another_runtime_outlives_that_runtime() {
    let db = TestDb::new().await;
    let url = secrecy::SecretString::from(db.url.clone());
    // One connection: the one opened below is the one used afterwards.
    let pool = fulfill::db::pool(&url, 1);
    let other = pool.clone();
    // A runtime of its own on a thread of its own, as an HTTP worker has: the checkout
    // there opens the pool's only connection; then that runtime is gone.
    let opened = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let opened = runtime.block_on(backend(&other));
        drop(runtime);
        opened
    })
    .join()
    .unwrap();
    let opened = opened.unwrap();
    // Had the connection been opened on the worker's runtime, its socket and the task
    // driving it would have gone with that runtime: the pool would find it broken and
    // open another (another server process).
    let reused = tokio::time::timeout(std::time::Duration::from_secs(10), backend(&pool))
        .await
        .expect("the statement came back");
    assert_eq!(reused, Ok(opened), "the same connection, reused");
}
