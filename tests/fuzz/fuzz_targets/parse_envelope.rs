//! Arbitrary bytes into the event envelope parsers: never panics, and ingest's borrowed
//! `EventHead` accepts and refuses exactly what fulfill's `EventEnvelope` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::envelope::{EventEnvelope, EventHead};

fuzz_target!(|data: &[u8]| {
    match (EventEnvelope::parse(data), EventHead::parse(data)) {
        (Ok(envelope), Ok(head)) => {
            assert_eq!(envelope.object, "event");
            assert_eq!(envelope.id, head.id);
            assert_eq!(envelope.event_type, head.event_type);
            let _ = envelope.object_id();
            let _ = head.object_id();
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("envelope ok: {}, head ok: {}", a.is_ok(), b.is_ok()),
    }
});
