//! A RabbitMQ node and a PostgreSQL cluster of their own, on their own ports and folders,
//! started from the installed packages: the chaos suite stops and restarts them without
//! disturbing other tests or the machine's own services, and `devstack up` runs them when
//! nothing answers on the configured addresses (keeping their data across runs).
//!
//! Run as root (as CI does), the servers run as their packages' users (`rabbitmq`,
//! `postgres`: PostgreSQL refuses root), so their folders are handed to those users and
//! must be reachable by them (see [`service_dir`]). Run as anyone else, they run as that
//! user, in folders it owns.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Folders whose `*/bin` may hold PostgreSQL's server programs (Debian's
/// `/usr/lib/postgresql/<version>/bin`, Homebrew's `opt/postgresql@<version>/bin`), searched
/// after `PATH`; the variable of that name replaces the list (colon-separated).
pub const POSTGRES_ROOTS_VARIABLE: &str = "POSTGRES_INSTALL_ROOTS";
pub const DEFAULT_POSTGRES_ROOTS: &str = "/usr/lib/postgresql:/opt/homebrew/opt:/usr/local/opt";

/// What installs each server, for the message a machine without them gets.
pub const RABBITMQ_INSTALL: &str =
    "sudo apt-get install rabbitmq-server (Debian/Ubuntu) or brew install rabbitmq (macOS)";
pub const POSTGRES_INSTALL: &str =
    "sudo apt-get install postgresql (Debian/Ubuntu) or brew install postgresql@15 (macOS)";

/// A free TCP port on loopback (free now; bind it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

/// `port` if nothing listens on it and it can be bound, else a free one.
pub fn port_or_free(port: u16) -> u16 {
    if port != 0 && !port_open(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
        port
    } else {
        free_port()
    }
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

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `rabbitmq-server` and `rabbitmqctl`, from `PATH`. Debian's wrappers there accept only
/// root and `rabbitmq`; anyone else runs the scripts they wrap.
pub fn find_rabbitmq() -> Option<(PathBuf, PathBuf)> {
    let found = (on_path("rabbitmq-server")?, on_path("rabbitmqctl")?);
    let wrapped = Path::new("/usr/lib/rabbitmq/bin");
    if !is_root() && wrapped.join("rabbitmq-server").is_file() {
        return Some((wrapped.join("rabbitmq-server"), wrapped.join("rabbitmqctl")));
    }
    Some(found)
}

/// The folder holding `initdb` and `pg_ctl`: on `PATH`, else the newest under the
/// [`POSTGRES_ROOTS_VARIABLE`] folders.
pub fn find_postgres() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = on_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
        && has_both(&dir)
    {
        return Some(dir);
    }
    let roots = std::env::var(POSTGRES_ROOTS_VARIABLE)
        .unwrap_or_else(|_| DEFAULT_POSTGRES_ROOTS.to_owned());
    let mut found: Vec<PathBuf> = roots
        .split(':')
        .filter(|r| !r.is_empty())
        .filter_map(|root| std::fs::read_dir(root).ok())
        .flat_map(|entries| entries.filter_map(Result::ok))
        .map(|e| e.path().join("bin"))
        .filter(|bin| has_both(bin))
        .collect();
    // "9.6" < "15": compare the version numbers in the folder names, not the text.
    found.sort_by_key(|bin| {
        let name = bin
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok())
            .collect::<Vec<_>>()
    });
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn chown(path: &Path, owner: &str) -> io::Result<()> {
    let status = Command::new("chown")
        .args(["-R", owner])
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "chown {owner} {} failed",
            path.display()
        )))
    }
}

/// Runs a short command, its output discarded; an error names it when it fails.
fn run(command: &mut Command, what: &str) -> io::Result<()> {
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| io::Error::other(format!("cannot run {what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what} failed ({status})")))
    }
}

/// The folder `name` under `parent` for a server: `parent/name` when a server running as
/// another user can reach it (every folder above lets others through, or we are not root),
/// else a folder under the system's temporary folder, the same for the same `parent` (a
/// clone under `/root` or a `mktemp -d` folder is closed to others, and the server would
/// never start).
pub fn service_dir(parent: &Path, name: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(parent)?;
    let parent = parent.canonicalize()?;
    let reachable = !is_root()
        || parent
            .ancestors()
            .all(|a| std::fs::metadata(a).map_or(true, |m| m.permissions().mode() & 0o001 != 0));
    let dir = if reachable {
        parent.join(name)
    } else {
        let base = std::env::temp_dir().join("stripe-credits-private");
        std::fs::create_dir_all(&base)?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))?;
        base.join(format!(
            "{name}-{:016x}",
            fnv1a(parent.as_os_str().as_encoded_bytes())
        ))
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A stable hash (the same in every build), for folder names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where and how a private server runs.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The folder above the server's own (`<dir>/rabbitmq`, `<dir>/postgres`).
    pub dir: PathBuf,
    /// The port to listen on; 0 for a free one. Taken ports are replaced by free ones.
    pub port: u16,
    /// Keep the data when stopped (and find it again at the next start), instead of
    /// removing the folder.
    pub keep: bool,
}

impl Launch {
    /// A throwaway server on a free port under `dir`.
    pub fn throwaway(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            port: 0,
            keep: false,
        }
    }
}

/// A RabbitMQ node of its own, run as the `rabbitmq` user under root. Its node name is
/// kept in its folder, so a kept node finds its data again.
pub struct PrivateRabbit {
    pub node: String,
    pub port: u16,
    dir: PathBuf,
    keep: bool,
    server: PathBuf,
    ctl: PathBuf,
    /// Erlang's port mapper was not running before this node started one: stopping the
    /// node stops it too (`epmd -kill` refuses while other nodes use it).
    started_epmd: bool,
}

/// Whether process `pid` still runs (`kill -0`).
fn alive(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether Erlang's port mapper answers (`epmd -names` fails when it does not run).
fn epmd_running() -> bool {
    Command::new("epmd")
        .arg("-names")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl PrivateRabbit {
    /// A throwaway node on a free port under `dir`; panics when it cannot start.
    pub fn start(dir: &Path) -> Self {
        Self::launch(&Launch::throwaway(dir)).expect("private RabbitMQ")
    }

    pub fn launch(launch: &Launch) -> io::Result<Self> {
        let (server, ctl) = find_rabbitmq().ok_or_else(|| {
            io::Error::other(format!(
                "rabbitmq-server is not installed: {RABBITMQ_INSTALL}"
            ))
        })?;
        let port = port_or_free(launch.port);
        let dir = service_dir(&launch.dir, "rabbitmq")?;
        let node_file = dir.join("node");
        let node = match std::fs::read_to_string(&node_file) {
            Ok(node) if launch.keep && !node.trim().is_empty() => node.trim().to_owned(),
            _ => {
                let node = format!("private{}@localhost", free_port());
                std::fs::write(&node_file, &node)?;
                node
            }
        };
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )?;
        if is_root() {
            chown(&dir, "rabbitmq:rabbitmq")?;
        }
        let rabbit = Self {
            node,
            port,
            dir,
            keep: launch.keep,
            server,
            ctl,
            started_epmd: !epmd_running(),
        };
        rabbit.boot()?;
        Ok(rabbit)
    }

    fn boot(&self) -> io::Result<()> {
        let d = &self.dir;
        run(
            Command::new(&self.server)
                .arg("-detached")
                .current_dir(d)
                .env("RABBITMQ_NODENAME", &self.node)
                .env("RABBITMQ_NODE_PORT", self.port.to_string())
                .env("RABBITMQ_DIST_PORT", free_port().to_string())
                .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", d.join("log"))
                .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
                .env("RABBITMQ_PID_FILE", d.join("pid")),
            "rabbitmq-server -detached",
        )?;
        if !wait_port(self.port, true, Duration::from_secs(60)) {
            let _ = self.ctl(&["stop"]);
            return Err(io::Error::other(format!(
                "the private RabbitMQ did not open port {} within 60 s (its log: {})",
                self.port,
                d.join("log").display()
            )));
        }
        // The port opens a moment before logins work.
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    fn ctl(&self, args: &[&str]) -> io::Result<()> {
        run(
            Command::new(&self.ctl).args(["-n", &self.node]).args(args),
            &format!("rabbitmqctl {}", args.join(" ")),
        )
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Where its files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the node (`rabbitmqctl stop`) and waits until its port is closed.
    pub fn try_stop(&self) -> io::Result<()> {
        let mut vm = None;
        if port_open(self.port) {
            vm = self.vm_pid();
            self.ctl(&["stop"])?;
        }
        // The port closes a moment before the Erlang VM has exited.
        if let Some(pid) = vm {
            let deadline = Instant::now() + Duration::from_secs(30);
            while alive(&pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if wait_port(self.port, false, Duration::from_secs(30)) {
            if self.started_epmd {
                let _ = run(Command::new("epmd").arg("-kill"), "epmd -kill");
            }
            Ok(())
        } else {
            Err(io::Error::other("the private RabbitMQ did not stop"))
        }
    }

    pub fn stop(&self) {
        self.try_stop().expect("stop the private RabbitMQ");
    }

    pub fn restart(&self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// Makes this (fresh) node a member of `seed`'s cluster. The nodes share the
    /// `rabbitmq` user's Erlang cookie, as nodes of one machine do.
    pub fn join(&self, seed: &PrivateRabbit) {
        for args in [
            vec!["stop_app"],
            vec!["join_cluster", seed.node.as_str()],
            vec!["start_app"],
        ] {
            self.ctl(&args)
                .unwrap_or_else(|e| panic!("{e} on {}", self.node));
        }
    }

    /// The pid of the node's Erlang VM.
    fn vm_pid(&self) -> Option<String> {
        let out = Command::new(&self.ctl)
            .args(["-n", &self.node, "-q", "eval", "os:getpid()."])
            .output()
            .ok()?;
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_matches('"')
            .to_owned();
        (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
    }

    /// SIGKILL the node's Erlang VM: a crash, no goodbye to the cluster.
    pub fn kill(&self) {
        let pid = self
            .vm_pid()
            .unwrap_or_else(|| panic!("no pid for {}", self.node));
        run(Command::new("kill").args(["-9", &pid]), "kill -9").expect("kill");
        assert!(
            wait_port(self.port, false, Duration::from_secs(30)),
            "killed RabbitMQ still listening"
        );
    }

    /// Boots it again after [`Self::stop`] or [`Self::kill`]; it rejoins its cluster.
    pub fn start_again(&self) {
        self.boot().expect("boot the private RabbitMQ again");
    }

    /// `rabbitmqctl list_queues name leader members` on this node, one row per queue.
    pub fn queue_members(&self) -> Vec<(String, String, Vec<String>)> {
        let out = Command::new(&self.ctl)
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
        let _ = self.try_stop();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A PostgreSQL cluster of its own (initdb on first start), run as `postgres` under root.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    keep: bool,
    /// Extra `-c name=value` server options (TLS), kept across restarts.
    extra_options: String,
}

/// A server certificate and its key (PEM), for [`PrivatePostgres::start_with_tls`].
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl PrivatePostgres {
    /// A throwaway cluster on a free port under `dir`; panics when it cannot start.
    pub fn start(dir: &Path) -> Self {
        Self::launch(&Launch::throwaway(dir), None).expect("private PostgreSQL")
    }

    /// With `ssl=on` and the given certificate: clients choose TLS or not (`hostssl` is not
    /// forced), as a managed service that also answers in clear would.
    pub fn start_with_tls(dir: &Path, tls: &ServerTls) -> Self {
        Self::launch(&Launch::throwaway(dir), Some(tls)).expect("private PostgreSQL")
    }

    /// With extra server options (`-c name=value …`), e.g. a preloaded extension.
    pub fn start_with_options(dir: &Path, options: &str) -> Self {
        Self::launch_with(&Launch::throwaway(dir), None, options).expect("private PostgreSQL")
    }

    pub fn launch(launch: &Launch, tls: Option<&ServerTls>) -> io::Result<Self> {
        Self::launch_with(launch, tls, "")
    }

    fn launch_with(launch: &Launch, tls: Option<&ServerTls>, options: &str) -> io::Result<Self> {
        let bin = find_postgres().ok_or_else(|| {
            io::Error::other(format!(
                "PostgreSQL's initdb and pg_ctl are not installed: {POSTGRES_INSTALL}"
            ))
        })?;
        let dir = service_dir(&launch.dir, "postgres")?;
        let mut extra_options = String::new();
        if let Some(tls) = tls {
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert, &tls.cert_pem)?;
            std::fs::write(&key, &tls.key_pem)?;
            // PostgreSQL refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            extra_options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        if !options.is_empty() {
            extra_options.push(' ');
            extra_options.push_str(options);
        }
        if is_root() {
            chown(&dir, "postgres:postgres")?;
        }
        let pg = Self {
            port: port_or_free(launch.port),
            dir,
            bin,
            keep: launch.keep,
            extra_options,
        };
        let initialised = Path::new(&pg.data()).join("PG_VERSION").is_file();
        if !(launch.keep && initialised) {
            let _ = std::fs::remove_dir_all(pg.data());
            pg.as_postgres(&[
                "initdb",
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ])?;
        }
        pg.boot()?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs, as `postgres` when we are root.
    fn as_postgres(&self, args: &[&str]) -> io::Result<()> {
        let program = self.bin.join(args[0]);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        run(command.args(&args[1..]), args[0])
    }

    fn boot(&self) -> io::Result<()> {
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
        ])
        .map_err(|e| io::Error::other(format!("{e} (the server's log: {log})")))
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Where its files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A clean stop (`fast`: sessions are closed, committed data is on disk).
    pub fn try_shutdown(&self) -> io::Result<()> {
        self.pg_stop("fast")
    }

    fn pg_stop(&self, mode: &str) -> io::Result<()> {
        if !port_open(self.port) {
            return Ok(());
        }
        self.as_postgres(&["pg_ctl", "-D", &self.data(), "-m", mode, "-w", "stop"])
    }

    /// Stops abruptly (`immediate`: like a crash, in-flight transactions are lost).
    pub fn stop(&self) {
        self.pg_stop("immediate")
            .expect("stop the private PostgreSQL");
    }

    pub fn restart(&self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.boot().expect("boot the private PostgreSQL again");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_stop(if self.keep { "fast" } else { "immediate" });
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_hash_is_the_same_in_every_build() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_taken_port_is_replaced_by_a_free_one() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        assert_ne!(port_or_free(port), port);
        drop(taken);
        assert_eq!(port_or_free(port), port);
    }
}
