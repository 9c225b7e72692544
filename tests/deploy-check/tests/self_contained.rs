//! A clone of this repository stands alone: no tracked file points outside it.
//!
//! Every file `git ls-files` lists is read (binary files skipped) and searched for the
//! folders that exist only beside our own checkouts, and for relative paths
//! (`../…`, in code, manifests, Markdown links or comments alike) that climb above the
//! repository's root from the file's own folder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn tracked_files() -> Vec<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["ls-files", "-z"])
        .output()
        .expect("run git ls-files");
    assert!(
        out.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(files.len() > 50, "git lists only {} files", files.len());
    files
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-/".contains(c)
}

/// Every relative path in `text` that starts with `../` (possibly after `./`), whole.
fn climbing_paths(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("../") {
        let at = from + found;
        let start = text[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| !is_path_char(*c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = text[at..]
            .char_indices()
            .find(|(_, c)| !is_path_char(*c))
            .map_or(text.len(), |(i, _)| at + i);
        let token = &text[start..end];
        // Only paths that begin by climbing (`../x`, `./../x`); `a/../b` stays where it is.
        if token.starts_with("../") || token.starts_with("./../") {
            out.push(token);
        }
        from = end.max(at + 3);
    }
    out
}

/// How far above the repository's root `path`, taken relative to the folder `dir`
/// (itself relative to the root), ends up; 0 when it stays inside.
fn escapes_by(dir: &Path, path: &str) -> usize {
    let mut depth = dir.components().count() as i64;
    let mut lowest = depth;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        lowest = lowest.min(depth);
    }
    usize::try_from(-lowest.min(0)).unwrap_or(0)
}

#[test]
fn no_tracked_file_points_outside_the_repository() {
    let root = repo();
    // Spelled in two halves so that this file does not match itself. The team's folder
    // beside the checkouts is also `shared/`: a climb into a `shared` that is not this
    // repository's own crate (resolved from the file's folder) is the same mistake.
    let forbidden = [["/wo", "rk/"].concat()];
    let sibling = ["..", "/shared"].concat();
    let mut problems = Vec::new();
    for file in tracked_files() {
        let Ok(bytes) = std::fs::read(root.join(&file)) else {
            continue; // deleted in the work tree, not yet committed
        };
        let Ok(text) = String::from_utf8(bytes) else {
            continue; // binary
        };
        for needle in &forbidden {
            for (n, line) in text.lines().enumerate() {
                if line.contains(needle.as_str()) {
                    problems.push(format!("{file}:{}: mentions {needle}: {line}", n + 1));
                }
            }
        }
        let dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        for (n, line) in text.lines().enumerate() {
            for path in climbing_paths(line) {
                if path.contains(&sibling) && !root.join(dir).join(path).exists() {
                    problems.push(format!(
                        "{file}:{}: {path} is no folder of the repository",
                        n + 1
                    ));
                } else if escapes_by(dir, path) > 0 {
                    problems.push(format!("{file}:{}: {path} leaves the repository", n + 1));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "tracked files point outside the repository:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_path_check_sees_climbs_above_the_root_and_only_those() {
    assert_eq!(
        climbing_paths(r#"include_str!("../../tests/x.json") and ../y, a/../b"#),
        ["../../tests/x.json", "../y"]
    );
    let crate_src = Path::new("fulfill/src");
    assert_eq!(escapes_by(crate_src, "../../tests/fixtures/x.json"), 0);
    assert_eq!(escapes_by(crate_src, "../../../elsewhere/x.json"), 1);
    assert_eq!(escapes_by(Path::new(""), "../x"), 1);
    assert_eq!(escapes_by(Path::new("deploy/k8s"), "../API.md"), 0);
    assert_eq!(escapes_by(Path::new("a"), "../../b/../c"), 1);
}
