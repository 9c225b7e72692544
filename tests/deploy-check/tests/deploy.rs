//! The deployment files agree with the Compose schema and with what the binaries do.
//!
//! Nothing here builds an image or starts a container: the checks read
//! `docker-compose.yml`, `deploy/Dockerfile`, `.dockerignore`, `deploy/k8s/*.yaml` and the
//! `deploy/cluster` overlay (its patches applied by hand), and compare what they set
//! (environment variables, ports, probes, binaries, queue names, mounted files) with what
//! the real binaries say (`--help` lists every variable each one reads), with the
//! constants the crates export (default addresses, shutdown timings, queue names), and
//! with a real start of each service on the port the files configure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Component, Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

// ---------------------------------------------------------------------------------------
// What the binaries and crates say
// ---------------------------------------------------------------------------------------

/// The compose services we build, each with the binary it runs.
const OUR_SERVICES: [(&str, &str); 4] = [
    ("ingest", "ingest"),
    ("fulfill", "fulfill"),
    ("fulfill-stripe", "fulfill"),
    ("fake-stripe", "fake-stripe"),
];

/// Crates whose sources are compiled into our images (for what they embed at build time).
const SOURCE_DIRS: [&str; 4] = ["ingest", "fulfill", "shared", "tests/fake-stripe"];

/// The uid the runtime image runs as (Dockerfile `USER`) and Kubernetes asks for.
const APP_UID: i64 = 10001;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (path relative to the repository, contents) of every `.rs` file of our crates.
fn rust_sources() -> Vec<(PathBuf, String)> {
    let root = repo();
    let mut files = Vec::new();
    for dir in SOURCE_DIRS {
        rs_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 10,
        "found only {} Rust files under {SOURCE_DIRS:?}",
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            (p.strip_prefix(&root).unwrap().to_path_buf(), text)
        })
        .collect()
}

/// The binary a compose service runs.
fn binary_of(service: &str) -> &'static str {
    OUR_SERVICES
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, bin)| *bin)
        .unwrap_or_else(|| panic!("not our service: {service}"))
}

/// What `<binary> --help` prints (the binaries are built once per test run).
fn help(binary: &str) -> String {
    static HELPS: OnceLock<BTreeMap<&'static str, String>> = OnceLock::new();
    let helps = HELPS.get_or_init(|| {
        let dir = e2e::binaries();
        ["ingest", "fulfill", "fake-stripe"]
            .into_iter()
            .map(|bin| {
                let out = Command::new(dir.join(bin))
                    .arg("--help")
                    .env_clear()
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run {bin} --help: {e}"));
                assert!(
                    out.status.success(),
                    "{bin} --help failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                (bin, String::from_utf8(out.stdout).unwrap())
            })
            .collect()
    });
    helps
        .get(binary)
        .unwrap_or_else(|| panic!("not our binary: {binary}"))
        .clone()
}

/// The variables `--help` lists, with the default it shows for each: the lines after
/// "Environment variables:" that read `  NAME  [default]  meaning`.
fn help_variables(binary: &str) -> BTreeMap<String, String> {
    let text = help(binary);
    let list = text
        .split("Environment variables:")
        .nth(1)
        .unwrap_or_else(|| panic!("{binary} --help lists no environment variables:\n{text}"));
    list.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (name, rest) = line.split_once(char::is_whitespace)?;
            let is_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            let default = rest.trim().strip_prefix('[')?.split_once(']')?.0;
            is_name.then(|| (name.to_owned(), default.to_owned()))
        })
        .collect()
}

/// The port of an `ip:port` address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// The default listen address of a binary, as its crate exports it.
fn default_addr(binary: &str) -> &'static str {
    match binary {
        "ingest" => ingest::config::DEFAULT_ADDR,
        "fulfill" => fulfill::config::DEFAULT_ADDR,
        "fake-stripe" => fake_stripe::DEFAULT_ADDR,
        other => panic!("not our binary: {other}"),
    }
}

/// The variable that sets a binary's listen address.
fn addr_variable(binary: &str) -> &'static str {
    match binary {
        "ingest" => ingest::config::INGEST_ADDR,
        "fulfill" => fulfill::config::FULFILL_ADDR,
        "fake-stripe" => fake_stripe::ADDR_VARIABLE,
        other => panic!("not our binary: {other}"),
    }
}

/// The default port of the binary a compose service (or k8s Deployment) runs.
fn default_port(service: &str) -> u16 {
    port_of(default_addr(binary_of(service)))
}

#[test]
fn each_binary_lists_its_variables_in_help_with_the_defaults_its_crate_exports() {
    let crate_lists = [
        ("ingest", ingest::config::variables()),
        ("fulfill", fulfill::config::variables()),
    ];
    for (binary, variables) in crate_lists {
        let listed = help_variables(binary);
        let expected: BTreeMap<String, String> = variables
            .iter()
            .map(|v| (v.name.to_owned(), v.default.to_owned()))
            .collect();
        assert_eq!(listed, expected, "{binary} --help");
        assert_eq!(
            listed.get(addr_variable(binary)).map(String::as_str),
            Some(default_addr(binary)),
            "{binary}: the default address --help shows"
        );
    }
    let fake = help_variables("fake-stripe");
    assert_eq!(
        fake.get(fake_stripe::ADDR_VARIABLE).map(String::as_str),
        Some(fake_stripe::DEFAULT_ADDR)
    );
    // The parsing itself can fail: a made-up name is not listed.
    assert!(!help_variables("ingest").contains_key("INGEST_NO_SUCH_SETTING"));
    // fulfill's subcommands are what the deploy files run.
    let fulfill = help("fulfill");
    for command in ["serve", "migrate", "reconcile", "dlq"] {
        assert!(
            fulfill
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "fulfill --help lists no `{command}` subcommand:\n{fulfill}"
        );
    }
}

/// Binaries of the workspace's members, as cargo sees them: package name -> binary names.
fn workspace_binaries() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .current_dir(repo())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Json = serde_json::from_slice(&out.stdout).unwrap();
    let mut binaries = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let bins: BTreeSet<String> = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        binaries.insert(package["name"].as_str().unwrap().to_owned(), bins);
    }
    binaries
}

// ---------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------

/// docker-compose.yml as Compose reads it: YAML merge keys (`<<: *fulfill`) applied.
fn compose() -> Yaml {
    let mut compose: Yaml = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    compose
}

fn services(compose: &Yaml) -> &serde_yaml::Mapping {
    compose["services"].as_mapping().unwrap()
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

fn str_of(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// `environment:` as a map or as a list of `NAME=value`.
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Null => BTreeMap::new(),
        Yaml::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                (
                    str_of(k),
                    if v.is_null() {
                        String::new()
                    } else {
                        str_of(v)
                    },
                )
            })
            .collect(),
        Yaml::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = str_of(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("unexpected environment {other:?}"),
    }
}

/// `build.args` as a map or a list of `NAME=value`.
fn build_args(service: &Yaml) -> BTreeMap<String, String> {
    match &service["build"]["args"] {
        Yaml::Mapping(map) => map.iter().map(|(k, v)| (str_of(k), str_of(v))).collect(),
        Yaml::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = str_of(item);
                let (k, v) = item.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct PortMapping {
    host_ip: Option<String>,
    published: Option<u16>,
    target: u16,
}

fn port_mappings(service: &Yaml) -> Vec<PortMapping> {
    let Some(ports) = service["ports"].as_sequence() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|port| match port {
            Yaml::Mapping(_) => PortMapping {
                host_ip: port.get("host_ip").map(str_of),
                published: port
                    .get("published")
                    .map(str_of)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse().unwrap()),
                target: str_of(&port["target"]).parse().unwrap(),
            },
            scalar => {
                let text = str_of(scalar);
                let text = text.split('/').next().unwrap();
                let parts: Vec<&str> = text.split(':').collect();
                let number = |s: &str| (!s.is_empty()).then(|| s.parse::<u16>().unwrap());
                match parts.as_slice() {
                    [target] => PortMapping {
                        host_ip: None,
                        published: None,
                        target: target.parse().unwrap(),
                    },
                    [host, target] => PortMapping {
                        host_ip: None,
                        published: number(host),
                        target: target.parse().unwrap(),
                    },
                    [ip, host, target] => PortMapping {
                        host_ip: Some((*ip).to_owned()),
                        published: number(host),
                        target: target.parse().unwrap(),
                    },
                    _ => panic!("cannot read port {text:?}"),
                }
            }
        })
        .collect()
}

/// The healthcheck command as one string (`CMD`/`CMD-SHELL` list or a plain string).
fn healthcheck_command(service: &Yaml) -> Option<String> {
    match &service["healthcheck"]["test"] {
        Yaml::Null => None,
        Yaml::Sequence(items) => Some(items.iter().map(str_of).collect::<Vec<_>>().join(" ")),
        other => Some(str_of(other)),
    }
}

/// Port and path of a bash `/dev/tcp/HOST/PORT` + `GET /path` health check.
fn healthcheck_target(command: &str) -> (u16, String) {
    let after = command
        .split("/dev/tcp/")
        .nth(1)
        .unwrap_or_else(|| panic!("health check does not use /dev/tcp: {command}"));
    let port: String = after
        .split('/')
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let path = command
        .split("GET ")
        .nth(1)
        .unwrap_or_else(|| panic!("health check sends no GET: {command}"))
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    (port.parse().unwrap(), path)
}

#[test]
fn the_compose_file_validates_against_the_compose_specification_schema() {
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/compose-spec.json");
    let schema: Json = serde_json::from_str(&fs::read_to_string(&schema_path).unwrap()).unwrap();
    let validator = jsonschema::draft7::new(&schema).unwrap();

    let instance = serde_json::to_value(compose()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "docker-compose.yml does not match the schema:\n{}",
        errors.join("\n")
    );

    // The schema really is in force: a misspelt key and a wrong type are rejected.
    let mut broken = instance.clone();
    broken["services"]["fulfill"]["depends_on"]["postgres"]["condition"] =
        Json::from("service_heathy");
    assert!(
        !validator.is_valid(&broken),
        "the schema let a bad depends_on condition through"
    );
    let mut broken = instance;
    broken["services"]["ingest"]["healthcheck"]["retires"] = Json::from(3);
    assert!(
        !validator.is_valid(&broken),
        "the schema let an unknown healthcheck key through"
    );
}

#[test]
fn our_compose_services_are_built_from_the_one_dockerfile_with_the_repository_as_context() {
    let compose = compose();
    let built: BTreeSet<String> = services(&compose)
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .map(|(k, _)| str_of(k))
        .collect();
    assert_eq!(
        built,
        OUR_SERVICES.iter().map(|(s, _)| (*s).to_owned()).collect()
    );

    for (name, _) in OUR_SERVICES {
        let build = &service(&compose, name)["build"];
        assert_eq!(str_of(&build["context"]), ".", "{name}: build context");
        assert_eq!(
            str_of(&build["dockerfile"]),
            "deploy/Dockerfile",
            "{name}: dockerfile"
        );
        assert!(
            build["additional_contexts"].is_null(),
            "{name}: the repository alone is the build context"
        );
        assert!(
            service(&compose, name)["container_name"].is_null(),
            "{name}: container_name blocks --scale"
        );
    }
    assert_eq!(
        service(&compose, "fake-stripe")["profiles"],
        serde_yaml::from_str::<Yaml>("[dev]").unwrap()
    );
    // Current majors: RabbitMQ 4.x, PostgreSQL 18 (whose image keeps its data under
    // /var/lib/postgresql, a versioned folder inside).
    let image_major = |name: &str, prefix: &str| -> u32 {
        let image = str_of(&service(&compose, name)["image"]);
        image
            .strip_prefix(prefix)
            .and_then(|tag| tag.split(['.', '-']).next())
            .and_then(|major| major.parse().ok())
            .unwrap_or_else(|| panic!("{name}: image {image}"))
    };
    assert_eq!(image_major("rabbitmq", "rabbitmq:"), 4);
    assert!(image_major("postgres", "postgres:") >= 18);
    let volumes: Vec<String> = seq(&service(&compose, "postgres")["volumes"])
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(volumes, ["postgres-data:/var/lib/postgresql"]);
}

#[test]
fn every_environment_variable_compose_sets_for_our_services_is_one_its_binary_reads() {
    let compose = compose();
    let mut unread = Vec::new();
    for (name, binary) in OUR_SERVICES {
        let known = help_variables(binary);
        let env = environment(service(&compose, name));
        assert!(!env.is_empty(), "{name} sets no environment");
        for var in env.keys() {
            if !known.contains_key(var) {
                unread.push(format!("{name} ({binary}): {var}"));
            }
        }
    }
    assert!(
        unread.is_empty(),
        "set in docker-compose.yml but listed by no binary's --help: {unread:?}"
    );

    let ingest = environment(service(&compose, "ingest"));
    assert_eq!(
        ingest["STRIPE_WEBHOOK_SECRET"],
        "${STRIPE_WEBHOOK_SECRET:-whsec_devstack_local_only}"
    );
    assert!(
        ingest["AMQP_URL"].contains("@rabbitmq:5672/"),
        "{}",
        ingest["AMQP_URL"]
    );
    // The database user is the one devstack's and the tests' default URL uses, so the
    // infrastructure of this file serves `cargo run -p devstack -- up` as well.
    let postgres = environment(service(&compose, "postgres"));
    assert_eq!(postgres["POSTGRES_USER"], "postgres");
    assert_eq!(postgres["POSTGRES_HOST_AUTH_METHOD"], "trust");
    assert_eq!(postgres["POSTGRES_DB"], "stripe_credits");
    for name in ["fulfill", "fulfill-stripe"] {
        let fulfill = environment(service(&compose, name));
        assert_eq!(
            fulfill["DATABASE_URL"], "postgres://postgres@postgres:5432/stripe_credits",
            "{name}"
        );
        assert!(
            fulfill["AMQP_URL"].contains("@rabbitmq:5672/"),
            "{name}: {}",
            fulfill["AMQP_URL"]
        );
        assert_eq!(fulfill["STRIPE_RATE_LIMIT"], "${STRIPE_RATE_LIMIT:-25}");
        assert_eq!(
            fulfill["FULFILL_RECONCILE_INTERVAL_SECS"],
            "${FULFILL_RECONCILE_INTERVAL_SECS:-900}"
        );
    }
    let dev = service(&compose, "fulfill");
    assert_eq!(
        dev["profiles"],
        serde_yaml::from_str::<Yaml>("[dev]").unwrap()
    );
    let dev_env = environment(dev);
    assert_eq!(dev_env["STRIPE_API_BASE"], "http://fake-stripe:12111");
    let fake = environment(service(&compose, "fake-stripe"));
    assert_eq!(fake["FAKE_STRIPE_SEED"], "1");
    // The fake's API key is the one the dev fulfill sends.
    assert_eq!(dev_env["STRIPE_SECRET_KEY"], fake["FAKE_STRIPE_API_KEY"]);

    // Outside the dev profile nothing points at the fake: the real API by default, and
    // no key unless one is given.
    let live = service(&compose, "fulfill-stripe");
    assert_eq!(
        live["profiles"],
        serde_yaml::from_str::<Yaml>("[stripe]").unwrap()
    );
    let live_env = environment(live);
    assert_eq!(
        live_env["STRIPE_API_BASE"],
        format!(
            "${{STRIPE_API_BASE:-{}}}",
            fulfill::config::DEFAULT_STRIPE_API_BASE
        )
    );
    assert_eq!(live_env["STRIPE_SECRET_KEY"], "${STRIPE_SECRET_KEY:-}");
    for (name, svc) in services(&compose) {
        let name = str_of(name);
        if svc["profiles"] == serde_yaml::from_str::<Yaml>("[dev]").unwrap() {
            continue;
        }
        for (var, value) in environment(svc) {
            assert!(
                !value.contains("fake-stripe") && !value.contains("sk_test_fake"),
                "{name} (outside the dev profile): {var}={value}"
            );
        }
        if let Some(deps) = svc["depends_on"].as_mapping() {
            assert!(
                !deps.contains_key("fake-stripe"),
                "{name} depends on fake-stripe"
            );
        }
    }
}

#[test]
fn traces_are_off_unless_asked_for_and_the_observability_profile_receives_otlp_over_http() {
    let compose = compose();
    for name in ["ingest", "fulfill", "fulfill-stripe"] {
        let env = environment(service(&compose, name));
        // Empty when unset, which the code takes as "no endpoint": no exporter at all.
        assert_eq!(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
            Some("${OTEL_EXPORTER_OTLP_ENDPOINT:-}"),
            "{name}"
        );
    }
    let jaeger = service(&compose, "jaeger");
    assert_eq!(
        jaeger["profiles"],
        serde_yaml::from_str::<Yaml>("[observability]").unwrap()
    );
    assert!(
        str_of(&jaeger["image"]).starts_with("jaegertracing/jaeger:2."),
        "{:?}",
        jaeger["image"]
    );
    let targets: BTreeSet<u16> = port_mappings(jaeger).iter().map(|p| p.target).collect();
    assert_eq!(
        targets,
        BTreeSet::from([4318, 16686]),
        "OTLP/HTTP and the UI"
    );
    // Nothing waits for it (or for Prometheus and Grafana): without the profile the stack
    // must start as before.
    for (name, _) in OUR_SERVICES {
        if let Some(deps) = service(&compose, name)["depends_on"].as_mapping() {
            for tool in ["jaeger", "prometheus", "grafana"] {
                assert!(!deps.contains_key(tool), "{name} depends on {tool}");
            }
        }
    }
}

#[test]
fn the_observability_profile_scrapes_both_services_and_provisions_the_dashboard() {
    let compose = compose();
    let observability = serde_yaml::from_str::<Yaml>("[observability]").unwrap();
    let prometheus = service(&compose, "prometheus");
    assert_eq!(prometheus["profiles"], observability);
    assert!(str_of(&prometheus["image"]).starts_with("prom/prometheus:v3."));
    let mounts: Vec<String> = seq(&prometheus["volumes"]).iter().map(str_of).collect();
    assert_eq!(mounts, ["./deploy/prometheus:/etc/prometheus:ro"]);

    // The scrape configuration finds every replica of each service on its real port.
    let config: Yaml = serde_yaml::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let rule_files: Vec<String> = seq(&config["rule_files"]).iter().map(str_of).collect();
    assert_eq!(rule_files, ["/etc/prometheus/alerts.yml"]);
    assert!(repo().join("deploy/prometheus/alerts.yml").is_file());
    let mut scraped = BTreeMap::new();
    for job in seq(&config["scrape_configs"]) {
        for sd in seq(&job["dns_sd_configs"]) {
            let port = u16::try_from(sd["port"].as_u64().unwrap()).unwrap();
            for name in seq(&sd["names"]) {
                scraped.insert(str_of(name), (str_of(&job["job_name"]), port));
            }
        }
    }
    for (name, binary) in [
        ("ingest", "ingest"),
        ("fulfill", "fulfill"),
        ("fulfill-stripe", "fulfill"),
    ] {
        service(&compose, name);
        assert_eq!(
            scraped.get(name),
            Some(&(binary.to_owned(), default_port(name))),
            "Prometheus does not scrape {name} on its port"
        );
    }

    let grafana = service(&compose, "grafana");
    assert_eq!(grafana["profiles"], observability);
    let mounts: BTreeSet<String> = seq(&grafana["volumes"]).iter().map(str_of).collect();
    assert!(mounts.contains("./deploy/grafana/provisioning:/etc/grafana/provisioning:ro"));
    assert!(mounts.contains("./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro"));
    let datasource: Yaml = serde_yaml::from_str(&read(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ))
    .unwrap();
    let source = &seq(&datasource["datasources"])[0];
    assert_eq!(str_of(&source["url"]), "http://prometheus:9090");
    let provider: Yaml = serde_yaml::from_str(&read(
        "deploy/grafana/provisioning/dashboards/stripe-credits.yml",
    ))
    .unwrap();
    assert_eq!(
        str_of(&seq(&provider["providers"])[0]["options"]["path"]),
        "/var/lib/grafana/dashboards"
    );
    // Every panel reads the provisioned data source.
    let dashboard: Json =
        serde_json::from_str(&read("deploy/grafana/dashboards/stripe-credits.json")).unwrap();
    let uid = str_of(&source["uid"]);
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            uid.as_str(),
            "{}",
            panel["title"]
        );
        assert!(
            !panel["targets"].as_array().unwrap().is_empty(),
            "{} queries nothing",
            panel["title"]
        );
    }
}

#[test]
fn every_port_our_services_publish_or_health_check_is_the_default_port_of_their_binary() {
    let compose = compose();
    for (name, binary) in OUR_SERVICES {
        let expected = default_port(name);
        let svc = service(&compose, name);

        let ports = port_mappings(svc);
        assert!(!ports.is_empty(), "{name} has no ports");
        for port in &ports {
            assert_eq!(port.target, expected, "{name}: container port {port:?}");
            if let Some(published) = port.published {
                assert_eq!(published, expected, "{name}: published port {port:?}");
            }
        }

        let command =
            healthcheck_command(svc).unwrap_or_else(|| panic!("{name} has no healthcheck"));
        let (port, path) = healthcheck_target(&command);
        assert_eq!(port, expected, "{name}: health check port");
        let expected_path = if binary == "fake-stripe" {
            "/_fake/knobs"
        } else {
            "/readyz"
        };
        assert_eq!(path, expected_path, "{name}: health check path");
        // The runtime image has bash but no curl/wget.
        assert!(command.starts_with("CMD bash -c "), "{name}: {command}");
        assert!(
            command.contains("' 200 '"),
            "{name}: the check must look for a 200: {command}"
        );

        // An explicit listen address must listen on that same port.
        let env = environment(svc);
        let addr_var = addr_variable(binary);
        if let Some(addr) = env.get(addr_var) {
            assert_eq!(port_of(addr), expected, "{name}: {addr_var}={addr}");
            assert!(
                addr.starts_with("0.0.0.0:"),
                "{name}: {addr_var}={addr} is unreachable from other containers"
            );
        }
    }
    let ingest = port_mappings(service(&compose, "ingest"));
    assert_eq!(
        ingest,
        vec![PortMapping {
            host_ip: None,
            published: Some(8080),
            target: 8080
        }]
    );
}

#[test]
fn fulfill_has_no_fixed_host_port_and_dependencies_wait_for_health() {
    let compose = compose();
    for name in ["fulfill", "fulfill-stripe"] {
        for port in port_mappings(service(&compose, name)) {
            assert_eq!(
                port.published, None,
                "a fixed host port would break --scale {name}=N: {port:?}"
            );
        }
    }

    let all = services(&compose);
    let mut checked = 0;
    for (name, svc) in all {
        let name = str_of(name);
        match &svc["depends_on"] {
            Yaml::Null => {}
            Yaml::Sequence(deps) => {
                // Short syntax means "started", not "healthy".
                for dep in deps {
                    let dep = str_of(dep);
                    assert!(
                        all[dep.as_str()]["healthcheck"].is_null(),
                        "{name} depends on {dep} without condition: service_healthy"
                    );
                }
            }
            Yaml::Mapping(deps) => {
                for (dep, spec) in deps {
                    let dep = str_of(dep);
                    let target = all
                        .get(dep.as_str())
                        .unwrap_or_else(|| panic!("{name} depends on unknown service {dep}"));
                    assert!(
                        !target["healthcheck"].is_null(),
                        "{name} depends on {dep}, which has no healthcheck"
                    );
                    assert_eq!(
                        spec.get("condition").map(str_of).as_deref(),
                        Some("service_healthy"),
                        "{name} -> {dep}"
                    );
                    // A dependency on a service of another profile must be optional, or
                    // the stack does not start without that profile.
                    if !target["profiles"].is_null() && target["profiles"] != svc["profiles"] {
                        assert_eq!(
                            spec.get("required"),
                            Some(&Yaml::Bool(false)),
                            "{name} -> {dep}"
                        );
                    }
                    checked += 1;
                }
            }
            other => panic!("{name}: unexpected depends_on {other:?}"),
        }
    }
    let deps = |name: &str| -> BTreeSet<String> {
        service(&compose, name)["depends_on"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(str_of)
            .collect()
    };
    assert!(deps("ingest").contains("rabbitmq"));
    for name in ["fulfill", "fulfill-stripe"] {
        assert!(deps(name).contains("rabbitmq") && deps(name).contains("postgres"));
    }
    assert!(checked >= 3, "only {checked} dependencies checked");
}

#[test]
fn the_cluster_profile_makes_a_three_node_rabbitmq_that_both_services_wait_for() {
    let compose = compose();
    let cluster: Yaml = serde_yaml::from_str("[cluster]").unwrap();
    let cookie = &service(&compose, "rabbitmq")["environment"]["RABBITMQ_ERLANG_COOKIE"];
    assert!(!cookie.is_null(), "the first node sets no shared cookie");
    let config = read("deploy/rabbitmq/cluster.conf");
    for name in ["rabbitmq-1", "rabbitmq-2"] {
        let node = service(&compose, name);
        assert_eq!(node["profiles"], cluster, "{name}");
        assert_eq!(
            str_of(&node["hostname"]),
            name,
            "the node name follows the hostname"
        );
        assert_eq!(
            node["image"],
            service(&compose, "rabbitmq")["image"],
            "{name}: one RabbitMQ version in the cluster"
        );
        assert_eq!(
            &node["environment"]["RABBITMQ_ERLANG_COOKIE"], cookie,
            "{name}"
        );
        let volumes: Vec<String> = seq(&node["volumes"]).iter().map(str_of).collect();
        assert!(
            volumes.contains(
                &"./deploy/rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/20-cluster.conf:ro".into()
            ),
            "{name} does not read the cluster configuration: {volumes:?}"
        );
        assert!(
            volumes.iter().any(|v| v.ends_with(":/var/lib/rabbitmq")),
            "{name} keeps no data"
        );
        for service_name in ["ingest", "fulfill", "fulfill-stripe"] {
            let dep = &service(&compose, service_name)["depends_on"][name];
            assert_eq!(
                str_of(&dep["condition"]),
                "service_healthy",
                "{service_name} -> {name}"
            );
            assert_eq!(
                dep["required"],
                Yaml::Bool(false),
                "{service_name} -> {name}"
            );
        }
    }
    for node in ["rabbit@rabbitmq", "rabbit@rabbitmq-1", "rabbit@rabbitmq-2"] {
        assert!(
            config
                .lines()
                .any(|l| l.starts_with("cluster_formation.classic_config.nodes.")
                    && l.ends_with(&format!("= {node}"))),
            "deploy/rabbitmq/cluster.conf does not list {node}"
        );
    }
    assert!(config.contains("quorum_queue.initial_cluster_size = 3"));
    // The services can be given the node list; the default stays the one node.
    for service_name in ["ingest", "fulfill"] {
        assert_eq!(
            environment(service(&compose, service_name))["AMQP_URL"],
            "${AMQP_URL:-amqp://guest:guest@rabbitmq:5672/%2f}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// deploy/Dockerfile
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    /// (INSTRUCTION, arguments), continuation lines joined.
    instructions: Vec<(String, String)>,
}

/// The Dockerfile's stages, with `${ARG}`s declared before the first FROM substituted.
fn dockerfile() -> (BTreeMap<String, String>, Vec<Stage>) {
    let text = read("deploy/Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    let mut global_args = BTreeMap::<String, String>::new();
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instr, args) = line.split_once(' ').unwrap_or((&line, ""));
        let instr = instr.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if instr == "FROM" {
            let mut image = args.split_whitespace().next().unwrap().to_owned();
            for (k, v) in &global_args {
                image = image.replace(&format!("${{{k}}}"), v);
            }
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = words
                .iter()
                .position(|w| w.eq_ignore_ascii_case("AS"))
                .map(|i| words[i + 1].to_owned());
            stages.push(Stage {
                image,
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instr, args));
        } else if instr == "ARG" {
            let (k, v) = args.split_once('=').unwrap();
            global_args.insert(k.to_owned(), v.to_owned());
        }
    }
    (global_args, stages)
}

fn runs(stage: &Stage, needle: &str) -> Option<usize> {
    stage
        .instructions
        .iter()
        .position(|(i, a)| i == "RUN" && a.contains(needle))
}

fn position(stage: &Stage, instr: &str, args: &str) -> Option<usize> {
    stage
        .instructions
        .iter()
        .position(|(i, a)| i == instr && a == args)
}

/// `/a/b/../c` -> `/a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The string literals passed to `include_str!` / `include_bytes!` (possibly on the next line).
fn embedded_paths(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for macro_call in ["include_str!(", "include_bytes!("] {
        for (at, _) in text.match_indices(macro_call) {
            let rest = text[at + macro_call.len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"') {
                out.push(literal.split('"').next().unwrap());
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_is_a_locked_cargo_chef_multi_stage_build_running_as_non_root() {
    let (global_args, stages) = dockerfile();
    assert!(
        stages.len() >= 4,
        "expected chef, planner, builder, runtime: {stages:#?}"
    );

    // Toolchain: the official Rust image, new enough for the workspace's rust-version.
    let chef = &stages[0];
    let rust_tag = chef
        .image
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("builder image {}", chef.image));
    assert!(rust_tag.ends_with("-slim-bookworm"), "{rust_tag}");
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let wanted = manifest["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap();
    let version = |v: &str| -> (u32, u32) {
        let mut it = v.split(['.', '-']).map(|p| p.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    assert!(
        version(rust_tag) >= version(wanted),
        "rust:{rust_tag} is older than rust-version {wanted}"
    );
    assert!(
        runs(chef, "cargo install cargo-chef --locked").is_some(),
        "cargo-chef is not installed"
    );

    let stage = |name: &str| {
        stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no stage {name}"))
    };
    let planner = stage("planner");
    assert_eq!(planner.image, "chef");
    assert!(runs(planner, "cargo chef prepare --recipe-path recipe.json").is_some());

    // The dependency layer is cooked before the sources arrive, so it stays cached.
    let builder = stage("builder");
    assert_eq!(builder.image, "chef");
    let cook = runs(builder, "cargo chef cook --release --locked").expect("no locked release cook");
    let sources = position(builder, "COPY", ". .").expect("builder copies no sources");
    let build = runs(builder, "cargo build --release --locked --bin \"${BIN}\"")
        .expect("no locked build of $BIN");
    assert!(
        cook < sources && sources < build,
        "cook {cook}, COPY {sources}, build {build}"
    );
    assert!(
        builder
            .instructions
            .iter()
            .any(|(i, a)| i == "ARG" && a == "BIN=ingest")
    );

    // The repository is the whole build context: no named context, and every file the
    // crates embed resolves inside the repository copied to the WORKDIR.
    let workdir = &chef
        .instructions
        .iter()
        .find(|(i, _)| i == "WORKDIR")
        .unwrap()
        .1;
    assert!(
        builder
            .instructions
            .iter()
            .all(|(i, a)| !(i == "COPY" && a.starts_with("--from=") && !a.contains("planner"))),
        "the builder copies from a named context: {:#?}",
        builder.instructions
    );
    let mut embedded = 0;
    for (file, text) in rust_sources() {
        for literal in embedded_paths(&text) {
            let in_image = normalize(
                &Path::new(workdir)
                    .join(file.parent().unwrap())
                    .join(literal),
            );
            let relative = in_image.strip_prefix(workdir).unwrap_or_else(|_| {
                panic!(
                    "{} embeds {literal}: {} is outside the build context {workdir}",
                    file.display(),
                    in_image.display()
                )
            });
            assert!(
                repo().join(relative).is_file(),
                "{} embeds {}, which is not in the repository",
                file.display(),
                relative.display()
            );
            embedded += 1;
        }
    }
    assert!(
        embedded > 0,
        "found no embedded files: the parsing is broken"
    );

    // Runtime: debian slim, ca-certificates only, non-root numeric user, one entrypoint.
    let runtime = stages.last().unwrap();
    assert_eq!(runtime.image, "debian:bookworm-slim");
    assert_eq!(
        global_args.get("DEBIAN_RELEASE").map(String::as_str),
        Some("bookworm")
    );
    let install = runtime
        .instructions
        .iter()
        .find_map(|(i, a)| {
            (i == "RUN")
                .then(|| a.split("apt-get install").nth(1))
                .flatten()
        })
        .expect("runtime installs nothing");
    let packages: Vec<&str> = install
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert_eq!(packages, ["ca-certificates"]);
    let users: Vec<&String> = runtime
        .instructions
        .iter()
        .filter(|(i, _)| i == "USER")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(users.len(), 1, "{users:?}");
    let uid: i64 = users[0]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("USER must be numeric");
    assert_eq!(uid, APP_UID);
    let user_pos = position(runtime, "USER", users[0]).unwrap();
    assert!(
        runtime
            .instructions
            .iter()
            .skip(user_pos)
            .all(|(i, _)| i != "RUN"),
        "RUN after USER"
    );
    assert!(position(runtime, "ENTRYPOINT", "[\"/usr/local/bin/app\"]").is_some());
    assert!(
        position(
            runtime,
            "COPY",
            "--from=builder /usr/local/bin/app /usr/local/bin/app"
        )
        .is_some()
    );
    let exposed: BTreeSet<u16> = runtime
        .instructions
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let defaults: BTreeSet<u16> = OUR_SERVICES.iter().map(|(s, _)| default_port(s)).collect();
    assert_eq!(exposed, defaults);

    // Nothing secret (or any configuration) is baked in.
    for stage in &stages {
        for (instr, args) in &stage.instructions {
            assert!(
                instr != "ENV",
                "ENV {args}: configuration belongs in the environment at run time"
            );
            assert!(
                !args.contains("whsec_") && !args.contains("sk_"),
                "{instr} {args}"
            );
        }
    }
}

#[test]
fn the_bin_values_compose_builds_are_binaries_of_the_named_packages() {
    let binaries = workspace_binaries();
    let compose = compose();
    for (name, binary) in OUR_SERVICES {
        let args = build_args(service(&compose, name));
        let bin = args
            .get("BIN")
            .unwrap_or_else(|| panic!("{name}: no BIN build arg"));
        assert_eq!(bin, binary);
        let in_package = binaries
            .get(binary)
            .unwrap_or_else(|| panic!("no workspace package {binary}: {binaries:?}"));
        assert!(
            in_package.contains(bin),
            "package {name} has no binary {bin}: {in_package:?}"
        );
    }
    // A name that is no binary is caught.
    assert!(!binaries.values().any(|b| b.contains("fulfil")));
}

#[test]
fn the_dockerignore_keeps_build_output_and_git_out_but_not_the_sources() {
    let lines: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for needed in ["target", ".git", ".env"] {
        assert!(
            lines.contains(needed),
            ".dockerignore does not exclude {needed}: {lines:?}"
        );
    }
    for kept in [
        "Cargo.lock",
        "Cargo.toml",
        "shared",
        "ingest",
        "fulfill",
        "tests",
        "*.rs",
        "*.toml",
    ] {
        assert!(
            !lines.contains(kept),
            ".dockerignore excludes {kept}, which the build needs"
        );
    }
}

// ---------------------------------------------------------------------------------------
// deploy/k8s
// ---------------------------------------------------------------------------------------

/// Every document of every YAML file under deploy/k8s, with the file it came from.
fn k8s_documents() -> Vec<(String, Yaml)> {
    yaml_documents("deploy/k8s")
}

/// Every document of every YAML file under `dir` (relative to the repository), with the
/// file it came from (relative to `dir`).
fn yaml_documents(dir: &str) -> Vec<(String, Yaml)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let root = dir;
    let dir = repo().join(root);
    let mut files = Vec::new();
    walk(&dir, &mut files);
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(&dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = <Yaml as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|e| panic!("{root}/{rel} is not valid YAML: {e}"));
            if !value.is_null() {
                docs.push((rel.clone(), value));
            }
        }
    }
    docs
}

fn find<'a>(docs: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the manifests read"))
}

fn seq(value: &Yaml) -> &[Yaml] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

fn pod_spec(workload: &Yaml) -> &Yaml {
    &workload["spec"]["template"]["spec"]
}

/// Whether the container runs an image we build (not a sidecar).
fn is_ours(container: &Yaml) -> bool {
    str_of(&container["image"]).contains("/stripe-credits/")
}

/// The binary an image of ours runs: `…/stripe-credits/<binary>:<tag>`.
fn image_binary(container: &Yaml) -> &'static str {
    let image = str_of(&container["image"]);
    let name = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split(':').next())
        .unwrap_or_default()
        .to_owned();
    ["ingest", "fulfill", "fake-stripe"]
        .into_iter()
        .find(|b| *b == name)
        .unwrap_or_else(|| panic!("image {image} runs none of our binaries"))
}

/// The port a probe or Service points at, resolving named container ports.
fn resolve_port(container: &Yaml, port: &Yaml) -> u16 {
    match port {
        Yaml::Number(n) => u16::try_from(n.as_u64().unwrap()).unwrap(),
        Yaml::String(name) => {
            let found = seq(&container["ports"])
                .iter()
                .find(|p| p["name"] == name.as_str())
                .unwrap_or_else(|| panic!("no container port named {name}"));
            u16::try_from(found["containerPort"].as_u64().unwrap()).unwrap()
        }
        other => panic!("unexpected port {other:?}"),
    }
}

fn secret_keys(docs: &[(String, Yaml)]) -> BTreeSet<String> {
    let secret = find(docs, "Secret", "stripe-credits");
    secret["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(str_of)
        .collect()
}

#[test]
fn every_k8s_manifest_parses_and_names_itself_without_a_namespace() {
    let docs = k8s_documents();
    assert!(docs.len() >= 12, "only {} documents", docs.len());
    for (file, doc) in &docs {
        for key in ["apiVersion", "kind"] {
            assert!(
                doc[key].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: no {key}"
            );
        }
        assert!(
            doc["metadata"]["name"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{file}: no metadata.name"
        );
        assert!(
            doc["metadata"]["namespace"].is_null(),
            "{file}: manifests must not fix a namespace"
        );
    }

    let kustomization = find(&docs, "Kustomization", "stripe-credits");
    assert!(kustomization["namespace"].is_null());
    let listed: BTreeSet<String> = seq(&kustomization["resources"])
        .iter()
        .map(str_of)
        .collect();
    let files: BTreeSet<String> = docs.iter().map(|(f, _)| f.clone()).collect();
    for resource in &listed {
        assert!(
            files.contains(resource),
            "kustomization.yaml lists missing {resource}"
        );
    }
    let unlisted: BTreeSet<&str> = ["kustomization.yaml", "secret.example.yaml"].into();
    for file in &files {
        assert_eq!(
            listed.contains(file),
            !unlisted.contains(file.as_str()),
            "{file}: listed in kustomization.yaml = {}",
            listed.contains(file)
        );
    }

    // Each image we reference can be retagged through the kustomization.
    let retaggable: BTreeSet<String> = seq(&kustomization["images"])
        .iter()
        .map(|i| str_of(&i["name"]))
        .collect();
    for (file, doc) in &docs {
        if doc["kind"] == "Deployment" || doc["kind"] == "Job" {
            for container in seq(&pod_spec(doc)["containers"]) {
                let image = str_of(&container["image"]);
                let name = image.rsplit_once(':').map_or(image.as_str(), |(n, _)| n);
                assert!(
                    retaggable.contains(name),
                    "{file}: {image} not in kustomization images"
                );
            }
        }
    }

    // The example Secret is clearly fake.
    let secret = find(&docs, "Secret", "stripe-credits");
    for (key, value) in secret["stringData"].as_mapping().unwrap() {
        assert!(
            str_of(value).contains("REPLACE_ME"),
            "secret.example.yaml {}: not a placeholder",
            str_of(key)
        );
    }
    assert_eq!(
        secret_keys(&docs),
        [
            "AMQP_URL",
            "DATABASE_URL",
            "FULFILL_API_TOKEN",
            "STRIPE_SECRET_KEY",
            "STRIPE_WEBHOOK_SECRET"
        ]
        .map(String::from)
        .into()
    );
}

#[test]
fn every_env_var_the_k8s_manifests_set_on_our_containers_is_one_their_binary_reads() {
    let docs = k8s_documents();
    let secrets = secret_keys(&docs);
    let mut seen = BTreeMap::<String, BTreeSet<String>>::new();
    let mut unread = Vec::new();
    for (file, doc) in &docs {
        let kind = str_of(&doc["kind"]);
        if kind != "Deployment" && kind != "Job" {
            continue;
        }
        for container in seq(&pod_spec(doc)["containers"])
            .iter()
            .filter(|c| is_ours(c))
        {
            let mut names = BTreeSet::new();
            for var in seq(&container["env"]) {
                names.insert(str_of(&var["name"]));
                let secret_ref = &var["valueFrom"]["secretKeyRef"];
                if !secret_ref.is_null() {
                    assert_eq!(str_of(&secret_ref["name"]), "stripe-credits", "{file}");
                    let key = str_of(&secret_ref["key"]);
                    assert!(secrets.contains(&key), "{file}: Secret has no key {key}");
                }
            }
            for source in seq(&container["envFrom"]) {
                let map_name = str_of(&source["configMapRef"]["name"]);
                let map = find(&docs, "ConfigMap", &map_name);
                names.extend(map["data"].as_mapping().unwrap().keys().map(str_of));
            }
            let binary = image_binary(container);
            let known = help_variables(binary);
            for name in &names {
                if !known.contains_key(name) {
                    unread.push(format!("{file} ({binary}): {name}"));
                }
            }
            seen.insert(str_of(&doc["metadata"]["name"]), names);
        }
    }
    assert!(
        unread.is_empty(),
        "set in deploy/k8s but listed by no binary's --help: {unread:?}"
    );

    // The secrets the brief names come from the Secret, where each service needs them.
    for var in ["STRIPE_WEBHOOK_SECRET", "AMQP_URL"] {
        assert!(seen["ingest"].contains(var), "ingest lacks {var}");
    }
    for var in [
        "STRIPE_SECRET_KEY",
        "DATABASE_URL",
        "AMQP_URL",
        "FULFILL_API_TOKEN",
        "STRIPE_RATE_LIMIT",
    ] {
        assert!(seen["fulfill"].contains(var), "fulfill lacks {var}");
    }
    assert!(seen["fulfill-migrate"].contains("DATABASE_URL"));
}

#[test]
fn k8s_probes_ports_and_security_contexts_match_the_code_and_the_image() {
    let docs = k8s_documents();
    for name in ["ingest", "fulfill"] {
        let deployment = find(&docs, "Deployment", name);
        let expected = default_port(name);
        let pod = pod_spec(deployment);
        let containers = seq(&pod["containers"]);
        assert_eq!(containers.len(), 1, "{name}");
        let container = &containers[0];
        assert!(
            is_ours(container),
            "{name}: image {}",
            str_of(&container["image"])
        );

        assert_eq!(
            resolve_port(container, &Yaml::from("http")),
            expected,
            "{name}: containerPort"
        );
        // fulfill's pods stay in the Service while only the broker is down: its API
        // needs the database alone (/readyz/api); ingest can do nothing without the broker.
        let readiness = &container["readinessProbe"]["httpGet"];
        let ready_path = if name == "fulfill" {
            "/readyz/api"
        } else {
            "/readyz"
        };
        assert_eq!(str_of(&readiness["path"]), ready_path, "{name}");
        assert_eq!(
            resolve_port(container, &readiness["port"]),
            expected,
            "{name}: readiness port"
        );
        let liveness = &container["livenessProbe"]["httpGet"];
        assert_eq!(str_of(&liveness["path"]), "/healthz", "{name}");
        assert_eq!(
            resolve_port(container, &liveness["port"]),
            expected,
            "{name}: liveness port"
        );
        if !container["startupProbe"].is_null() {
            let startup = &container["startupProbe"]["httpGet"];
            assert_eq!(str_of(&startup["path"]), "/healthz", "{name}");
            assert_eq!(
                resolve_port(container, &startup["port"]),
                expected,
                "{name}: startup port"
            );
        }
        assert!(
            !container["resources"]["requests"].is_null(),
            "{name}: no resource requests"
        );
        assert!(
            !container["resources"]["limits"]["memory"].is_null(),
            "{name}: no memory limit"
        );

        // The listen address in the ConfigMap agrees with the container port.
        let config = find(&docs, "ConfigMap", &format!("{name}-config"));
        let addr_var = addr_variable(name);
        if let Some(addr) = config["data"].get(addr_var) {
            assert_eq!(port_of(&str_of(addr)), expected, "{name}: {addr_var}");
        }

        // Shutdown fits in the grace period: preStop, then draining, then the last spans.
        let pre_stop = seq(&container["lifecycle"]["preStop"]["exec"]["command"])
            .iter()
            .map(str_of)
            .collect::<Vec<_>>();
        assert_eq!(
            pre_stop.first().map(String::as_str),
            Some("sleep"),
            "{name}: preStop"
        );
        let pre_stop_secs: u64 = pre_stop[1].parse().unwrap();
        let drain = match name {
            "ingest" => ingest::startup::SHUTDOWN_GRACE,
            _ => fulfill::startup::SHUTDOWN_GRACE,
        };
        let needed = pre_stop_secs + drain.as_secs() + shared::telemetry::FLUSH_TIMEOUT.as_secs();
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        assert!(
            grace > needed,
            "{name}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop_secs} s + drain {drain:?} + trace flush {:?}",
            shared::telemetry::FLUSH_TIMEOUT
        );

        // Selector, pod labels, Service and PDB agree.
        let selector = &deployment["spec"]["selector"]["matchLabels"];
        let labels = deployment["spec"]["template"]["metadata"]["labels"]
            .as_mapping()
            .unwrap();
        for (k, v) in selector.as_mapping().unwrap() {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{name}: selector {k:?} does not match the pod labels"
            );
        }
        let service = find(&docs, "Service", name);
        assert_eq!(
            &service["spec"]["selector"], selector,
            "{name}: Service selector"
        );
        assert_eq!(
            service["spec"]["type"].as_str().unwrap_or("ClusterIP"),
            "ClusterIP",
            "{name}: expose through an Ingress, not a node port or load balancer"
        );
        let service_ports = seq(&service["spec"]["ports"]);
        assert_eq!(service_ports.len(), 1);
        assert_eq!(
            resolve_port(container, &service_ports[0]["targetPort"]),
            expected,
            "{name}: Service targetPort"
        );
        let pdb = find(&docs, "PodDisruptionBudget", name);
        assert_eq!(
            &pdb["spec"]["selector"]["matchLabels"], selector,
            "{name}: PDB selector"
        );
    }

    // ingest's HTTP workers follow its CPU limit, not the node's core count.
    let ingest_config = find(&docs, "ConfigMap", "ingest-config");
    let workers: u64 = str_of(&ingest_config["data"][ingest::config::INGEST_WORKERS])
        .parse()
        .unwrap();
    let ingest_pod = pod_spec(find(&docs, "Deployment", "ingest"));
    let cpu_limit = str_of(&seq(&ingest_pod["containers"])[0]["resources"]["limits"]["cpu"]);
    assert_eq!(
        cpu_limit.parse::<u64>().ok(),
        Some(workers),
        "INGEST_WORKERS vs the CPU limit"
    );

    // Reconciliation runs in the shipped configuration: the background loop is on.
    let fulfill_config = find(&docs, "ConfigMap", "fulfill-config");
    let interval: u64 =
        str_of(&fulfill_config["data"][fulfill::config::FULFILL_RECONCILE_INTERVAL_SECS])
            .parse()
            .unwrap();
    assert!(
        (60..=3600).contains(&interval),
        "reconcile every {interval} s"
    );

    assert_eq!(
        find(&docs, "Deployment", "ingest")["spec"]["replicas"],
        Yaml::from(2)
    );
    assert_eq!(
        seq(&find(&docs, "Service", "ingest")["spec"]["ports"])[0]["port"],
        Yaml::from(80)
    );
    assert!(
        find(&docs, "Deployment", "fulfill")["spec"]["replicas"].is_null(),
        "KEDA owns fulfill's replica count: a fixed `replicas` fights it on every apply"
    );

    // Every workload of ours runs as the image's non-root uid.
    for (file, doc) in &docs {
        let kind = str_of(&doc["kind"]);
        if kind != "Deployment" && kind != "Job" {
            continue;
        }
        let pod = pod_spec(doc);
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"],
            Yaml::Bool(true),
            "{file}"
        );
        assert_eq!(
            pod["securityContext"]["runAsUser"],
            Yaml::from(APP_UID),
            "{file}"
        );
        for container in seq(&pod["containers"]) {
            let context = &container["securityContext"];
            assert_ne!(context["runAsNonRoot"], Yaml::Bool(false), "{file}");
            assert_ne!(context["runAsUser"], Yaml::from(0), "{file}");
            assert_eq!(
                context["allowPrivilegeEscalation"],
                Yaml::Bool(false),
                "{file}"
            );
        }
    }
}

#[test]
fn the_keda_scaled_object_scales_fulfill_on_the_fulfill_checkout_queue() {
    let docs = k8s_documents();
    // The queue name is the one the topology declares (without a prefix, as in production).
    let queue = shared::topology::Topology::new("").checkout_queue();

    let scaled = find(&docs, "ScaledObject", "fulfill");
    assert_eq!(str_of(&scaled["apiVersion"]), "keda.sh/v1alpha1");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(str_of(&target["name"]), "fulfill");
    assert_eq!(
        target["kind"].as_str().unwrap_or("Deployment"),
        "Deployment"
    );
    find(&docs, "Deployment", "fulfill");

    let triggers = seq(&scaled["spec"]["triggers"]);
    assert_eq!(triggers.len(), 1);
    let trigger = &triggers[0];
    assert_eq!(str_of(&trigger["type"]), "rabbitmq");
    assert_eq!(str_of(&trigger["metadata"]["queueName"]), queue);
    assert_eq!(str_of(&trigger["metadata"]["mode"]), "QueueLength");
    assert!(
        str_of(&trigger["metadata"]["value"])
            .parse::<u32>()
            .unwrap()
            > 0
    );

    let auth_name = str_of(&trigger["authenticationRef"]["name"]);
    let auth = find(&docs, "TriggerAuthentication", &auth_name);
    assert_eq!(str_of(&auth["apiVersion"]), "keda.sh/v1alpha1");
    let refs = seq(&auth["spec"]["secretTargetRef"]);
    let host = refs
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("TriggerAuthentication sets no host");
    assert_eq!(str_of(&host["name"]), "stripe-credits");
    assert_eq!(str_of(&host["key"]), "AMQP_URL");

    // The Stripe budget is shared by the replicas through PostgreSQL, so any replica count
    // stays within it; the bounds only need to make sense.
    let max = scaled["spec"]["maxReplicaCount"].as_u64().unwrap();
    let min = scaled["spec"]["minReplicaCount"].as_u64().unwrap();
    assert!(min >= 1 && min <= max, "min {min}, max {max}");
    let config = find(&docs, "ConfigMap", "fulfill-config");
    assert!(
        str_of(&config["data"]["STRIPE_RATE_LIMIT"])
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
}

#[test]
fn the_migration_job_runs_fulfill_migrate() {
    let docs = k8s_documents();
    let job = find(&docs, "Job", "fulfill-migrate");
    let pod = pod_spec(job);
    assert_eq!(str_of(&pod["restartPolicy"]), "Never");
    let containers = seq(&pod["containers"]);
    assert_eq!(containers.len(), 1);
    let fulfill = find(&docs, "Deployment", "fulfill");
    assert_eq!(
        containers[0]["image"],
        seq(&pod_spec(fulfill)["containers"])[0]["image"]
    );
    assert_eq!(
        containers[0]["args"],
        serde_yaml::from_str::<Yaml>("[migrate]").unwrap()
    );
    assert!(
        help("fulfill")
            .lines()
            .any(|l| l.trim_start().starts_with("migrate ")),
        "fulfill has no `migrate` subcommand"
    );
    // The Job is part of the kustomization, so its image follows the same `images:` entry
    // as the Deployment's.
    let kustomization = find(&docs, "Kustomization", "stripe-credits");
    let resources: BTreeSet<String> = seq(&kustomization["resources"])
        .iter()
        .map(str_of)
        .collect();
    assert!(resources.contains("migrate-job.yaml"), "{resources:?}");
    let image = str_of(&containers[0]["image"]);
    let image_name = image
        .rsplit_once(':')
        .map_or(image.as_str(), |(name, _)| name);
    assert!(
        seq(&kustomization["images"])
            .iter()
            .any(|i| str_of(&i["name"]) == image_name),
        "the kustomization sets no image for {image_name}"
    );
}

// ---------------------------------------------------------------------------------------
// deploy/cluster: deploy/k8s with TLS to a managed PostgreSQL
// ---------------------------------------------------------------------------------------

/// The key a strategic merge patch matches the items of a list field by
/// (`patchMergeKey` in the Kubernetes API); lists without one are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "volumes" | "env" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        _ => None,
    }
}

/// `patch` applied to `base` as a strategic merge patch, for what ours use: mappings merged
/// key by key, the lists [`merge_key`] names merged item by item, anything else replaced.
fn strategic_merge(base: &mut Yaml, patch: &Yaml, field: &str) {
    match (base, patch) {
        (Yaml::Mapping(base), Yaml::Mapping(patch)) => {
            for (key, value) in patch {
                match base.get_mut(key) {
                    Some(existing) => strategic_merge(existing, value, &str_of(key)),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Yaml::Sequence(base), Yaml::Sequence(patch)) if merge_key(field).is_some() => {
            let key = merge_key(field).unwrap();
            for item in patch {
                match base.iter_mut().find(|b| b[key] == item[key]) {
                    Some(existing) => strategic_merge(existing, item, field),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// deploy/k8s's documents with deploy/cluster's kustomization applied: each patch it lists
/// merged into the document of the same kind and name. Every `*-patch.yaml` there must be
/// listed: a patch nobody applies mounts nothing.
fn cluster_documents() -> Vec<(String, Yaml)> {
    let cluster = yaml_documents("deploy/cluster");
    let kustomization = find(&cluster, "Kustomization", "stripe-credits-cluster");
    let resources: Vec<String> = seq(&kustomization["resources"])
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(resources, ["../k8s"], "deploy/cluster builds on deploy/k8s");
    let listed: BTreeSet<String> = seq(&kustomization["patches"])
        .iter()
        .map(|p| str_of(&p["path"]))
        .collect();
    let patch_files: BTreeSet<String> = cluster
        .iter()
        .map(|(file, _)| file.clone())
        .filter(|file| file.ends_with("-patch.yaml"))
        .collect();
    assert_eq!(
        listed, patch_files,
        "deploy/cluster/kustomization.yaml lists exactly the patches there"
    );
    let mut docs = k8s_documents();
    for file in &listed {
        let (_, patch) = cluster
            .iter()
            .find(|(f, _)| f == file)
            .unwrap_or_else(|| panic!("deploy/cluster/{file} does not exist"));
        let target = docs
            .iter_mut()
            .map(|(_, d)| d)
            .find(|d| {
                d["kind"] == patch["kind"] && d["metadata"]["name"] == patch["metadata"]["name"]
            })
            .unwrap_or_else(|| panic!("deploy/cluster/{file} patches nothing in deploy/k8s"));
        strategic_merge(target, patch, "");
    }
    // What the overlay expects of the Secret (created out of band), over the base's example.
    let secret = find(&cluster, "Secret", "stripe-credits").clone();
    let base = docs
        .iter_mut()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "stripe-credits")
        .unwrap();
    strategic_merge(base, &secret, "");
    docs
}

/// The `sslrootcert` file a `postgres://` URL names, if a file (not `system`).
fn sslrootcert(url: &str) -> Option<PathBuf> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "sslrootcert")
        .map(|(_, v)| v.replace("%2F", "/").replace("%2f", "/"))
        .filter(|v| v != "system")
        .map(PathBuf::from)
}

/// For each workload container reading a DATABASE_URL (literal, or from the example
/// Secret) that names an sslrootcert file: `kind/name` and the problem, if its pod does not
/// mount a volume at that file's directory (or above it).
fn unmounted_ca(docs: &[(String, Yaml)]) -> (Vec<String>, BTreeSet<String>) {
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    for (_, doc) in docs {
        let kind = str_of(&doc["kind"]);
        let pod = match kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => pod_spec(doc),
            "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        let workload = format!("{kind}/{}", str_of(&doc["metadata"]["name"]));
        let volumes: BTreeSet<String> = seq(&pod["volumes"])
            .iter()
            .map(|v| str_of(&v["name"]))
            .collect();
        let containers = seq(&pod["containers"])
            .iter()
            .chain(seq(&pod["initContainers"]));
        for container in containers {
            let Some(var) = seq(&container["env"])
                .iter()
                .find(|v| v["name"] == "DATABASE_URL")
            else {
                continue;
            };
            let secret_ref = &var["valueFrom"]["secretKeyRef"];
            let url = if secret_ref.is_null() {
                str_of(&var["value"])
            } else {
                let secret = find(docs, "Secret", &str_of(&secret_ref["name"]));
                str_of(&secret["stringData"][str_of(&secret_ref["key"]).as_str()])
            };
            let Some(ca) = sslrootcert(&url) else {
                continue;
            };
            checked.insert(workload.clone());
            let dir = ca.parent().unwrap();
            let mounted = seq(&container["volumeMounts"]).iter().any(|m| {
                let at = str_of(&m["mountPath"]);
                !at.is_empty() && dir.starts_with(&at) && volumes.contains(&str_of(&m["name"]))
            });
            if !mounted {
                problems.push(format!(
                    "{workload} (container {}): DATABASE_URL names sslrootcert={} but no volume is mounted at {}",
                    str_of(&container["name"]),
                    ca.display(),
                    dir.display()
                ));
            }
        }
    }
    (problems, checked)
}

#[test]
fn every_workload_whose_database_url_names_a_ca_file_mounts_it_in_the_cluster_overlay() {
    // The parsing can fail: a URL without sslrootcert, or with `system`, names no file.
    assert_eq!(
        sslrootcert("postgres://h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%2Fca.pem"),
        Some(PathBuf::from("/etc/ca/ca.pem"))
    );
    assert_eq!(sslrootcert("postgres://h/db?sslrootcert=system"), None);
    assert_eq!(sslrootcert("postgres://h/db?sslmode=require"), None);
    // deploy/k8s alone: its example DATABASE_URL names no CA file.
    let (problems, checked) = unmounted_ca(&k8s_documents());
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(checked.is_empty(), "{checked:?}");
    // deploy/cluster: every workload reading the verify-full DATABASE_URL mounts the CA.
    let (problems, checked) = unmounted_ca(&cluster_documents());
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        checked,
        ["Deployment/fulfill", "Job/fulfill-migrate"]
            .map(String::from)
            .into(),
        "the workloads reading DATABASE_URL"
    );
}
