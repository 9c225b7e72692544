//! What the README says about the code, checked against the code: the events to enable
//! (`stripe listen --events` and the production endpoint) are the ones fulfill's queue is
//! bound to, and the configuration table names exactly the variables the binaries read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

fn consumed() -> BTreeSet<String> {
    shared::topology::consumed_event_types()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_enables_exactly_the_events_fulfill_consumes() {
    let readme = readme();
    let listen = readme
        .split("--events ")
        .nth(1)
        .expect("README has no `stripe listen --events`");
    let listed: BTreeSet<String> = listen
        .split_whitespace()
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, consumed(), "stripe listen --events");
    let endpoint = readme
        .split("**The production webhook endpoint**")
        .nth(1)
        .expect("README says nothing about the production endpoint")
        .split("\n\n")
        .next()
        .unwrap()
        .to_owned();
    for event_type in consumed() {
        assert!(
            endpoint.contains(&format!("`{event_type}`")),
            "the production endpoint paragraph lacks {event_type}"
        );
    }
}

#[test]
fn the_readme_configuration_table_names_the_variables_the_services_read() {
    let readme = readme();
    let table = readme
        .split("## Configuration")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .find(|block| block.trim_start().starts_with("| variable"))
        .expect("no configuration table");
    let mut documented = BTreeSet::new();
    for row in table.lines().skip(2) {
        let first = row.split('|').nth(1).unwrap_or_default();
        for name in first.split(',') {
            let name = name.trim().trim_matches('`');
            if !name.is_empty() && !name.ends_with('*') {
                documented.insert(name.to_owned());
            }
        }
    }
    let read: BTreeSet<String> = ingest::config::variables()
        .into_iter()
        .chain(fulfill::config::variables())
        .map(|v| v.name.to_owned())
        // The tracing variables have their own table, under "Tracing".
        .filter(|name| !name.starts_with("OTEL_") && name != "RUST_LOG")
        .collect();
    let undocumented: Vec<&String> = read.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&read).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "README's table lacks {undocumented:?} and names {unknown:?}, which nothing reads"
    );
}
