//! Arbitrary bytes into the event envelope parser: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::envelope::EventEnvelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = EventEnvelope::parse(data) {
        assert_eq!(envelope.object, "event");
        let _ = envelope.object_id();
    }
});
