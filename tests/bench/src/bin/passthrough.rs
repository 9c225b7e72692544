//! `passthrough`: the floor under ingest, for `bench ingest` to measure beside it.
//!
//! The same two crates in the same shape as ingest — actix-web with its default workers
//! and TCP_NODELAY, one lapin connection with four confirm channels taken in turn,
//! mimalloc, each request answered 200 only after its own confirm — and nothing between
//! them: no signature, no JSON, no spans, no logs, no metrics. What it serves at c=64 is
//! what any endpoint built on these crates that answers after the confirm can serve on
//! these cores; what ingest serves below it is the cost of ingest's own work.
//!
//! Not a service: it publishes whatever it is sent to the bench's topology.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use shared::topology::Topology;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// As ingest's default (`INGEST_PUBLISH_CHANNELS`).
const CHANNELS: usize = 4;

struct State {
    channels: Vec<Channel>,
    next: AtomicUsize,
    exchange: ShortString,
}

async fn webhook(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let index = state.next.fetch_add(1, Ordering::Relaxed) % state.channels.len();
    let confirm = async {
        state.channels[index]
            .basic_publish(
                state.exchange.clone(),
                ShortString::from("checkout.session.completed"),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json")),
            )
            .await?
            .await
    }
    .await;
    match confirm {
        Ok(Confirmation::Ack(None)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"received":true}"#),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

async fn readyz() -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

/// `PASSTHROUGH_WORKERS` (HTTP workers, default actix's) and `PASSTHROUGH_RUNTIME=current`
/// (lapin's tasks and reactor on one thread instead of a multi-thread runtime) try
/// other arrangements of the same crates.
fn main() -> anyhow::Result<()> {
    let runtime = match std::env::var("PASSTHROUGH_RUNTIME").ok().as_deref() {
        Some("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        None | Some("multi") => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        Some(other) => anyhow::bail!("PASSTHROUGH_RUNTIME is current or multi, not {other:?}"),
    };
    runtime.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let (url, prefix, addr) = (
        var("AMQP_URL")?,
        var("AMQP_TOPOLOGY_PREFIX")?,
        var("PASSTHROUGH_ADDR")?,
    );
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let topology = Topology::new(prefix);
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    topology.declare(&channels[0]).await?;
    let state = web::Data::new(State {
        channels,
        next: AtomicUsize::new(0),
        exchange: ShortString::from(topology.events_exchange()),
    });
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/webhooks/stripe", web::post().to(webhook))
            .route("/readyz", web::get().to(readyz))
    });
    if let Ok(workers) = std::env::var("PASSTHROUGH_WORKERS") {
        let workers = workers
            .parse()
            .with_context(|| format!("PASSTHROUGH_WORKERS is a number, not {workers:?}"))?;
        server = server.workers(workers);
    }
    server
        .tcp_nodelay(true)
        .bind(&addr)
        .with_context(|| format!("cannot listen on {addr}"))?
        .run()
        .await?;
    Ok(())
}
