//! One trace from Stripe's POST to the credit, across the queue: the real ingest and
//! fulfill binaries export OTLP/HTTP JSON to a receiver in this test process, and the
//! spans they send are checked for their trace, their parent links, their semantic
//! convention attributes and the absence of secrets. The same run scrapes `/metrics`
//! (Prometheus stays as it was with tracing on) and reads the log files (lines carry
//! the trace id, so logs and traces join).

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use e2e::{Proc, binaries, free_port, log_dir, wait_ok};
use serde_json::{Value, json};
use test_support::{broker::TestBroker, db::TestDb};

const SECRET: &str = "whsec_e2e_tracing_secret";
const COMPLETED: &str = "checkout.session.completed";
const USER: &str = "trace-buyer";

/// OTLP span kinds (opentelemetry-proto `Span.SpanKind`).
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

/// What an OTLP/HTTP collector would have received: every `ExportTraceServiceRequest`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Value>>>);

async fn export_traces(
    request: HttpRequest,
    body: web::Bytes,
    received: web::Data<Received>,
) -> HttpResponse {
    let json = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    match serde_json::from_slice::<Value>(&body) {
        Ok(export) if json => {
            received.0.lock().unwrap().push(export);
            HttpResponse::Ok()
                .content_type("application/json")
                .body("{}")
        }
        _ => HttpResponse::BadRequest().finish(),
    }
}

/// A small OTLP/HTTP receiver on a free loopback port; returns its base URL.
fn start_receiver(received: Received) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(received.clone()))
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .route("/v1/traces", web::post().to(export_traces))
    })
    .listen(listener)
    .unwrap()
    .workers(1)
    .disable_signals()
    .run();
    tokio::spawn(server);
    url
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    name: String,
    kind: i64,
    attributes: BTreeMap<String, String>,
    /// Every attribute value anywhere in the export: span, events, links, resource.
    all_values: Vec<String>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// An OTLP `AnyValue` as text (ints arrive as strings or numbers, by the JSON mapping).
fn any_value(value: &Value) -> String {
    let Some((_, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return String::new();
    };
    match inner {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn attributes(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_owned(),
                any_value(&kv["value"]),
            )
        })
        .collect()
}

fn kind(value: &Value) -> i64 {
    value.as_i64().unwrap_or_else(|| match value.as_str() {
        Some("SPAN_KIND_SERVER") => SERVER,
        Some("SPAN_KIND_CLIENT") => CLIENT,
        Some("SPAN_KIND_PRODUCER") => PRODUCER,
        Some("SPAN_KIND_CONSUMER") => CONSUMER,
        _ => 0,
    })
}

fn spans(received: &Received) -> Vec<Span> {
    let mut out = Vec::new();
    for export in received.0.lock().unwrap().iter() {
        for resource_spans in export["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(&resource_spans["resource"]["attributes"]);
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans["scopeSpans"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let attributes = attributes(&span["attributes"]);
                    let mut all_values: Vec<String> = resource.values().cloned().collect();
                    all_values.extend(attributes.values().cloned());
                    for nested in ["events", "links"] {
                        for item in span[nested].as_array().into_iter().flatten() {
                            all_values.extend(attributes_values(&item["attributes"]));
                            if let Some(name) = item["name"].as_str() {
                                all_values.push(name.to_owned());
                            }
                        }
                    }
                    all_values.push(span["name"].as_str().unwrap_or_default().to_owned());
                    all_values.push(
                        span["status"]["message"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                    out.push(Span {
                        service: service.clone(),
                        trace_id: span["traceId"].as_str().unwrap_or_default().to_owned(),
                        span_id: span["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent_id: span["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                        name: span["name"].as_str().unwrap_or_default().to_owned(),
                        kind: kind(&span["kind"]),
                        attributes,
                        all_values,
                    });
                }
            }
        }
    }
    out
}

fn attributes_values(list: &Value) -> Vec<String> {
    attributes(list).into_values().collect()
}

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what} span, got {found:#?}");
    found[0]
}

/// Whether `descendant` is `ancestor` or below it, by parent links.
fn descends_from(spans: &[Span], descendant: &Span, ancestor: &Span) -> bool {
    let mut current = Some(descendant);
    while let Some(span) = current {
        if span.span_id == ancestor.span_id {
            return true;
        }
        current = spans.iter().find(|s| s.span_id == span.parent_id);
    }
    false
}

/// Text logs are coloured (`ESC [ … m`), even into a file.
fn without_ansi_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn counter(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_the_webhook_to_the_credit_without_secrets() {
    test_support::init_tracing();
    let broker = TestBroker::new().await;
    let db = TestDb::new().await;
    let received = Received::default();
    let receiver = start_receiver(received.clone());
    let bins = binaries();
    let logs = log_dir("tracing");
    let client = test_support::http_client();
    let otel = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
            // Export within 100 ms; shutdown flushes the rest anyway.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("AMQP_URL", broker.url.clone()),
            ("AMQP_TOPOLOGY_PREFIX", broker.prefix.clone()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    };

    let (_fake, stripe) = e2e::start_fake_stripe(&client, &logs).await;

    let fulfill_port = free_port();
    let fulfill_url = format!("http://127.0.0.1:{fulfill_port}");
    let mut fulfill_env = otel(&[("LOG_FORMAT", "json")]);
    fulfill_env.extend([
        ("DATABASE_URL", db.url.clone()),
        ("STRIPE_SECRET_KEY", fake_stripe::DEFAULT_API_KEY.to_owned()),
        ("STRIPE_API_BASE", stripe.clone()),
        ("FULFILL_ADDR", format!("127.0.0.1:{fulfill_port}")),
    ]);
    let mut fulfill = Proc::start("fulfill", &bins.join("fulfill"), &[], &fulfill_env, &logs);
    assert!(
        wait_ok(
            &client,
            &format!("{fulfill_url}/readyz"),
            Duration::from_secs(60)
        )
        .await,
        "fulfill not ready:\n{}",
        fulfill.output()
    );

    let ingest_port = free_port();
    let ingest_url = format!("http://127.0.0.1:{ingest_port}");
    let mut ingest_env = otel(&[]);
    ingest_env.extend([
        ("STRIPE_WEBHOOK_SECRET", SECRET.to_owned()),
        ("INGEST_ADDR", format!("127.0.0.1:{ingest_port}")),
        // ingest logs each accepted event at debug (README, "Logs").
        ("RUST_LOG", "info,ingest=debug,lapin=warn".to_owned()),
    ]);
    let mut ingest = Proc::start("ingest", &bins.join("ingest"), &[], &ingest_env, &logs);
    assert!(
        wait_ok(
            &client,
            &format!("{ingest_url}/readyz"),
            Duration::from_secs(30)
        )
        .await,
        "ingest not ready:\n{}",
        ingest.output()
    );

    // A paid 10-credit pack, its completed event signed and posted as Stripe would.
    let fake = async |path: String, body: Value| -> Value {
        let r = client
            .post(format!("{stripe}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    };
    let session = fake(
        "/_fake/sessions".into(),
        json!({"client_reference_id": USER, "line_items": [["price_pack_10", 1]], "payment_status": "paid"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = fake(
        format!("/_fake/sessions/{session}/events"),
        json!({"type": COMPLETED}),
    )
    .await;
    let body = event["body"].as_str().unwrap().as_bytes().to_vec();
    let event_id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let signature = fake_stripe::sign_webhook(&body, SECRET, fake_stripe::now());
    let posted = client
        .post(format!("{ingest_url}/webhooks/stripe"))
        .header("Stripe-Signature", &signature)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);

    let balance = async || -> i64 {
        let v: Value = client
            .get(format!("{fulfill_url}/users/{USER}/balance"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["credits"].as_i64().unwrap()
    };
    let credited = test_support::wait_for(Duration::from_secs(30), || async {
        (balance().await == 10).then_some(())
    })
    .await;
    assert!(credited.is_some(), "not credited:\n{}", fulfill.output());

    // Prometheus is untouched by tracing: the counters moved by exactly this event.
    let scrape = async |url: &str| {
        client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let m = scrape(&ingest_url).await;
    assert_eq!(
        counter(&m, "ingest_webhook_requests_total{outcome=\"accepted\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        counter(&m, "ingest_publish_duration_seconds_count{result=\"ack\"}"),
        1.0,
        "{m}"
    );
    let m = scrape(&fulfill_url).await;
    assert_eq!(
        counter(
            &m,
            "fulfill_events_total{event_type=\"checkout.session.completed\",outcome=\"credited\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(counter(&m, "fulfill_sessions_credited_total"), 1.0, "{m}");
    assert_eq!(counter(&m, "fulfill_credits_granted_total"), 10.0, "{m}");

    // The success page converges on fulfill's main runtime, still in its request's trace.
    let page = client
        .post(format!("{fulfill_url}/checkout/sessions/{session}/fulfill"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "{}", fulfill.output());

    // SIGTERM flushes what is still buffered before the processes exit.
    for p in [&mut ingest, &mut fulfill] {
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} exited with {status:?}:\n{}",
            p.name,
            p.output()
        );
    }

    let all = spans(&received);
    let server = one(&all, "ingest server", |s| {
        s.service == "ingest" && s.kind == SERVER && s.attr("url.path") == Some("/webhooks/stripe")
    });
    assert_eq!(server.name, "POST /webhooks/stripe");
    assert_eq!(server.parent_id, "", "the webhook's server span is a root");
    assert_eq!(server.attr("http.request.method"), Some("POST"));
    assert_eq!(server.attr("http.route"), Some("/webhooks/stripe"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    let trace = server.trace_id.clone();
    assert_eq!(trace.len(), 32, "{trace:?}");

    let producer = one(&all, "ingest producer", |s| {
        s.service == "ingest" && s.kind == PRODUCER
    });
    let exchange = format!("{}stripe.events", broker.prefix);
    assert_eq!(producer.trace_id, trace);
    assert_eq!(
        producer.parent_id, server.span_id,
        "producer under the server span"
    );
    assert_eq!(producer.name, format!("publish {exchange}"));
    assert_eq!(producer.attr("messaging.system"), Some("rabbitmq"));
    assert_eq!(producer.attr("messaging.operation.type"), Some("send"));
    assert_eq!(
        producer.attr("messaging.destination.name"),
        Some(exchange.as_str())
    );
    assert_eq!(
        producer.attr("messaging.rabbitmq.destination.routing_key"),
        Some(COMPLETED)
    );
    assert_eq!(
        producer.attr("messaging.message.id"),
        Some(event_id.as_str())
    );
    assert_eq!(producer.attr("event_id"), Some(event_id.as_str()));
    assert_eq!(producer.attr("event_type"), Some(COMPLETED));
    assert_eq!(producer.attr("session_id"), Some(session.as_str()));

    let consumer = one(&all, "fulfill consumer", |s| {
        s.service == "fulfill" && s.kind == CONSUMER
    });
    assert_eq!(consumer.trace_id, trace, "fulfill continues ingest's trace");
    assert_eq!(
        consumer.parent_id, producer.span_id,
        "the consumer's parent is the producer span"
    );
    assert_eq!(
        consumer.name,
        format!("process {}fulfill.checkout", broker.prefix)
    );
    assert_eq!(consumer.attr("messaging.system"), Some("rabbitmq"));
    assert_eq!(consumer.attr("messaging.operation.type"), Some("process"));
    assert_eq!(
        consumer.attr("messaging.message.id"),
        Some(event_id.as_str())
    );
    assert_eq!(consumer.attr("event_id"), Some(event_id.as_str()));
    assert_eq!(consumer.attr("outcome"), Some("credited"));

    let handled = one(&all, "fulfill.event", |s| s.name == "fulfill.event");
    assert_eq!(handled.parent_id, consumer.span_id);
    assert_eq!(handled.attr("event_id"), Some(event_id.as_str()));
    assert_eq!(handled.attr("event_type"), Some(COMPLETED));
    assert_eq!(handled.attr("session_id"), Some(session.as_str()));
    assert_eq!(handled.attr("user_id"), Some(USER));
    let fulfilled = one(&all, "fulfill.session", |s| {
        s.name == "fulfill.session" && s.trace_id == trace
    });
    assert_eq!(fulfilled.parent_id, handled.span_id);
    assert_eq!(fulfilled.attr("user_id"), Some(USER));

    let stripe_calls: Vec<&Span> = all
        .iter()
        .filter(|s| {
            s.service == "fulfill"
                && s.kind == CLIENT
                && s.attr("http.request.method").is_some()
                && s.trace_id == trace
        })
        .collect();
    assert!(
        !stripe_calls.is_empty(),
        "no Stripe client span in {all:#?}"
    );
    for call in &stripe_calls {
        assert_eq!(call.trace_id, trace);
        assert!(descends_from(&all, call, fulfilled), "{call:#?}");
        assert_eq!(call.name, "GET");
        assert_eq!(call.attr("http.response.status_code"), Some("200"));
        assert_eq!(call.attr("server.address"), Some("127.0.0.1"));
        let url = call.attr("url.full").unwrap();
        assert!(url.starts_with(&format!("{stripe}/v1/")), "{url}");
        assert!(!url.contains('?'), "url.full keeps no query string: {url}");
    }
    assert!(
        stripe_calls
            .iter()
            .any(|c| c.attr("url.full").unwrap().ends_with(&session)),
        "the session is refetched: {stripe_calls:#?}"
    );
    let transaction = one(&all, "db.transaction", |s| {
        s.name == "db.transaction" && s.trace_id == trace
    });
    assert_eq!(transaction.kind, CLIENT);
    assert_eq!(transaction.attr("db.system.name"), Some("postgresql"));
    assert!(descends_from(&all, transaction, fulfilled));

    // Probes and scrapes make no spans; the balance reads are traces of their own.
    assert!(all.iter().all(|s| !matches!(
        s.attr("url.path"),
        Some("/readyz" | "/healthz" | "/metrics")
    )));
    let read = all
        .iter()
        .find(|s| {
            s.service == "fulfill"
                && s.kind == SERVER
                && s.attr("http.request.method") == Some("GET")
        })
        .expect("a server span for the balance reads");
    assert_eq!(read.name, "GET /users/{user_id}/balance");
    assert_ne!(read.trace_id, trace);

    // The success page's convergence, run on another runtime than its request's, is in
    // that request's trace, below its server span.
    let page = one(&all, "success page server", |s| {
        s.service == "fulfill" && s.kind == SERVER && s.attr("http.request.method") == Some("POST")
    });
    assert_eq!(page.name, "POST /checkout/sessions/{session_id}/fulfill");
    assert_ne!(page.trace_id, trace);
    let converged = one(&all, "success page fulfill.session", |s| {
        s.name == "fulfill.session" && s.trace_id == page.trace_id
    });
    assert!(descends_from(&all, converged, page), "{converged:#?}");

    // Nothing secret, and no email, anywhere in what was exported.
    let emails: Vec<String> = String::from_utf8_lossy(&body)
        .split('"')
        .filter(|s| s.contains('@'))
        .map(str::to_owned)
        .collect();
    let forbidden = [
        SECRET.to_owned(),
        fake_stripe::DEFAULT_API_KEY.to_owned(),
        signature.clone(),
        signature.split(",v1=").nth(1).unwrap().to_owned(),
        "Bearer".to_owned(),
    ];
    for span in &all {
        for value in &span.all_values {
            for secret in forbidden.iter().chain(&emails) {
                assert!(
                    !value.contains(secret.as_str()),
                    "{secret:?} in span {span:#?}"
                );
            }
            assert!(
                !value.contains('@'),
                "an email-like value in span {span:#?}"
            );
        }
    }

    // Logs join traces: the line that accepted the event (debug, enabled above) and the
    // line that credited it name the trace (ingest logs text, fulfill JSON).
    let ingest_log = without_ansi_colours(&ingest.output());
    let accepted = ingest_log
        .lines()
        .find(|l| l.contains("event accepted"))
        .unwrap();
    assert!(
        accepted.contains(&format!("trace_id={trace}")),
        "{accepted}"
    );
    let fulfill_log = fulfill.output();
    let credited = fulfill_log
        .lines()
        .find(|l| l.contains("session credited"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .unwrap();
    let root = &credited["spans"][0];
    assert_eq!(root["name"], "process", "{credited}");
    assert_eq!(root["trace_id"], trace.as_str(), "{credited}");
    assert_eq!(root["span_id"], consumer.span_id.as_str(), "{credited}");
}
