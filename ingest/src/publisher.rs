//! Publishing verified events to RabbitMQ with publisher confirms.
//!
//! A supervisor task owns the connection: it connects, opens a small pool of
//! confirm-mode channels, declares the shared topology, and reconnects with backoff
//! whenever the connection or a channel dies. Requests never wait for a reconnect: with
//! no live channel they fail fast with [`PublishError::Unavailable`] (→ 503, Stripe retries).
//!
//! Each publish is `mandatory` and persistent and waits, bounded by a timeout, for its own
//! confirm; many confirms are outstanding per channel at once, so requests do not queue
//! behind each other. <https://www.rabbitmq.com/docs/confirms#publisher-confirms>
//!
//! A nack, a missing confirm or a channel error retires the whole connection, open as it
//! may still look: the supervisor opens fresh channels, from the node list again. Nothing
//! we declare nacks in normal operation (no queue has a length limit), and a channel can
//! stay refused after a quorum queue's leader dies: RabbitMQ 3.10 builds a channel's
//! client for a queue on its first publish there, from the leader the queue record names;
//! a channel that publishes in the moment between the leader's death and the record
//! naming the new one asks the dead node, is refused (nack), and asks it again on every
//! publish after, until that node is back. Only a new channel reads the record again.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use shared::{
    amqp,
    config::AmqpConfig,
    envelope::EventHead,
    telemetry::{self, KeyValue, propagation},
    topology::Topology,
};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field::Empty};

use crate::metrics::Metrics;

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;
/// How often the supervisor checks that the connection is still up.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no connection to the broker")]
    Unavailable,
    #[error("broker channel error")]
    Channel(#[source] lapin::Error),
    #[error("the broker nacked the publish")]
    Nacked,
    #[error("the broker returned the message as unroutable")]
    Returned,
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    fn label(&self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Channel(_) => "error",
            Self::Nacked => "nack",
            Self::Returned => "returned",
            Self::Timeout(_) => "timeout",
        }
    }
}

struct Live {
    connection: Connection,
    channels: Vec<Channel>,
    /// Set by a publish the broker refused or never confirmed (see the module doc).
    retired: AtomicBool,
}

impl Live {
    fn healthy(&self) -> bool {
        !self.retired.load(Ordering::Relaxed)
            && self.connection.status().connected()
            && self.channels.iter().all(|c| c.status().connected())
    }
}

struct Inner {
    live: RwLock<Option<Arc<Live>>>,
    next: AtomicUsize,
    topology: Topology,
    confirm_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Wakes the supervisor when a publish failed, to check the connection now.
    suspect: Notify,
    closing: CancellationToken,
}

impl Inner {
    fn current(&self) -> Option<Arc<Live>> {
        self.live.read().ok().and_then(|guard| guard.clone())
    }

    fn set(&self, live: Option<Arc<Live>>) {
        self.metrics.broker_connected.set(i64::from(live.is_some()));
        if let Ok(mut guard) = self.live.write() {
            *guard = live;
        }
    }
}

#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// Starts the supervisor; returns at once, connected or not.
    pub fn start(
        amqp_config: AmqpConfig,
        channels: usize,
        confirm_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> (Self, JoinHandle<()>) {
        let inner = Arc::new(Inner {
            live: RwLock::new(None),
            next: AtomicUsize::new(0),
            topology: Topology::new(amqp_config.topology_prefix.clone()),
            confirm_timeout,
            metrics,
            suspect: Notify::new(),
            closing: CancellationToken::new(),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&inner), amqp_config, channels.max(1)));
        (Self { inner }, supervisor)
    }

    /// True while a confirm channel is open.
    pub fn is_ready(&self) -> bool {
        self.inner.current().is_some_and(|live| live.healthy())
    }

    /// Publishes `body` (the exact bytes Stripe signed) and waits for the broker's confirm,
    /// under a producer span whose context travels in the message headers.
    pub async fn publish(&self, event: &EventHead<'_>, body: &[u8]) -> Result<(), PublishError> {
        let span = self.producer_span(event, body.len());
        self.publish_in(event, body).instrument(span).await
    }

    /// The producer span, by the messaging semantic conventions: named
    /// `publish {exchange}`, one per message, ended when the broker has confirmed.
    /// <https://opentelemetry.io/docs/specs/semconv/messaging/rabbitmq/>
    ///
    /// Its tracing fields are what a log line inside it needs (the event); the conventions'
    /// `messaging.*` attributes go to the exported span alone.
    fn producer_span(&self, event: &EventHead<'_>, body_size: usize) -> tracing::Span {
        let exchange = self.inner.topology.events_exchange();
        // For checkout events data.object is the session; other events carry no session.
        let session_id = event.object_id().filter(|id| id.starts_with("cs_"));
        let span = tracing::info_span!(
            "publish",
            otel.name = %format_args!("publish {exchange}"),
            otel.kind = "producer",
            otel.status_code = Empty,
            error.type = Empty,
            event_id = %event.id,
            event_type = %event.event_type,
            session_id = session_id.as_deref(),
        );
        telemetry::set_attributes(&span, || {
            [
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "publish"),
                KeyValue::new("messaging.destination.name", exchange.clone()),
                KeyValue::new(
                    "messaging.rabbitmq.destination.routing_key",
                    event.event_type.to_string(),
                ),
                KeyValue::new("messaging.message.id", event.id.to_string()),
                KeyValue::new(
                    "messaging.message.body.size",
                    i64::try_from(body_size).unwrap_or(i64::MAX),
                ),
            ]
        });
        span
    }

    async fn publish_in(&self, event: &EventHead<'_>, body: &[u8]) -> Result<(), PublishError> {
        let start = Instant::now();
        let result = self.publish_confirmed(event, body).await;
        let label = match &result {
            Ok(()) => "ack",
            Err(e) => e.label(),
        };
        if result.is_err() {
            let span = tracing::Span::current();
            span.record("otel.status_code", "ERROR");
            span.record("error.type", label);
        }
        self.inner
            .metrics
            .observe_publish(label, start.elapsed().as_secs_f64());
        result
    }

    async fn publish_confirmed(
        &self,
        event: &EventHead<'_>,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let live = self.inner.current().ok_or(PublishError::Unavailable)?;
        if live.channels.is_empty() || !live.healthy() {
            return Err(PublishError::Unavailable);
        }
        let result = self.publish_on(&live, event, body).await;
        if let Err(e) = &result {
            // A returned message says the topology is gone, not the channel; the rest
            // (nack, no confirm, channel error) retire the connection.
            if !matches!(e, PublishError::Returned) && !live.retired.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "publish not confirmed; opening fresh channels");
            }
            self.inner.suspect.notify_one();
        }
        result
    }

    async fn publish_on(
        &self,
        live: &Live,
        event: &EventHead<'_>,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % live.channels.len();
        let channel = &live.channels[index];
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The producer span's W3C trace context (nothing when traces are off), for
        // fulfill's consumer span to continue the trace.
        let mut headers = FieldTable::default();
        propagation::inject(&tracing::Span::current(), &mut headers);
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(event.id.as_str()))
            .with_type(ShortString::from(&*event.event_type))
            .with_timestamp(now)
            .with_app_id(ShortString::from("ingest"));
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        let options = BasicPublishOptions {
            // Unroutable messages come back instead of vanishing. With the alternate
            // exchange in place this only fires if the topology was deleted under us.
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let timeout = self.inner.confirm_timeout;
        let confirm = tokio::time::timeout(timeout, async {
            channel
                .basic_publish(
                    ShortString::from(self.inner.topology.events_exchange()),
                    ShortString::from(&*event.event_type),
                    options,
                    body,
                    properties,
                )
                .await?
                .await
        })
        .await
        .map_err(|_| PublishError::Timeout(timeout))?
        .map_err(PublishError::Channel)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Returned),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            // The channel is in confirm mode; no confirm means we cannot know.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }

    /// Closes the connection. Call after the HTTP server has drained in-flight requests.
    pub async fn close(&self) {
        self.inner.closing.cancel();
        if let Some(live) = self.inner.current() {
            self.inner.set(None);
            for channel in &live.channels {
                if channel.status().connected() {
                    let _ = channel.close(200, ShortString::from("shutdown")).await;
                }
            }
            if let Err(e) = live
                .connection
                .close(200, ShortString::from("shutdown"))
                .await
            {
                tracing::debug!(error = %e, "closing the broker connection");
            }
        }
    }
}

async fn open(
    config: &AmqpConfig,
    channels: usize,
    topology: &Topology,
) -> Result<Live, lapin::Error> {
    let connection = amqp::connect(config, "ingest").await?;
    let mut opened = Vec::with_capacity(channels);
    for _ in 0..channels {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        opened.push(channel);
    }
    if let Some(first) = opened.first() {
        topology.declare(first).await?;
    }
    Ok(Live {
        connection,
        channels: opened,
        retired: AtomicBool::new(false),
    })
}

async fn supervise(inner: Arc<Inner>, config: AmqpConfig, channels: usize) {
    let mut attempt: u32 = 0;
    while !inner.closing.is_cancelled() {
        match open(&config, channels, &inner.topology).await {
            Ok(live) => {
                attempt = 0;
                let live = Arc::new(live);
                inner.set(Some(Arc::clone(&live)));
                tracing::info!(channels, "connected to the broker; topology declared");
                loop {
                    tokio::select! {
                        () = inner.closing.cancelled() => return,
                        () = tokio::time::sleep(HEALTH_INTERVAL) => {}
                        () = inner.suspect.notified() => {}
                    }
                    if !live.healthy() {
                        break;
                    }
                }
                inner.set(None);
                tracing::warn!("lost the broker connection; reconnecting");
                // Release what is left of the old connection.
                let _ = live
                    .connection
                    .close(320, ShortString::from("reconnecting"))
                    .await;
            }
            Err(e) => {
                inner.set(None);
                tracing::warn!(error = %e, attempt, "cannot connect to the broker");
            }
        }
        let delay = amqp::backoff(attempt, MAX_RECONNECT_DELAY);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = inner.closing.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
