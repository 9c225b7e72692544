//! Private infrastructure for the chaos suite: a RabbitMQ node and a PostgreSQL cluster of
//! its own, on their own ports and folders, started from the installed packages, so that
//! stopping and restarting them never disturbs other tests or the machine's own services.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

fn wait_port(port: u16, open: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if port_open(port) == open {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn chown(path: &Path, owner: &str) {
    let status = Command::new("chown")
        .args(["-R", owner])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {owner} {}", path.display());
}

/// A directory for a service that runs as another user (`rabbitmq`, `postgres`): `dir`
/// itself when every folder above it lets others through, else one under the system's
/// temporary folder (a clone in `/root` or a `mktemp -d` folder is closed to others, and
/// the node would never start).
fn service_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let reachable = dir
        .ancestors()
        .skip(1)
        .all(|a| std::fs::metadata(a).map_or(true, |m| m.permissions().mode() & 0o001 != 0));
    let dir = if reachable {
        dir.join(name)
    } else {
        let base = std::env::temp_dir().join("stripe-credits-private");
        std::fs::create_dir_all(&base).expect("private services dir");
        let _ = std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755));
        base.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            e2e::free_port()
        ))
    };
    std::fs::create_dir_all(&dir).expect("service dir");
    dir
}

/// A RabbitMQ node of its own (`chaos-<n>@localhost`), run as the `rabbitmq` user.
pub struct PrivateRabbit {
    pub node: String,
    pub port: u16,
    dir: PathBuf,
}

impl PrivateRabbit {
    pub fn start(dir: &Path) -> Self {
        let port = e2e::free_port();
        let dist_port = e2e::free_port();
        let dir = service_dir(dir, "rabbitmq");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("rabbit config");
        chown(&dir, "rabbitmq:rabbitmq");
        let rabbit = Self {
            node: format!("chaos{port}@localhost"),
            port,
            dir,
        };
        rabbit.env_dist_port(dist_port);
        rabbit.boot();
        rabbit
    }

    fn env_dist_port(&self, dist_port: u16) {
        std::fs::write(self.dir.join("dist_port"), dist_port.to_string()).expect("dist port");
    }

    fn boot(&self) {
        let dist_port = std::fs::read_to_string(self.dir.join("dist_port")).unwrap_or_default();
        let d = &self.dir;
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .current_dir(d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.trim())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        assert!(
            wait_port(self.port, true, Duration::from_secs(60)),
            "private RabbitMQ did not start"
        );
        // The port opens a moment before logins work.
        std::thread::sleep(Duration::from_millis(500));
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn stop(&self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            wait_port(self.port, false, Duration::from_secs(30)),
            "private RabbitMQ did not stop"
        );
    }

    pub fn restart(&self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.boot();
    }

    /// Makes this (fresh) node a member of `seed`'s cluster. The nodes share the
    /// `rabbitmq` user's Erlang cookie, as nodes of one machine do.
    pub fn join(&self, seed: &PrivateRabbit) {
        for args in [
            vec!["stop_app"],
            vec!["join_cluster", seed.node.as_str()],
            vec!["start_app"],
        ] {
            let status = Command::new("rabbitmqctl")
                .args(["-n", &self.node])
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("rabbitmqctl");
            assert!(
                status.success(),
                "rabbitmqctl {args:?} on {} failed",
                self.node
            );
        }
    }

    /// SIGKILL the node's Erlang VM: a crash, no goodbye to the cluster.
    pub fn kill(&self) {
        let out = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "-q", "eval", "os:getpid()."])
            .output()
            .expect("rabbitmqctl eval");
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_matches('"')
            .to_owned();
        assert!(!pid.is_empty(), "no pid for {}", self.node);
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {}", pid.trim());
        assert!(
            wait_port(self.port, false, Duration::from_secs(30)),
            "killed RabbitMQ still listening"
        );
    }

    /// Boots it again after [`Self::stop`] or [`Self::kill`]; it rejoins its cluster.
    pub fn start_again(&self) {
        self.boot();
    }

    /// `rabbitmqctl list_queues name leader members` on this node, one row per queue.
    pub fn queue_members(&self) -> Vec<(String, String, Vec<String>)> {
        let out = Command::new("rabbitmqctl")
            .args([
                "-n",
                &self.node,
                "-q",
                "list_queues",
                "name",
                "leader",
                "members",
            ])
            .output()
            .expect("rabbitmqctl list_queues");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut cols = line.split('\t');
                let name = cols.next()?.to_owned();
                let leader = cols.next()?.to_owned();
                let members = cols
                    .next()
                    .unwrap_or_default()
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect();
                Some((name, leader, members))
            })
            .collect()
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if port_open(self.port) {
            let _ = Command::new("rabbitmqctl")
                .args(["-n", &self.node, "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of its own (initdb into a temporary folder), run as `postgres`.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Extra `-c name=value` server options (TLS), kept across restarts.
    extra_options: String,
}

/// A server certificate and its key (PEM), for [`PrivatePostgres::start_with_tls`].
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl PrivatePostgres {
    pub fn start(dir: &Path) -> Self {
        Self::start_inner(dir, None)
    }

    /// With `ssl=on` and the given certificate: clients choose TLS or not (`hostssl` is not
    /// forced), as a managed service that also answers in clear would.
    pub fn start_with_tls(dir: &Path, tls: &ServerTls) -> Self {
        Self::start_inner(dir, Some(tls))
    }

    fn start_inner(dir: &Path, tls: Option<&ServerTls>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed under /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = service_dir(dir, "postgres");
        let mut extra_options = String::new();
        if let Some(tls) = tls {
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert, &tls.cert_pem).expect("server cert");
            std::fs::write(&key, &tls.key_pem).expect("server key");
            // PostgreSQL refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("key mode");
            extra_options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        chown(&dir, "postgres:postgres");
        let pg = Self {
            port: e2e::free_port(),
            dir,
            bin,
            extra_options,
        };
        pg.as_postgres(&[
            "initdb",
            "-D",
            &pg.data(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        pg.boot();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn as_postgres(&self, args: &[&str]) {
        let program = self.bin.join(args[0]);
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("runuser");
        assert!(status.success(), "{args:?} failed");
    }

    fn boot(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200{}",
            self.port,
            self.dir.display(),
            self.extra_options
        );
        let log = self.dir.join("log").display().to_string();
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "start",
        ]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops abruptly (`immediate`: like a crash, in-flight transactions are lost).
    pub fn stop(&self) {
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    pub fn restart(&self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.boot();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if port_open(self.port) {
            let program = self.bin.join("pg_ctl");
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(program)
                .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
