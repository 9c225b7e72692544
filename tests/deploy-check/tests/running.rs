//! The deployment files against the running binaries:
//!
//! - each service of docker-compose.yml starts with the environment compose gives it and
//!   answers its health check on the port compose checks;
//! - every metric a Grafana panel or a Prometheus rule queries is one the services
//!   export, read from a real `/metrics` scrape of fresh processes;
//! - the alert rules and the Prometheus configuration pass `promtool` (Debian package
//!   `prometheus`; `.ci/run` installs it, and under `CI=true` a missing promtool fails).
//!
//! Real RabbitMQ and PostgreSQL, each test with its own queue prefix and database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use e2e::{Proc, binaries, free_port, log_dir, wait_ok};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use test_support::{broker::TestBroker, db::TestDb};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn compose() -> Yaml {
    let mut compose: Yaml = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    compose
}

fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => String::new(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// `${NAME:-default}` as Compose interpolates it with NAME unset; anything else as is.
fn interpolate_unset(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, default)| default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The environment compose gives a service, interpolated as with nothing set.
fn compose_environment(compose: &Yaml, service: &str) -> BTreeMap<String, String> {
    compose["services"][service]["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{service}: environment is not a mapping"))
        .iter()
        .map(|(k, v)| (scalar(k), interpolate_unset(&scalar(v))))
        .collect()
}

/// Port and path of the service's `/dev/tcp/127.0.0.1/PORT` + `GET /path` health check.
fn healthcheck(compose: &Yaml, service: &str) -> (u16, String) {
    let command: Vec<String> = compose["services"][service]["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(scalar)
        .collect();
    let command = command.join(" ");
    let port = command
        .split("/dev/tcp/127.0.0.1/")
        .nth(1)
        .and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{service}: no /dev/tcp port in {command}"));
    let path = command
        .split("GET ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{service}: no GET in {command}"))
        .to_owned();
    (port, path)
}

/// A loopback address of its own (all of 127.0.0.0/8 is loopback on Linux), so that the
/// fixed ports compose configures do not collide with a stack running on 127.0.0.1.
fn private_loopback() -> String {
    let n: u32 = rand_u32();
    format!(
        "127.{}.{}.{}",
        1 + n % 250,
        1 + (n >> 8) % 250,
        2 + (n >> 16) % 250
    )
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_starts_with_its_compose_environment_and_answers_the_compose_health_check() {
    let compose = compose();
    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let client = test_support::http_client();
    let logs = log_dir("compose-start");
    let ip = private_loopback();
    let mut running = Vec::new();
    for (service, binary) in [
        ("fake-stripe", "fake-stripe"),
        ("fulfill", "fulfill"),
        ("ingest", "ingest"),
    ] {
        let mut env = compose_environment(&compose, service);
        // Only what points at other containers changes: the broker and database of this
        // test, and the listen address on a loopback address of this test (same port).
        if env.contains_key("AMQP_URL") {
            env.insert("AMQP_URL".into(), broker.url.clone());
            env.insert("AMQP_TOPOLOGY_PREFIX".into(), broker.prefix.clone());
        }
        if env.contains_key("DATABASE_URL") {
            env.insert("DATABASE_URL".into(), db.url.clone());
        }
        let addr_var = match binary {
            "ingest" => ingest::config::INGEST_ADDR,
            "fulfill" => fulfill::config::FULFILL_ADDR,
            _ => fake_stripe::ADDR_VARIABLE,
        };
        let addr = env
            .get(addr_var)
            .unwrap_or_else(|| panic!("{service}: compose sets no {addr_var}"))
            .clone();
        let (port, path) = healthcheck(&compose, service);
        let (host, configured_port) = addr.rsplit_once(':').unwrap();
        assert_eq!(host, "0.0.0.0", "{service}: {addr_var}={addr}");
        assert_eq!(
            configured_port,
            port.to_string(),
            "{service}: health check port"
        );
        env.insert(addr_var.into(), format!("{ip}:{port}"));
        let vars: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let mut process = Proc::start(service, &binaries().join(binary), &[], &vars, &logs);
        let url = format!("http://{ip}:{port}{path}");
        let healthy = wait_ok(&client, &url, Duration::from_secs(60)).await;
        assert!(
            healthy,
            "{service} with compose's environment did not answer {url}:\n{}",
            process.output()
        );
        assert!(process.is_running(), "{service} exited");
        running.push(process);
    }
    for mut process in running.into_iter().rev() {
        let status = process.terminate(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not stop cleanly on SIGTERM: {status:?}\n{}",
            process.name,
            process.output()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Metrics: what the dashboard and the rules query, against a real scrape
// ---------------------------------------------------------------------------------------

/// Series names Prometheus makes itself, which no service exports.
const PROMETHEUS_OWN: [&str; 1] = ["up"];

/// PromQL words that are not metric names.
const PROMQL_WORDS: [&str; 12] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
];

/// The metric names a PromQL expression reads: identifiers that are not functions (followed
/// by `(`), not label names (inside `{…}` or the label list of `by (…)` and its kin), not
/// inside strings or `[…]` ranges, and not keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, label matchers and range selectors say nothing about metric names.
    let mut cleaned = String::new();
    let mut chars = expr.chars().peekable();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '{' => depth_brace += 1,
            '}' => {
                depth_brace -= 1;
                cleaned.push(' ');
            }
            '[' => depth_bracket += 1,
            ']' => {
                depth_bracket -= 1;
                cleaned.push(' ');
            }
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
    }
    let is_ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let bytes: Vec<char> = cleaned.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_label_list = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '$' {
            // A Grafana variable such as $__rate_interval.
            i += 1;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            continue;
        }
        if is_ident_start(c) && (i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != '.') {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let mut j = i;
            while j < bytes.len() && bytes[j].is_whitespace() {
                j += 1;
            }
            let next_word: String = bytes[j..].iter().take_while(|c| is_ident(**c)).collect();
            // `sum (…)`, and `sum by (…) (…)`: aggregations, not names.
            let call = j < bytes.len() && bytes[j] == '('
                || ["by", "without"].contains(&next_word.to_ascii_lowercase().as_str());
            let lower = word.to_ascii_lowercase();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&lower.as_str())
            {
                skip_label_list = call;
                continue;
            }
            if call || PROMQL_WORDS.contains(&lower.as_str()) {
                continue;
            }
            names.insert(word);
            continue;
        }
        if c == '(' && skip_label_list {
            // Skip the label list of `by (…)` / `on (…)`.
            while i < bytes.len() && bytes[i] != ')' {
                i += 1;
            }
            skip_label_list = false;
        }
        if c.is_ascii_digit() {
            // Numbers (and durations such as 5m, 1h, 1e3) are not names.
            while i < bytes.len() && (is_ident(bytes[i]) || bytes[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Every PromQL expression of the dashboard's panels (with the panel title).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Json =
        serde_json::from_str(&read("deploy/grafana/dashboards/stripe-credits.json")).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().to_owned();
            out.push((format!("panel {:?}", panel["title"]), expr));
        }
    }
    out
}

/// Every alert rule's expression (with the alert's name).
fn rule_queries() -> Vec<(String, String)> {
    let rules: Yaml = serde_yaml::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = scalar(&rule["alert"]);
            out.push((format!("alert {name}"), scalar(&rule["expr"])));
        }
    }
    out
}

/// The series names a scrape makes queryable: per `# TYPE` family, the names Prometheus
/// stores (counter → `_total`, histogram → `_bucket`/`_count`/`_sum`, info → `_info`),
/// plus every sample's own name. A family with no series yet (only HELP and TYPE) counts:
/// its series appear with the first event.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                "summary" => &["", "_count", "_sum"],
                "info" => &["_info"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{family}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Starts fresh ingest and fulfill processes and returns their `/metrics` text, after
/// checking the Content-Type they declare.
async fn scrape_fresh_services() -> (String, String) {
    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let client = test_support::http_client();
    let logs = log_dir("metrics-scrape");
    let ingest_port = free_port();
    let fulfill_port = free_port();
    let common = [
        ("AMQP_URL", broker.url.clone()),
        ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
    ];
    let mut ingest_env = common.to_vec();
    ingest_env.extend([
        ("STRIPE_WEBHOOK_SECRET", "whsec_metrics_test".to_owned()),
        ("INGEST_ADDR", format!("127.0.0.1:{ingest_port}")),
    ]);
    let mut fulfill_env = common.to_vec();
    fulfill_env.extend([
        ("DATABASE_URL", db.url.clone()),
        ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.to_owned()),
        // Never called: nothing is delivered in this test.
        ("STRIPE_API_BASE", "http://127.0.0.1:9".to_owned()),
        ("FULFILL_ADDR", format!("127.0.0.1:{fulfill_port}")),
    ]);
    let ingest = Proc::start(
        "ingest",
        &binaries().join("ingest"),
        &[],
        &ingest_env,
        &logs,
    );
    let fulfill = Proc::start(
        "fulfill",
        &binaries().join("fulfill"),
        &[],
        &fulfill_env,
        &logs,
    );
    let mut scrapes = Vec::new();
    for (process, port) in [(&ingest, ingest_port), (&fulfill, fulfill_port)] {
        let base = format!("http://127.0.0.1:{port}");
        assert!(
            wait_ok(&client, &format!("{base}/readyz"), Duration::from_secs(60)).await,
            "{} did not become ready:\n{}",
            process.name,
            process.output()
        );
        // A request through the API, so that the request metrics have a series too.
        let _ = client.get(format!("{base}/healthz")).send().await;
        let response = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(shared::telemetry::metrics::CONTENT_TYPE),
            "{}: /metrics must declare the OpenMetrics text it writes",
            process.name
        );
        let text = response.text().await.unwrap();
        assert!(
            text.trim_end().ends_with("# EOF"),
            "{}: not OpenMetrics",
            process.name
        );
        scrapes.push(text);
    }
    let fulfill_text = scrapes.pop().unwrap();
    let ingest_text = scrapes.pop().unwrap();
    drop((ingest, fulfill));
    (ingest_text, fulfill_text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alert_rules_query_is_one_the_services_export() {
    let (ingest, fulfill) = scrape_fresh_services().await;
    let exported: BTreeSet<String> = exported_names(&ingest)
        .into_iter()
        .chain(exported_names(&fulfill))
        .collect();
    // The series an operator needs are there in a fresh scrape, before any event.
    for name in [
        "ingest_webhook_requests_total",
        "ingest_publish_duration_seconds_bucket",
        "ingest_build_info",
        "fulfill_api_requests_total",
        "fulfill_api_request_duration_seconds_bucket",
        "fulfill_stripe_request_duration_seconds_bucket",
        "fulfill_stripe_budget_wait_duration_seconds_bucket",
        "fulfill_credits_reversed_total",
        "fulfill_reconcile_last_success_timestamp_seconds",
        "fulfill_sessions_needing_attention",
        "fulfill_dead_letters_queued",
        "fulfill_queue_messages",
        "fulfill_build_info",
    ] {
        assert!(
            exported.contains(name),
            "a fresh scrape lacks {name}:\n{ingest}\n{fulfill}"
        );
    }
    assert!(
        fulfill.contains(
            "fulfill_api_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}"
        ),
        "API requests are counted by route pattern and status:\n{fulfill}"
    );
    assert!(ingest.contains("ingest_webhook_requests_total{outcome=\"body_timeout\"} 0"));

    let queries: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .chain(rule_queries())
        .collect();
    assert!(queries.len() >= 20, "only {} queries found", queries.len());
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric found in {expr:?}");
        for name in names {
            if !exported.contains(&name) && !PROMETHEUS_OWN.contains(&name.as_str()) {
                missing.push(format!("{place}: {name} (in {expr})"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "queried but not exported by ingest or fulfill:\n{}",
        missing.join("\n")
    );
    // The dashboard shows what the issue asks of it.
    for needed in [
        "ingest_webhook_requests_total",
        "ingest_publish_duration_seconds_bucket",
        "fulfill_queue_messages",
        "fulfill_credits_granted_total",
        "fulfill_credits_reversed_total",
        "fulfill_stripe_requests_total",
        "fulfill_stripe_budget_wait_duration_seconds_bucket",
        "fulfill_dead_letters_queued",
        "fulfill_sessions_needing_attention",
    ] {
        assert!(used.contains(needed), "nothing queries {needed}");
    }
}

#[test]
fn the_metric_name_extraction_finds_names_and_only_names() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(fulfill_api_request_duration_seconds_bucket{route!="/metrics"}[$__rate_interval])))"#
        ),
        ["fulfill_api_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names("time() - max(fulfill_reconcile_last_success_timestamp_seconds) > 7200"),
        ["fulfill_reconcile_last_success_timestamp_seconds"]
    );
    assert_eq!(
        names("min by (job, instance) (a_b) == 0 or max(c offset 1h) > 1e3"),
        ["a_b", "c"]
    );
    assert_eq!(names(r#"up{job=~"ingest|fulfill"} == 0"#), ["up"]);
    let scrape = "# HELP x_requests Requests.\n# TYPE x_requests counter\n# TYPE x_seconds histogram\nx_seconds_bucket{le=\"1\"} 0\n# TYPE x_build info\nx_build_info{version=\"1\"} 1\n# EOF\n";
    let exported = exported_names(scrape);
    for name in [
        "x_requests_total",
        "x_seconds_bucket",
        "x_seconds_count",
        "x_build_info",
    ] {
        assert!(exported.contains(name), "{name}: {exported:?}");
    }
}

// ---------------------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------------------

/// `promtool`, or `None` outside CI when it is not installed (under `CI=true` it must be).
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "promtool is missing under CI=true: install the Debian package `prometheus` (.ci/run does)"
        );
        eprintln!("promtool not installed (apt-get install prometheus): skipping outside CI");
    }
    found
}

fn run_promtool(promtool: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_and_the_prometheus_configuration_pass_promtool() {
    let Some(promtool) = promtool() else {
        return;
    };
    run_promtool(
        &promtool,
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    run_promtool(
        &promtool,
        &["test", "rules", "deploy/prometheus/alerts.test.yml"],
    );
    // The configuration names the rule file where compose mounts it; check a copy that
    // names it where it is here.
    let config = read("deploy/prometheus/prometheus.yml").replace(
        "/etc/prometheus/alerts.yml",
        &repo()
            .join("deploy/prometheus/alerts.yml")
            .display()
            .to_string(),
    );
    let copy = std::env::temp_dir().join(format!("prometheus-{}.yml", std::process::id()));
    std::fs::write(&copy, config).unwrap();
    run_promtool(&promtool, &["check", "config", copy.to_str().unwrap()]);
    let _ = std::fs::remove_file(copy);
}
