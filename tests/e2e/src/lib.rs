//! Running the real binaries as processes, for the end-to-end (and later chaos) suites.
//!
//! [`binaries`] builds them once per test run with the cargo that runs the tests;
//! [`Proc`] is a child process with its output in a log file, stopped with SIGTERM
//! (or SIGKILL on drop); [`devstack`] runs `devstack up` as a newcomer does;
//! [`walkthrough`] reads the README's first command and walkthrough and pastes them.

pub mod devstack;
pub mod walkthrough;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Folder of the built binaries (next to this test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile folder")
        .to_path_buf()
}

/// Builds ingest, fulfill, fake-stripe and devstack once; returns their folder.
pub fn binaries() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args([
                "build",
                "-q",
                "--bin",
                "ingest",
                "--bin",
                "fulfill",
                "--bin",
                "fake-stripe",
                "--bin",
                "devstack",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        bin_dir()
    })
}

pub use test_support::free_port;

/// A running child process whose stdout and stderr go to a log file.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `program` with exactly `env` on top of a minimal environment.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("RUST_LOG", "info,lapin=warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            log,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status();
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal("-TERM");
        self.wait(timeout)
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh folder for logs, under the target directory.
pub fn log_dir(test: &str) -> PathBuf {
    let dir = bin_dir()
        .join("e2e-logs")
        .join(format!("{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// Waits for `url` to answer 2xx.
pub async fn wait_ok(client: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    test_support::wait_for(timeout, || async {
        let r = client.get(url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await
    .is_some()
}

/// Starts the `fake-stripe` binary (demo catalogue seeded) on a free port and waits for
/// it; returns the process and its base URL.
pub async fn start_fake_stripe(client: &reqwest::Client, log_dir: &Path) -> (Proc, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let process = Proc::start(
        "fake-stripe",
        &binaries().join("fake-stripe"),
        &[],
        &[
            ("FAKE_STRIPE_ADDR", format!("127.0.0.1:{port}")),
            ("FAKE_STRIPE_SEED", "1".into()),
        ],
        log_dir,
    );
    assert!(
        wait_ok(
            client,
            &format!("{url}/_fake/knobs"),
            Duration::from_secs(20)
        )
        .await,
        "fake-stripe did not start"
    );
    (process, url)
}
