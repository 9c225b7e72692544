//! One delivery: fulfill it, then ack; on a transient failure park it in the retry queue
//! (with a growing delay) and ack; on a permanent one, or after too many attempts,
//! dead-letter it with the reason in its headers and ack. The ack always comes after the
//! database commit or after the broker confirmed the retry/dead-letter copy, so a crash
//! at any point leads to a redelivery, never a loss (and redelivery is idempotent).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lapin::{
    BasicProperties,
    message::Delivery,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use shared::{
    amqp::{self, headers},
    telemetry::{self, KeyValue, propagation},
};
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Acks, Context, Publish};
use crate::{
    domain::settlement::{self, RetryPolicy, Settlement},
    error::{FulfillError, error_chain},
    metrics::KindLabels,
};

pub(crate) async fn process(context: &Context, publish: &Publish, acks: &Acks, delivery: Delivery) {
    let event_type = delivery
        .properties
        .kind()
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| delivery.routing_key.to_string());
    let attempts = amqp::header_int(delivery.properties.headers().as_ref(), headers::ATTEMPTS)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
        + 1;
    let span = consumer_span(context, &delivery, &event_type, attempts);
    settle(context, publish, acks, delivery, &event_type, attempts)
        .instrument(span)
        .await;
}

/// The consumer span, by the messaging semantic conventions: `process {queue}`, kind
/// consumer, its parent the producer span whose context ingest put in the headers (the
/// same on every retry of the message, so retries stay in the publishing trace).
/// <https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/#consumer-spans>
fn consumer_span(
    context: &Context,
    delivery: &Delivery,
    event_type: &str,
    attempts: u32,
) -> tracing::Span {
    let queue = context.topology.checkout_queue();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ShortString::as_str);
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        error.type = Empty,
        event_id = message_id,
        event_type,
        attempt = attempts,
        outcome = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    // Without an exporter there is no layer to take the parent; nothing to do then.
    let _ = span.set_parent(propagation::extract(delivery.properties.headers().as_ref()));
    telemetry::record_trace_ids(&span);
    // The semantic conventions' attributes go to the exported span only: as tracing
    // fields the log layer would format them for every delivery, logged or not.
    telemetry::set_attributes(&span, || {
        [
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", queue.clone()),
            KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                delivery.routing_key.to_string(),
            ),
            KeyValue::new(
                "messaging.rabbitmq.message.delivery_tag",
                i64::try_from(delivery.delivery_tag).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                "messaging.message.body.size",
                i64::try_from(delivery.data.len()).unwrap_or(i64::MAX),
            ),
        ]
        .into_iter()
        .chain(message_id.map(|id| KeyValue::new("messaging.message.id", id.to_owned())))
    });
    span
}

/// Processes the delivery, decides how to settle it (pure: `domain::settlement`), then
/// does it: ack, or a confirmed copy to the retry or dead-letter queue and then the ack.
async fn settle(
    context: &Context,
    publish: &Publish,
    acks: &Acks,
    delivery: Delivery,
    event_type: &str,
    attempts: u32,
) {
    let started = Instant::now();
    context.metrics.in_flight.inc();
    let span = tracing::Span::current();
    let result = context.fulfiller.handle_event(&delivery.data).await;
    if let Err(e) = &result {
        e.record_on(&span);
    }
    let policy = RetryPolicy {
        max_attempts: context.config.max_attempts,
        base: context.config.retry_base,
        max: context.config.retry_max,
    };
    let settlement = settlement::settle(
        result.as_ref().map(|_| ()).map_err(FulfillError::failure),
        attempts,
        &policy,
    );
    let outcome = match (&result, settlement) {
        (Ok(outcome), _) => outcome.label(),
        (Err(_), Settlement::Retry { .. }) => "retry",
        (Err(_), Settlement::Requeue) => "key_rejected",
        (Err(_), _) => "dead_lettered",
    };
    context.metrics.event(event_type, outcome);
    span.record("outcome", outcome);
    let settled = match (settlement, result) {
        (Settlement::Ack, _) => {
            tracing::debug!(outcome, "delivery processed");
            acks.ack(delivery.delivery_tag).await
        }
        (Settlement::Requeue, _) => acks.requeue(&delivery).await,
        (Settlement::Retry { delay }, result) => {
            // Equal jitter below the planned delay, so that many retries do not align.
            let delay = amqp::backoff_from(delay, 0, delay);
            if let Err(e) = &result {
                tracing::warn!(error = %error_chain(e), attempts, delay_ms = delay.as_millis() as u64, "transient failure; retrying later");
            }
            context.metrics.requeued.inc();
            let mut h = carried_headers(&delivery);
            h.insert(
                ShortString::from(headers::ATTEMPTS),
                AMQPValue::LongLongInt(i64::from(attempts)),
            );
            let props = delivery
                .properties
                .clone()
                .with_headers(h)
                .with_expiration(ShortString::from(delay.as_millis().to_string()));
            republish(
                publish,
                acks,
                &context.topology.retry_queue(),
                &delivery,
                props,
            )
            .await
        }
        (Settlement::DeadLetter { kind }, result) => {
            let reason = result.err().map_or_else(String::new, |e| error_chain(&e));
            let kind = kind.as_str();
            tracing::error!(error = %reason, kind, attempts, "dead-lettering the message");
            context
                .metrics
                .dead_letters
                .get_or_create(&KindLabels { kind })
                .inc();
            let mut h = carried_headers(&delivery);
            h.insert(
                ShortString::from(headers::ATTEMPTS),
                AMQPValue::LongLongInt(i64::from(attempts)),
            );
            h.insert(
                ShortString::from(headers::DEAD_REASON),
                long(truncate(&reason, 1000)),
            );
            h.insert(ShortString::from(headers::DEAD_KIND), long(kind));
            h.insert(
                ShortString::from(headers::ORIGINAL_ROUTING_KEY),
                long(&delivery.routing_key.to_string()),
            );
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            h.insert(
                ShortString::from(headers::DEAD_AT),
                AMQPValue::Timestamp(now),
            );
            let props = delivery.properties.clone().with_headers(h);
            republish(
                publish,
                acks,
                &context.topology.dead_letter_queue(),
                &delivery,
                props,
            )
            .await
        }
    };
    if let Err(e) = settled {
        // The delivery stays unacked; the broker redelivers it after the channel closes.
        tracing::warn!(error = %e, "could not settle the delivery; it will be redelivered");
    }
    context.metrics.in_flight.dec();
    context
        .metrics
        .processing_seconds
        .observe(started.elapsed().as_secs_f64());
}

/// Publishes a copy to `queue` (default exchange), waits for the confirm, then acks the
/// original. If the copy is not confirmed, the original is requeued instead and the
/// connection is retired ([`Publish::retire`]): a refused channel may stay refused.
async fn republish(
    publish: &Publish,
    acks: &Acks,
    queue: &str,
    delivery: &Delivery,
    props: BasicProperties,
) -> Result<(), lapin::Error> {
    let confirmed = async {
        publish
            .channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                props.with_delivery_mode(2),
            )
            .await?
            .await
    }
    .await;
    match confirmed {
        Ok(lapin::Confirmation::Ack(None)) => acks.ack(delivery.delivery_tag).await,
        other => {
            tracing::warn!(?other, queue, "copy not confirmed; requeueing the original");
            publish.retire();
            acks.requeue(delivery).await
        }
    }
}

/// The headers to keep on a copy: ours and anything the publisher set (trace context).
fn carried_headers(delivery: &Delivery) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = delivery.properties.headers() {
        for (k, v) in h.inner() {
            // x-death and friends belong to the broker's own dead-lettering.
            if !k.as_str().starts_with("x-death")
                && !k.as_str().starts_with("x-first-death")
                && !k.as_str().starts_with("x-last-death")
            {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
