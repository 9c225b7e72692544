//! `devstack --help` and `devstack <command> --help`, as the README promises: every
//! command (and every kind of `trigger`) answers its `--help` and says what it does.

#![allow(clippy::unwrap_used)]

use std::process::Command;

/// Each command, and a phrase naming what it does that its help must start with.
const COMMANDS: &[(&str, &str)] = &[
    ("up", "Start RabbitMQ and PostgreSQL if nothing answers"),
    (
        "trigger",
        "Play an event or a spending call through the running stack",
    ),
    ("events", "Print every credit event"),
    ("attention", "List the sessions that need an operator"),
    ("trigger purchase", "A paid purchase"),
    ("trigger async-purchase", "An async payment"),
    ("trigger replay", "Deliver an event again"),
    (
        "trigger send",
        "Sign a file's bytes as Stripe would and post them to ingest",
    ),
    ("trigger refund", "Refund a purchase"),
    ("trigger dispute", "Dispute a purchase"),
    ("trigger debit", "Spend credits"),
    ("trigger hold", "Reserve credits"),
    ("trigger capture", "Take (part of) a hold"),
    ("trigger release", "Give a hold back"),
    ("trigger grant", "Give credits as an operator"),
];

/// `devstack <path> --help`: exits 0; its stdout.
fn help(path: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_devstack"))
        .args(path.split_whitespace())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`devstack {path} --help` exited {}:\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The `Commands:` section of a help text: each name with its one-line description
/// (clap's own `help` left out: it is `--help` under another name).
fn listed(help: &str) -> Vec<(String, String)> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let (name, about) = l.trim().split_once(' ')?;
            Some((name.to_owned(), about.trim().to_owned()))
        })
        .filter(|(name, _)| name != "help")
        .collect()
}

#[test]
fn every_command_answers_its_help_with_what_it_does() {
    // Every command there is, found the way a reader finds them: through `--help`.
    let mut found = Vec::new();
    let mut parents = vec![String::new()];
    while let Some(parent) = parents.pop() {
        for (name, about) in listed(&help(&parent)) {
            let path = format!("{parent} {name}").trim().to_owned();
            // Its own help opens with what the listing says it does.
            let own = help(&path);
            let first = own.lines().next().unwrap_or_default();
            assert!(
                !about.is_empty() && first.trim_end_matches('.') == about,
                "`devstack {path} --help` opens with {first:?}, listed as {about:?}"
            );
            parents.push(path.clone());
            found.push((path, about));
        }
    }
    let mut expected: Vec<&str> = COMMANDS.iter().map(|(path, _)| *path).collect();
    let mut found_paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
    expected.sort_unstable();
    found_paths.sort_unstable();
    assert_eq!(
        found_paths, expected,
        "a command without its entry in COMMANDS"
    );
    for (path, action) in COMMANDS {
        let (_, about) = found.iter().find(|(p, _)| p == path).unwrap();
        assert!(
            about.starts_with(action),
            "`devstack {path}` is described as {about:?}, not as {action:?}…"
        );
    }
}
