use crate::helpers::{REAL_EVENT, event, signature, spawn_app};

fn counter(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_requests_by_outcome_and_failures_by_reason() {
    let app = spawn_app().await;
    assert_eq!(app.post_signed(REAL_EVENT.to_vec()).await.status(), 200);
    let (_, body) = event("checkout.session.expired");
    assert_eq!(app.post_signed(body.clone()).await.status(), 200);
    let wrong = signature(&body, "whsec_wrong");
    assert_eq!(
        app.post_webhook(body.clone(), Some(&wrong)).await.status(),
        400
    );
    assert_eq!(app.post_webhook(body, None).await.status(), 400);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    // prometheus-client writes OpenMetrics text, and /metrics says so.
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let m = response.text().await.unwrap();
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
    // Every outcome the HELP names has a series from the start.
    for outcome in ingest::metrics::OUTCOMES {
        assert!(
            m.contains(&format!(
                "ingest_webhook_requests_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome}: {m}"
        );
    }
    assert!(m.contains("ingest_build_info{version=\""), "{m}");
    assert_eq!(
        counter(&m, "ingest_webhook_requests_total{outcome=\"accepted\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        counter(
            &m,
            "ingest_webhook_requests_total{outcome=\"bad_signature\"}"
        ),
        2.0
    );
    assert_eq!(
        counter(&m, "ingest_signature_failures_total{reason=\"no_match\"}"),
        1.0
    );
    assert_eq!(
        counter(
            &m,
            "ingest_signature_failures_total{reason=\"missing_header\"}"
        ),
        1.0
    );
    assert_eq!(
        counter(&m, "ingest_publish_duration_seconds_count{result=\"ack\"}"),
        2.0
    );
    assert_eq!(counter(&m, "ingest_broker_connected"), 1.0);
}

#[tokio::test]
async fn health_and_readiness_answer_when_the_broker_is_up() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
}
