//! The README's walkthrough ("Your first purchase", "Money going back", "Spending"), run
//! exactly as printed against a stack the README's first command brought up beside the
//! machine's running RabbitMQ and PostgreSQL (isolated: its own database, queue prefix,
//! ports and data folder). On a machine where nothing answers, the same walkthrough runs
//! on private servers: `tests/bare_machine.rs`.

#![allow(clippy::unwrap_used)]

use e2e::{
    binaries,
    devstack::{Up, isolated_env},
    log_dir,
    walkthrough::{self, checked_steps, first_command},
};
use test_support::{broker::TestBroker, db::TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_printed() {
    test_support::init_tracing();
    binaries();
    let readme = walkthrough::readme();
    let steps = checked_steps(&readme);

    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let data = log_dir("walkthrough").join("data");
    let env = isolated_env(&broker, &db, &data);
    let mut up = Up::start(walkthrough::shell(&first_command(&readme), &env));
    // Where the broker and database answer, `up` uses them as they are.
    assert!(
        up.seen
            .iter()
            .any(|l| l.contains("RabbitMQ") && l.contains("(configured)"))
            && up
                .seen
                .iter()
                .any(|l| l.contains("Postgres") && l.contains("(configured)")),
        "{}",
        up.output()
    );

    walkthrough::run(&steps, &env);

    let status = up.interrupt();
    assert!(status.success(), "{status:?}\n{}", up.output());
    assert!(
        up.seen.iter().any(|l| l.contains("stack stopped")),
        "{}",
        up.output()
    );
}
