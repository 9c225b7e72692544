//! The README as a newcomer reads it: its first command (the one that brings the stack up)
//! and its walkthrough ("Your first purchase", "Money going back", "Spending"), every line
//! of each block marked `<!-- walkthrough -->`. [`run`] pastes each line into a shell of its
//! own; it must exit 0 — or fail, when the output it shows is an `Error:` — and print the
//! lines shown under it (`…` matching anything), in order.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use crate::workspace;

/// One pasted line and what the README says it prints.
#[derive(Debug)]
pub struct Step {
    pub command: String,
    pub shows: Vec<String>,
}

/// The README, as checked out.
pub fn readme() -> String {
    std::fs::read_to_string(workspace().join("README.md")).expect("README.md")
}

/// The README's first command: the first line of the first `sh` block under "## Two
/// commands", without its `# …` comment.
pub fn first_command(readme: &str) -> String {
    let (_, section) = readme
        .split_once("\n## Two commands\n")
        .expect("README has \"## Two commands\"");
    let (_, block) = section
        .split_once("```sh\n")
        .expect("\"## Two commands\" has a ```sh block");
    let line = block.lines().next().unwrap_or_default();
    line.split_once(" #")
        .map_or(line, |(command, _)| command)
        .trim()
        .to_owned()
}

/// The steps of every `<!-- walkthrough -->` block, in README order.
pub fn steps(readme: &str) -> Vec<Step> {
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

/// The walkthrough's steps, once the README is seen to hold its three sections and the
/// steps to cover purchases, money going back and spending.
pub fn checked_steps(readme: &str) -> Vec<Step> {
    for section in [
        "### Your first purchase",
        "### Money going back\n",
        "### Spending\n",
    ] {
        assert!(readme.contains(section), "README has {section:?}");
    }
    let steps = steps(readme);
    assert!(
        steps.iter().any(|s| s.command.contains("trigger refund"))
            && steps.iter().any(|s| s.command.contains("trigger dispute"))
            && steps.iter().any(|s| s.command.contains("trigger capture")),
        "the walkthrough covers purchases, money going back and spending"
    );
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

/// `line` pasted into a shell at the workspace root, with `env` and without the Stripe
/// and API secrets a newcomer does not have; cargo found on `PATH` as a newcomer's shell
/// finds it.
pub fn shell(line: &str, env: &[(&str, String)]) -> Command {
    let cargo_dir = Path::new(env!("CARGO"))
        .parent()
        .expect("cargo's folder")
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(cargo_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let mut c = Command::new("bash");
    c.args(["-c", line])
        .current_dir(workspace())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PATH", path)
        .env_remove("STRIPE_SECRET_KEY")
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env_remove("FULFILL_API_TOKEN")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    c
}

/// Runs every step against the running stack `env` names; panics with the output at the
/// first step that exits otherwise than shown or does not print what is shown.
pub fn run(steps: &[Step], env: &[(&str, String)]) {
    for step in steps {
        let out = shell(&format!("{} 2>&1", step.command), env)
            .output()
            .expect("run bash");
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_walkthrough_and_matches_ids_as_placeholders() {
        let steps = steps(
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

    #[test]
    fn reads_the_first_command_without_its_comment() {
        let readme = "# x\n```sh\nnot this\n```\n\n## Two commands\n\ntext\n\n```sh\ncargo run -p devstack -- up      # runs it\ncargo test\n```\n";
        assert_eq!(first_command(readme), "cargo run -p devstack -- up");
    }

    #[test]
    fn the_readme_starts_with_devstack_up() {
        assert_eq!(first_command(&readme()), "cargo run -p devstack -- up");
    }
}
