//! Trace context across the broker: W3C `traceparent` / `tracestate` in AMQP headers.
//!
//! ingest injects its producer span's context into the message it publishes; fulfill
//! extracts it and makes it the parent of its consumer span, so one trace runs from
//! Stripe's POST to the credit. fulfill copies headers onto retry and dead-letter copies,
//! so a retried message still belongs to the trace it started in.
//! <https://www.w3.org/TR/trace-context/>,
//! <https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/#context-propagation>

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes propagation fields into a message's headers, as long strings.
pub struct AmqpHeaderInjector<'a>(pub &'a mut FieldTable);

impl Injector for AmqpHeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Propagator keys are short; one that is not cannot be a header name, so skip it.
        if let Ok(key) = ShortString::try_new(key) {
            self.0
                .insert(key, AMQPValue::LongString(LongString::from(value)));
        }
    }
}

/// Reads propagation fields from a message's headers, whichever string type carried them.
pub struct AmqpHeaderExtractor<'a>(pub &'a FieldTable);

impl Extractor for AmqpHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

/// Adds the context of `span` to `headers`, with the global propagator (W3C trace context
/// once telemetry is initialised with an exporter). Adds nothing when traces are off.
pub fn inject(span: &tracing::Span, headers: &mut FieldTable) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut AmqpHeaderInjector(headers));
    });
}

/// The remote context carried by `headers`, to pass to `set_parent` on the consumer span;
/// an empty context (a new trace) when there is none.
pub fn extract(headers: Option<&FieldTable>) -> Context {
    match headers {
        Some(headers) => opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&AmqpHeaderExtractor(headers))
        }),
        None => Context::new(),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::{
        propagation::TextMapPropagator,
        trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState},
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn remote_context() -> Context {
        let span = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        Context::new().with_remote_span_context(span)
    }

    #[test]
    fn injects_traceparent_and_tracestate_as_long_string_headers() {
        let mut headers = FieldTable::default();
        TraceContextPropagator::new()
            .inject_context(&remote_context(), &mut AmqpHeaderInjector(&mut headers));
        assert_eq!(
            headers.inner().get("traceparent"),
            Some(&AMQPValue::LongString(LongString::from(TRACEPARENT)))
        );
        assert_eq!(
            headers.inner().get("tracestate"),
            Some(&AMQPValue::LongString(LongString::from("vendor=value")))
        );
    }

    #[test]
    fn what_is_injected_is_extracted_as_the_same_remote_parent() {
        let propagator = TraceContextPropagator::new();
        let mut headers = FieldTable::default();
        propagator.inject_context(&remote_context(), &mut AmqpHeaderInjector(&mut headers));
        let extracted = propagator.extract(&AmqpHeaderExtractor(&headers));
        let span = extracted.span();
        let got = span.span_context();
        assert!(got.is_valid() && got.is_remote() && got.is_sampled());
        assert_eq!(
            got.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(got.span_id().to_string(), "b7ad6b7169203331");
        assert_eq!(got.trace_state().header(), "vendor=value");
    }

    #[test]
    fn injecting_keeps_the_headers_already_there() {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-fulfill-attempts"),
            AMQPValue::LongLongInt(3),
        );
        TraceContextPropagator::new()
            .inject_context(&remote_context(), &mut AmqpHeaderInjector(&mut headers));
        assert_eq!(
            headers.inner().get("x-fulfill-attempts"),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert!(headers.contains_key("traceparent"));
    }

    #[test]
    fn extracts_a_traceparent_sent_as_a_short_string() {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("traceparent"),
            AMQPValue::ShortString(ShortString::from(TRACEPARENT)),
        );
        let extractor = AmqpHeaderExtractor(&headers);
        assert_eq!(extractor.get("traceparent"), Some(TRACEPARENT));
        assert_eq!(extractor.keys(), vec!["traceparent"]);
        let extracted = TraceContextPropagator::new().extract(&extractor);
        assert!(extracted.span().span_context().is_valid());
    }

    #[test]
    fn headers_without_trace_context_give_no_parent() {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("traceparent"), AMQPValue::LongLongInt(1));
        let extracted = TraceContextPropagator::new().extract(&AmqpHeaderExtractor(&headers));
        assert!(!extracted.span().span_context().is_valid());
        assert!(!extract(None).span().span_context().is_valid());
    }

    #[test]
    fn nothing_is_injected_for_a_span_that_is_not_exported() {
        // No OpenTelemetry layer is installed in unit tests: the span has no context.
        let span = tracing::info_span!("publish");
        let mut headers = FieldTable::default();
        inject(&span, &mut headers);
        assert!(headers.inner().is_empty());
    }
}
