//! Hostile HTTP: oversize and slow bodies, huge and repeated headers, thousands of
//! signatures, floods of bad signatures. Each is answered fast with a 4xx, and valid
//! traffic is still served.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use futures_util::future::join_all;

use crate::helpers::{Options, QUIET, SECRET, event, signature, spawn_app, spawn_app_with};

fn addr(app: &crate::helpers::TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Sends raw bytes, returns the status line's code (0 if the connection was just closed).
fn raw_status(address: &str, bytes: &[u8], timeout: Duration) -> u16 {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_header_with_thousands_of_signatures_is_refused_quickly() {
    let app = spawn_app().await;
    let (_, body) = event("checkout.session.completed");
    let good = signature(&body, SECRET);
    let mut header = good.split(',').next().unwrap().to_owned();
    for _ in 0..2000 {
        header.push_str(",v1=0000000000000000000000000000000000000000000000000000000000000000");
    }
    let started = Instant::now();
    let response = app.post_webhook(body, Some(&header)).await;
    assert!(
        matches!(response.status().as_u16(), 400 | 431),
        "{}",
        response.status()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        app.broker
            .take(&app.broker.topology.checkout_queue(), QUIET)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn huge_and_many_headers_are_refused() {
    let app = spawn_app().await;
    let a = addr(&app);
    let huge = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(64 * 1024)
    );
    let status = tokio::task::spawn_blocking(move || {
        raw_status(&a, huge.as_bytes(), Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(status == 431 || status == 400 || status == 0, "{status}");
    let a = addr(&app);
    let mut many = String::from("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n");
    for i in 0..500 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Content-Length: 2\r\n\r\n{}");
    let status = tokio::task::spawn_blocking(move || {
        raw_status(&a, many.as_bytes(), Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(status == 431 || status == 400 || status == 0, "{status}");
    // Still serving.
    let (_, body) = event("checkout.session.completed");
    assert_eq!(app.post_signed(body).await.status(), 200);
}

#[tokio::test]
async fn repeated_signature_headers_do_not_combine_into_a_valid_one() {
    let app = spawn_app().await;
    let (_, body) = event("checkout.session.completed");
    let good = signature(&body, SECRET);
    let response = app
        .client
        .post(format!("{}/webhooks/stripe", app.address))
        .header("Stripe-Signature", "t=1,v1=00")
        .header("Stripe-Signature", good)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_slow_client_is_cut_off_by_the_body_timeout() {
    let app = spawn_app_with(Options {
        body_timeout: Some(Duration::from_millis(800)),
        ..Options::default()
    })
    .await;
    let a = addr(&app);
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            .unwrap();
        // Trickle a byte every 300 ms: never finishes in time.
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(300));
            if s.write_all(b" ").is_err() {
                break;
            }
            let mut buf = [0u8; 64];
            s.set_nonblocking(true).unwrap();
            let n = s.read(&mut buf).unwrap_or(0);
            s.set_nonblocking(false).unwrap();
            if n > 0 {
                return String::from_utf8_lossy(&buf[..n])
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0u16);
            }
        }
        0
    })
    .await
    .unwrap();
    assert_eq!(status, 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Counted as what it is.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ingest_webhook_requests_total{outcome=\"body_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_flood_of_bad_signatures_is_answered_fast_and_valid_events_still_land() {
    let app = spawn_app().await;
    let (_, template) = event("checkout.session.completed");
    let bad = signature(&template, "whsec_attacker");
    let started = Instant::now();
    let floods = join_all((0..1500).map(|_| app.post_webhook(template.clone(), Some(&bad))));
    let valid = join_all((0..20).map(|_| async {
        let (_, body) = event("checkout.session.completed");
        app.post_signed(body).await.status().as_u16()
    }));
    let (flooded, valid) = tokio::join!(floods, valid);
    let elapsed = started.elapsed();
    assert!(flooded.iter().all(|r| r.status() == 400));
    assert!(valid.iter().all(|s| *s == 200), "{valid:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    let landed = app
        .broker
        .drain(&app.broker.topology.checkout_queue(), QUIET)
        .await;
    assert_eq!(
        landed.len(),
        20,
        "exactly the valid events are in the queue"
    );
}
