//! The README's walkthrough ("Your first purchase", "Money going back", "Spending"), run
//! exactly as printed: every line of each block marked `<!-- walkthrough -->`, one shell
//! each, against the README's own `devstack up` (isolated: its own database, queue prefix,
//! ports and data folder). Each line must exit 0 — or fail, when the output it shows is an
//! `Error:` — and print the lines shown under it (`…` matching anything), in order.

#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

use e2e::{
    binaries,
    devstack::{Up, isolated_env, readme_command},
    log_dir, workspace,
};
use test_support::{broker::TestBroker, db::TestDb};

/// One pasted line and what the README says it prints.
struct Step {
    command: String,
    shows: Vec<String>,
}

/// The steps of every `<!-- walkthrough -->` block, in README order.
fn walkthrough(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- walkthrough -->" {
            continue;
        }
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "a walkthrough block is ```sh"
        );
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            if let Some(shown) = line.strip_prefix("# ") {
                steps
                    .last_mut()
                    .expect("a shown line follows a command")
                    .shows
                    .push(shown.to_owned());
            } else if !line.trim().is_empty() {
                steps.push(Step {
                    command: line.to_owned(),
                    shows: Vec::new(),
                });
            }
        }
    }
    steps
}

/// Whether `line` holds `pattern`'s pieces between its `…`, in order.
fn matches(pattern: &str, line: &str) -> bool {
    let mut rest = line;
    for piece in pattern.split('…') {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// The shown lines, each matched by a later output line than the one before.
fn shown_in_order<'a>(shows: &'a [String], output: &str) -> Result<(), &'a str> {
    let mut out = output.lines();
    for shown in shows {
        if !out.by_ref().any(|line| matches(shown, line)) {
            return Err(shown);
        }
    }
    Ok(())
}

#[test]
fn reads_the_walkthrough_and_matches_ids_as_placeholders() {
    let steps = walkthrough(
        "x\n<!-- walkthrough -->\n```sh\ncmd one\n# session cs_…: ok\n# balance: 2\n\ncmd two\n```\n```sh\nnot this\n```\n",
    );
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].command, "cmd one");
    assert_eq!(steps[0].shows, ["session cs_…: ok", "balance: 2"]);
    assert!(steps[1].shows.is_empty());
    assert!(matches("session cs_…: ok", "session cs_test_9x: ok"));
    assert!(!matches("session cs_…: ok", "session evt_1: ok"));
    assert!(shown_in_order(&steps[0].shows, "session cs_1: ok\nbalance: 2").is_ok());
    assert!(shown_in_order(&steps[0].shows, "balance: 2\nsession cs_1: ok").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_printed() {
    test_support::init_tracing();
    binaries();
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let steps = walkthrough(&readme);
    for section in [
        "### Your first purchase",
        "### Money going back\n",
        "### Spending\n",
    ] {
        assert!(readme.contains(section), "README has {section:?}");
    }
    assert!(
        steps.iter().any(|s| s.command.contains("trigger refund"))
            && steps.iter().any(|s| s.command.contains("trigger dispute"))
            && steps.iter().any(|s| s.command.contains("trigger capture")),
        "the walkthrough covers purchases, money going back and spending"
    );

    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let data = log_dir("walkthrough").join("data");
    let env = isolated_env(&broker, &db, &data);
    let mut up = Up::start(readme_command(&["up"], &env));
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

    // The pasted lines find cargo as a newcomer's shell does.
    let cargo_dir = Path::new(env!("CARGO")).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(std::iter::once(cargo_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    for step in &steps {
        let out = Command::new("bash")
            .args(["-c", &format!("{} 2>&1", step.command)])
            .current_dir(workspace())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PATH", &path)
            .env_remove("STRIPE_SECRET_KEY")
            .env_remove("STRIPE_WEBHOOK_SECRET")
            .env_remove("FULFILL_API_TOKEN")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let output = String::from_utf8_lossy(&out.stdout);
        let should_fail = step.shows.iter().any(|s| s.starts_with("Error:"));
        assert_eq!(
            out.status.success(),
            !should_fail,
            "`{}` exited {}:\n{output}",
            step.command,
            out.status
        );
        if let Err(missing) = shown_in_order(&step.shows, &output) {
            panic!(
                "`{}` did not print {missing:?} (in the README's order):\n{output}",
                step.command
            );
        }
    }

    let status = up.interrupt();
    assert!(status.success(), "{status:?}\n{}", up.output());
    assert!(
        up.seen.iter().any(|l| l.contains("stack stopped")),
        "{}",
        up.output()
    );
}
