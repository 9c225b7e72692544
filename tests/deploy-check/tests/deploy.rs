//! The deployment files agree with the Compose schema and with the code.
//!
//! Nothing here builds an image or starts a container: the checks read
//! `docker-compose.yml`, `deploy/Dockerfile`, `.dockerignore` and `deploy/k8s/*.yaml`, and
//! compare what they set (environment variables, ports, probes, binaries, queue names)
//! with what the Rust sources of ingest, fulfill, shared and fake-stripe actually read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Component, Path, PathBuf},
};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

// ---------------------------------------------------------------------------------------
// What the code says
// ---------------------------------------------------------------------------------------

/// The services we build, with the package and binary of each.
const OUR_SERVICES: [&str; 3] = ["ingest", "fulfill", "fake-stripe"];

/// Read by tracing-subscriber's `EnvFilter::try_from_default_env`, not by our code.
const READ_BY_LIBRARIES: [&str; 1] = ["RUST_LOG"];

/// Families of variables read by a library rather than by our code: `OTEL_*` is the
/// OpenTelemetry SDK's standard configuration (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, …), read by
/// opentelemetry_sdk and opentelemetry-otlp, which `shared` links (checked below).
const READ_BY_LIBRARY_PREFIXES: [(&str, &[&str]); 1] =
    [("OTEL_", &["opentelemetry_sdk", "opentelemetry-otlp"])];

/// Crates whose sources end up in our images (and whose env reads count).
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

/// Whether some source holds the string literal `"NAME"` (a `const X: &str = "NAME"` or a
/// direct `std::env::var("NAME")`), or the variable is read by a library we use.
fn env_is_read(sources: &[(PathBuf, String)], name: &str) -> bool {
    let literal = format!("\"{name}\"");
    READ_BY_LIBRARIES.contains(&name)
        || READ_BY_LIBRARY_PREFIXES
            .iter()
            .any(|(prefix, _)| name.starts_with(prefix))
        || sources.iter().any(|(_, text)| text.contains(&literal))
}

#[test]
fn variable_families_are_allowed_only_while_the_library_reading_them_is_linked() {
    let manifest: toml::Table = read("shared/Cargo.toml").parse().unwrap();
    let dependencies = manifest["dependencies"].as_table().unwrap();
    for (prefix, crates) in READ_BY_LIBRARY_PREFIXES {
        for krate in crates {
            assert!(
                dependencies.contains_key(*krate),
                "{prefix}* variables are allowed because shared links {krate}, which it no longer does"
            );
        }
    }
}

fn last_number(text: &str) -> Option<u16> {
    text.split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
}

/// The default listen port of a service, from the statement in its source that reads the
/// address variable (up to the end of that expression).
fn default_port(service: &str) -> u16 {
    let (file, anchor) = match service {
        "ingest" => ("ingest/src/config.rs", "parsed_or(env, INGEST_ADDR,"),
        "fulfill" => ("fulfill/src/config.rs", "parsed_or(env, FULFILL_ADDR,"),
        "fake-stripe" => ("tests/fake-stripe/src/main.rs", "var(\"FAKE_STRIPE_ADDR\")"),
        other => panic!("not our service: {other}"),
    };
    let text = read(file);
    let start = text
        .find(anchor)
        .unwrap_or_else(|| panic!("{file} no longer contains {anchor:?}: update this test"));
    let rest = &text[start + anchor.len()..];
    let end = [rest.find(")?"), rest.find(';')]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
    last_number(&rest[..end]).unwrap_or_else(|| panic!("no port in {:?} ({file})", &rest[..end]))
}

#[test]
fn the_default_ports_are_read_from_the_sources() {
    assert_eq!(default_port("ingest"), 8080);
    assert_eq!(default_port("fulfill"), 8081);
    assert_eq!(default_port("fake-stripe"), 12111);
}

/// Binaries of the workspace's members: package name -> binary names.
fn workspace_binaries() -> BTreeMap<String, BTreeSet<String>> {
    let root = repo();
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let mut out = BTreeMap::new();
    for member in members {
        let dir = root.join(member.as_str().unwrap());
        let krate: toml::Table = fs::read_to_string(dir.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let package = krate["package"]["name"].as_str().unwrap().to_owned();
        let mut bins = BTreeSet::new();
        let autobins = krate["package"]
            .get("autobins")
            .and_then(toml::Value::as_bool)
            .unwrap_or(true);
        if let Some(explicit) = krate.get("bin").and_then(toml::Value::as_array) {
            for bin in explicit {
                bins.insert(bin["name"].as_str().unwrap().to_owned());
            }
        }
        if autobins {
            if dir.join("src/main.rs").is_file() {
                bins.insert(package.clone());
            }
            if let Ok(entries) = fs::read_dir(dir.join("src/bin")) {
                for entry in entries {
                    let path = entry.unwrap().path();
                    if path.extension().is_some_and(|e| e == "rs") {
                        bins.insert(path.file_stem().unwrap().to_string_lossy().into_owned());
                    } else if path.join("main.rs").is_file() {
                        bins.insert(path.file_name().unwrap().to_string_lossy().into_owned());
                    }
                }
            }
        }
        out.insert(package, bins);
    }
    out
}

// ---------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------

fn compose() -> Yaml {
    serde_yaml::from_str(&read("docker-compose.yml")).unwrap()
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
fn our_compose_services_are_built_from_the_one_dockerfile_with_the_fixtures_context() {
    let compose = compose();
    let built: BTreeSet<String> = services(&compose)
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .map(|(k, _)| str_of(k))
        .collect();
    assert_eq!(
        built,
        OUR_SERVICES.iter().map(|s| (*s).to_owned()).collect()
    );

    for name in OUR_SERVICES {
        let build = &service(&compose, name)["build"];
        assert_eq!(str_of(&build["context"]), ".", "{name}: build context");
        assert_eq!(
            str_of(&build["dockerfile"]),
            "deploy/Dockerfile",
            "{name}: dockerfile"
        );
        let fixtures = str_of(&build["additional_contexts"]["fixtures"]);
        let dir = repo().join(&fixtures);
        assert!(
            dir.join("checkout_session.json").is_file(),
            "{name}: the `fixtures` context {fixtures} ({}) holds no Stripe fixtures",
            dir.display()
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
    assert_eq!(
        str_of(&service(&compose, "rabbitmq")["image"]),
        "rabbitmq:3.13-management"
    );
    assert_eq!(
        str_of(&service(&compose, "postgres")["image"]),
        "postgres:16"
    );
}

#[test]
fn every_environment_variable_compose_sets_for_our_services_is_read_by_the_code() {
    let sources = rust_sources();
    // The check itself can fail: a made-up name is not found.
    assert!(!env_is_read(&sources, "INGEST_NO_SUCH_SETTING"));

    let compose = compose();
    let mut unread = Vec::new();
    for name in OUR_SERVICES {
        let env = environment(service(&compose, name));
        assert!(!env.is_empty(), "{name} sets no environment");
        for var in env.keys() {
            if !env_is_read(&sources, var) {
                unread.push(format!("{name}: {var}"));
            }
        }
    }
    assert!(
        unread.is_empty(),
        "set in docker-compose.yml but read nowhere in the code: {unread:?}"
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
    let fulfill = environment(service(&compose, "fulfill"));
    assert!(
        fulfill["DATABASE_URL"].contains("@postgres:5432/stripe_credits"),
        "{}",
        fulfill["DATABASE_URL"]
    );
    assert!(
        fulfill["AMQP_URL"].contains("@rabbitmq:5672/"),
        "{}",
        fulfill["AMQP_URL"]
    );
    assert_eq!(
        fulfill["STRIPE_SECRET_KEY"],
        "${STRIPE_SECRET_KEY:-sk_test_fake_stripe_key}"
    );
    assert_eq!(
        fulfill["STRIPE_API_BASE"],
        "${STRIPE_API_BASE:-http://fake-stripe:12111}"
    );
    assert_eq!(fulfill["STRIPE_RATE_LIMIT"], "${STRIPE_RATE_LIMIT:-25}");
    let fake = environment(service(&compose, "fake-stripe"));
    assert_eq!(fake["FAKE_STRIPE_SEED"], "1");
    // The fake's API key is the one fulfill sends by default.
    assert!(fulfill["STRIPE_SECRET_KEY"].contains(&fake["FAKE_STRIPE_API_KEY"]));
}

#[test]
fn traces_are_off_unless_asked_for_and_the_observability_profile_receives_otlp_over_http() {
    let compose = compose();
    for name in ["ingest", "fulfill"] {
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
    // Nothing waits for it: without the profile the stack must start as before.
    for name in OUR_SERVICES {
        if let Some(deps) = service(&compose, name)["depends_on"].as_mapping() {
            assert!(!deps.contains_key("jaeger"), "{name} depends on jaeger");
        }
    }
}

#[test]
fn every_port_our_services_publish_or_health_check_is_the_default_port_in_the_code() {
    let compose = compose();
    for name in OUR_SERVICES {
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
        let expected_path = if name == "fake-stripe" {
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
        let addr_var = match name {
            "ingest" => "INGEST_ADDR",
            "fulfill" => "FULFILL_ADDR",
            _ => "FAKE_STRIPE_ADDR",
        };
        if let Some(addr) = env.get(addr_var) {
            assert_eq!(
                last_number(addr),
                Some(expected),
                "{name}: {addr_var}={addr}"
            );
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
    for port in port_mappings(service(&compose, "fulfill")) {
        assert_eq!(
            port.published, None,
            "a fixed host port would break --scale fulfill=N: {port:?}"
        );
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
                    // A dependency on a profile-only service must be optional, or the
                    // stack does not start without that profile.
                    if !target["profiles"].is_null() {
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
    assert!(deps("fulfill").contains("rabbitmq") && deps("fulfill").contains("postgres"));
    assert!(checked >= 3, "only {checked} dependencies checked");
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

    // The fixtures land where the include_str! paths of the crates point.
    let workdir = &chef
        .instructions
        .iter()
        .find(|(i, _)| i == "WORKDIR")
        .unwrap()
        .1;
    let fixtures_dest = builder
        .instructions
        .iter()
        .find_map(|(i, a)| {
            (i == "COPY")
                .then(|| a.strip_prefix("--from=fixtures . "))
                .flatten()
        })
        .expect("no COPY --from=fixtures");
    assert!(
        position(
            builder,
            "COPY",
            &format!("--from=fixtures . {fixtures_dest}")
        )
        .unwrap()
            < build
    );
    let mut embedded = 0;
    for (file, text) in rust_sources() {
        for literal in embedded_paths(&text) {
            if !literal.contains("stripe-fixtures/") {
                continue;
            }
            let in_image = normalize(
                &Path::new(workdir)
                    .join(file.parent().unwrap())
                    .join(literal),
            );
            let relative = in_image.strip_prefix(fixtures_dest).unwrap_or_else(|_| {
                panic!(
                    "{} embeds {literal}: {} is outside {fixtures_dest}",
                    file.display(),
                    in_image.display()
                )
            });
            let on_disk = repo().join("../shared/stripe-fixtures").join(relative);
            assert!(
                on_disk.is_file(),
                "{} embeds {}, not in the fixtures context",
                file.display(),
                on_disk.display()
            );
            embedded += 1;
        }
    }
    assert!(
        embedded > 0,
        "found no embedded fixtures: the parsing is broken"
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
    let defaults: BTreeSet<u16> = OUR_SERVICES.iter().map(|s| default_port(s)).collect();
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
    for name in OUR_SERVICES {
        let args = build_args(service(&compose, name));
        let bin = args
            .get("BIN")
            .unwrap_or_else(|| panic!("{name}: no BIN build arg"));
        assert_eq!(bin, name);
        let in_package = binaries
            .get(name)
            .unwrap_or_else(|| panic!("no workspace package {name}: {binaries:?}"));
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
    let dir = repo().join("deploy/k8s");
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
                .unwrap_or_else(|e| panic!("deploy/k8s/{rel} is not valid YAML: {e}"));
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
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
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
    let unlisted: BTreeSet<&str> = [
        "kustomization.yaml",
        "secret.example.yaml",
        "migrate-job.yaml",
    ]
    .into();
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
        if doc["kind"] == "Deployment" {
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
fn every_env_var_the_k8s_manifests_set_on_our_containers_is_read_by_the_code() {
    let docs = k8s_documents();
    let sources = rust_sources();
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
            for name in &names {
                if !env_is_read(&sources, name) {
                    unread.push(format!("{file}: {name}"));
                }
            }
            seen.insert(str_of(&doc["metadata"]["name"]), names);
        }
    }
    assert!(
        unread.is_empty(),
        "set in deploy/k8s but read nowhere in the code: {unread:?}"
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
        let readiness = &container["readinessProbe"]["httpGet"];
        assert_eq!(str_of(&readiness["path"]), "/readyz", "{name}");
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
        let addr_var = if name == "ingest" {
            "INGEST_ADDR"
        } else {
            "FULFILL_ADDR"
        };
        if let Some(addr) = config["data"].get(addr_var) {
            assert_eq!(
                last_number(&str_of(addr)),
                Some(expected),
                "{name}: {addr_var}"
            );
        }

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
    // The queue name is the one the topology declares.
    let topology = read("shared/src/topology.rs");
    assert!(
        topology.contains("self.name(\"fulfill.checkout\")"),
        "shared/src/topology.rs renamed the queue"
    );

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
    assert_eq!(
        str_of(&trigger["metadata"]["queueName"]),
        "fulfill.checkout"
    );
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
    let main = read("fulfill/src/main.rs");
    assert!(
        main.contains("Command::Migrate =>"),
        "fulfill has no `migrate` subcommand"
    );
}
