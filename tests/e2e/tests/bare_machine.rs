//! `devstack up` on machines unlike CI's: RabbitMQ and PostgreSQL installed but not
//! answering on the configured addresses (stopped, or the port taken by something else) —
//! where the README's first command and walkthrough must run as printed — and not
//! installed at all.

#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command, time::Duration};

use e2e::{
    binaries,
    devstack::{LeftoverGuard, Up, binary_command, processes_using},
    free_port, log_dir,
    walkthrough::{self, checked_steps, first_command},
};
use test_support::services::{port_open, service_dir};

/// A port in `line` after `127.0.0.1:`.
fn port_in(line: &str) -> u16 {
    let at = line.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn balance(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Where the private servers keep their data: under `data`, or (root in a folder other
/// users cannot enter, e.g. a `mktemp -d` clone) the folders `service_dir` moved them to.
fn server_dirs(data: &Path) -> Vec<std::path::PathBuf> {
    vec![
        data.to_path_buf(),
        service_dir(data, "rabbitmq").unwrap(),
        service_dir(data, "postgres").unwrap(),
    ]
}

fn left_running(data: &Path) -> Vec<u32> {
    server_dirs(data)
        .iter()
        .flat_map(|d| processes_using(d))
        .collect()
}

/// Ctrl-C; everything stops: the services, and the private servers (ports closed, no
/// process left running from the data folders).
fn stop_everything(up: &mut Up, data: &Path, ports: &[u16]) {
    let status = up.interrupt();
    assert!(status.success(), "{status:?}\n{}", up.output());
    for line in [
        "private RabbitMQ stopped",
        "private PostgreSQL stopped",
        "stack stopped",
    ] {
        assert!(
            up.seen.iter().any(|l| l.contains(line)),
            "no {line:?}:\n{}",
            up.output()
        );
    }
    for port in ports {
        assert!(!port_open(*port), "port {port} still open after Ctrl-C");
    }
    // Exiting is not being left behind: a server's last process may take a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !left_running(data).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        left_running(data),
        Vec::<u32>::new(),
        "processes left running from {}",
        data.display()
    );
}

/// The README's promise on a machine with the packages installed but nothing running:
/// its first command brings the stack up on private servers and the walkthrough runs as
/// printed; the servers keep their data until `--fresh`, and Ctrl-C leaves nothing behind.
#[test]
fn with_nothing_answering_the_readme_runs_on_private_servers_that_keep_their_data() {
    binaries();
    let readme = walkthrough::readme();
    let steps = checked_steps(&readme);
    let data = log_dir("bare-machine").join("data");
    let _leftovers = LeftoverGuard(data.clone());
    // The configured AMQP port belongs to something that never speaks AMQP; nothing at all
    // listens on the PostgreSQL one.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let amqp_port = squatter.local_addr().unwrap().port();
    let pg_port = free_port();
    let ingest_port = free_port();
    let fulfill_port = free_port();
    let env = vec![
        ("INGEST_ADDR", format!("127.0.0.1:{ingest_port}")),
        ("FULFILL_ADDR", format!("127.0.0.1:{fulfill_port}")),
        ("FAKE_STRIPE_ADDR", format!("127.0.0.1:{}", free_port())),
        (
            "AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"),
        ),
        (
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{pg_port}/bare_machine"),
        ),
        ("DEVSTACK_DATA_DIR", data.display().to_string()),
    ];
    // The README's first command (`cargo run -p devstack -- up`), pasted as printed, as
    // the walkthrough's lines are: cargo builds devstack and runs it with `up`.
    let readme_up = || walkthrough::shell(&first_command(&readme), &env);
    let up_once = |command: Command| {
        let up = Up::start(command);
        let rabbit = up
            .seen
            .iter()
            .find(|l| l.starts_with("RabbitMQ: private node"))
            .map(|l| port_in(l))
            .unwrap_or_else(|| panic!("no private RabbitMQ:\n{}", up.output()));
        let pg = up
            .seen
            .iter()
            .find(|l| l.starts_with("PostgreSQL: private cluster"))
            .map(|l| port_in(l))
            .unwrap_or_else(|| panic!("no private PostgreSQL:\n{}", up.output()));
        assert_ne!(
            rabbit, amqp_port,
            "the taken port is replaced by a free one"
        );
        assert_eq!(pg, pg_port, "the configured port is used when free");
        assert!(
            service_dir(&data, "rabbitmq").unwrap().is_dir()
                && service_dir(&data, "postgres")
                    .unwrap()
                    .join("data")
                    .is_dir()
        );
        // The banner names both as private, at the ports they run on.
        for (name, port) in [("RabbitMQ", rabbit), ("Postgres", pg)] {
            assert!(
                up.seen.iter().any(|l| l.trim_start().starts_with(name)
                    && l.contains(&format!("127.0.0.1:{port}/"))
                    && l.ends_with("(private)")),
                "{name} not shown as private at {port}:\n{}",
                up.output()
            );
        }
        (up, vec![rabbit, pg, ingest_port, fulfill_port])
    };
    let devstack = |args: &[&str]| binary_command(args, &env).output().unwrap();

    let (mut up, ports) = up_once(readme_up());
    // A second `up` on the same data refuses, and leaves the first one alone.
    let second = devstack(&["up"]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another devstack up"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    walkthrough::run(&steps, &env);
    // The events tail finds the private broker through the running stack's file.
    assert!(
        std::fs::read_to_string(data.join("running.env"))
            .unwrap()
            .contains(&format!("127.0.0.1:{}", ports[0]))
    );
    stop_everything(&mut up, &data, &ports);

    // Tomorrow: the same command, the same data, the balance the walkthrough left.
    let (mut up, ports) = up_once(readme_up());
    let out = devstack(&["trigger", "debit", "--user", "alice", "--amount", "1"]);
    let text = balance(&out);
    assert!(
        text.contains("balance of alice before: 20 credits")
            && text.contains("balance of alice after: 19 credits"),
        "{text}"
    );
    stop_everything(&mut up, &data, &ports);

    // --fresh: empty data, nothing left of it.
    let (mut up, ports) = up_once(binary_command(&["up", "--fresh"], &env));
    let out = devstack(&["trigger", "grant", "--user", "alice", "--amount", "2"]);
    let text = balance(&out);
    assert!(
        text.contains("balance of alice before: 0 credits")
            && text.contains("balance of alice after: 2 credits"),
        "{text}"
    );
    stop_everything(&mut up, &data, &ports);
    drop(squatter);
}

#[test]
fn without_the_packages_up_says_what_to_install_and_starts_nothing() {
    binaries();
    let dir = log_dir("no-packages");
    let data = dir.join("data");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    // RabbitMQ installed (on PATH) but not PostgreSQL; then neither.
    let rabbit_only = dir.join("rabbit-only");
    std::fs::create_dir_all(&rabbit_only).unwrap();
    for program in ["rabbitmq-server", "rabbitmqctl"] {
        let _ =
            std::os::unix::fs::symlink(format!("/usr/sbin/{program}"), rabbit_only.join(program));
    }
    let ingest_port = free_port();
    for (path, missing) in [(&rabbit_only, 1), (&empty, 2)] {
        let out = Command::new(binaries().join("devstack"))
            .arg("up")
            .env_clear()
            .env("PATH", path)
            .env("DEVSTACK_NO_BUILD", "1")
            .env("POSTGRES_INSTALL_ROOTS", &empty)
            .env("DEVSTACK_DATA_DIR", &data)
            .env("INGEST_ADDR", format!("127.0.0.1:{ingest_port}"))
            .env(
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()),
            )
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let postgres: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("PostgreSQL:"))
            .collect();
        assert_eq!(postgres.len(), 1, "{stderr}");
        assert!(
            postgres[0].contains("sudo apt-get install postgresql")
                && postgres[0].contains("brew install postgresql@15"),
            "{stderr}"
        );
        let rabbit: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("RabbitMQ:"))
            .collect();
        assert_eq!(rabbit.len(), missing - 1, "{stderr}");
        if missing == 2 {
            assert!(
                rabbit[0].contains("sudo apt-get install rabbitmq-server")
                    && rabbit[0].contains("brew install rabbitmq "),
                "{stderr}"
            );
        }
        assert!(
            stderr.contains("docker compose --profile dev up"),
            "{stderr}"
        );
        // Nothing half-started: no server folder, no process, no service.
        assert!(!data.join("rabbitmq").exists() && !data.join("postgres").exists());
        assert_eq!(processes_using(&data), Vec::<u32>::new());
        assert!(!port_open(ingest_port));
    }
}
