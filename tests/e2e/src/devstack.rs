//! `devstack` as a newcomer runs it: `up` in a process group of its own (so a test can
//! send it Ctrl-C as a terminal does, to the whole group), its output read line by line.

use std::{
    io::BufRead,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use test_support::{broker::TestBroker, db::TestDb};

use crate::{binaries, free_port, workspace};

/// Kills a whole process group when the test ends, passed or failed.
pub struct GroupGuard(pub u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// The variables that give a `devstack up` its own ports, database, queue prefix and
/// data folder, beside the machine's RabbitMQ and PostgreSQL.
pub fn isolated_env(broker: &TestBroker, db: &TestDb, data: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("INGEST_ADDR", format!("127.0.0.1:{}", free_port())),
        ("FULFILL_ADDR", format!("127.0.0.1:{}", free_port())),
        ("FAKE_STRIPE_ADDR", format!("127.0.0.1:{}", free_port())),
        ("DATABASE_URL", db.url.clone()),
        ("AMQP_URL", broker.url.clone()),
        ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
        ("DEVSTACK_DATA_DIR", data.display().to_string()),
    ]
}

/// A README command (`cargo run -q -p devstack -- …`) with `env`, from the workspace root.
pub fn readme_command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace())
        .args(["run", "-q", "-p", "devstack", "--"])
        .args(args);
    with_env(&mut c, env);
    c
}

/// The built `devstack` binary with `env` (no cargo in between, no build).
pub fn binary_command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(binaries().join("devstack"));
    c.current_dir(workspace())
        .args(args)
        .env("DEVSTACK_NO_BUILD", "1");
    with_env(&mut c, env);
    c
}

fn with_env(c: &mut Command, env: &[(&str, String)]) {
    c.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("STRIPE_SECRET_KEY")
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
}

/// A running `devstack up`.
pub struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Everything it printed so far (stdout and stderr).
    pub seen: Vec<String>,
    _group: GroupGuard,
}

impl Up {
    /// Spawns `command` in a new process group and waits for the banner's last line.
    pub fn start(mut command: Command) -> Self {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().expect("spawn devstack up");
        let group = GroupGuard(child.id());
        let (tx, lines) = mpsc::channel::<String>();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut up = Self {
            child,
            lines,
            seen: Vec::new(),
            _group: group,
        };
        up.wait_for("Ctrl-C stops everything.", Duration::from_secs(300));
        up
    }

    /// Reads output until a line contains `text`; panics (with the output) when `up` exits
    /// first or `timeout` passes.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l.contains(text)) {
            assert!(
                Instant::now() < deadline,
                "devstack up printed no {text:?} within {timeout:?}:\n{}",
                self.output()
            );
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.seen.push(line);
            } else if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                panic!("devstack up exited ({status}):\n{}", self.output());
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(300)) {
            self.seen.push(line);
        }
    }

    pub fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// Ctrl-C, as a terminal sends it: SIGINT to the whole process group. Waits for the
    /// exit (60 s at most) and the last output.
    pub fn interrupt(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-s", "INT", "--", &format!("-{}", self.child.id())])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                return status;
            }
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line);
            }
            assert!(
                Instant::now() < deadline,
                "devstack did not stop after Ctrl-C:\n{}",
                self.output()
            );
        }
    }
}

/// The pids of the processes whose command line mentions `path` (private servers run
/// from a data folder name it).
pub fn processes_using(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

/// Kills (by pid) whatever still runs from `path` when the test ends, passed or failed.
pub struct LeftoverGuard(pub std::path::PathBuf);

impl Drop for LeftoverGuard {
    fn drop(&mut self) {
        for pid in processes_using(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}
