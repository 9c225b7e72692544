//! The minimal typed view of a Stripe event.
//!
//! Only what routing and deduplication need is typed; `data.object` stays raw JSON so
//! that nothing Stripe sent is lost or reshaped on the way through the broker. The
//! broker carries the exact bytes Stripe signed, never a re-serialisation.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ids::EventId;

#[derive(Debug, Deserialize)]
pub struct EventEnvelope {
    pub id: EventId,
    /// Always `"event"` once parsed.
    pub object: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub livemode: bool,
    /// The connected account (`acct_…`) the event happened on (Stripe Connect); absent
    /// for the platform's own events. Kept raw here: fulfill checks it.
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub data: Option<EventData>,
}

#[derive(Debug, Deserialize)]
pub struct EventData {
    pub object: Box<RawValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not a JSON Stripe event object: {0}")]
    Json(#[source] serde_json::Error),
    #[error("body is not a Stripe event: \"object\" is {0:?}, expected \"event\"")]
    NotAnEvent(String),
    #[error("event type is empty or not a dotted lowercase name")]
    BadType,
}

/// Longest event type accepted; AMQP routing keys are short strings (255 bytes).
const MAX_TYPE_LEN: usize = 200;

impl EventEnvelope {
    /// Parses a (verified) body. Requires `id` (`evt_…`), `object: "event"` and `type`.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = serde_json::from_slice(body).map_err(EnvelopeError::Json)?;
        if envelope.object != "event" {
            return Err(EnvelopeError::NotAnEvent(envelope.object));
        }
        let valid_type = !envelope.event_type.is_empty()
            && envelope.event_type.len() <= MAX_TYPE_LEN
            && envelope
                .event_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._".contains(&b));
        if !valid_type {
            return Err(EnvelopeError::BadType);
        }
        Ok(envelope)
    }

    /// The `id` of `data.object`, when there is one.
    pub fn object_id(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct IdOnly {
            id: Option<String>,
        }
        let data = self.data.as_ref()?;
        serde_json::from_str::<IdOnly>(data.object.get())
            .ok()
            .and_then(|o| o.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str =
        include_str!("../../tests/fixtures/stripe/event_checkout_session_completed_basil.json");

    #[test]
    fn parses_the_real_delivered_event() {
        let env = EventEnvelope::parse(REAL.as_bytes()).unwrap();
        assert_eq!(env.id.as_str(), "evt_1RL4opGMYJBaxnOIgMhDDV71");
        assert_eq!(env.event_type, "checkout.session.completed");
        assert_eq!(env.created, Some(1746373867));
        assert_eq!(env.api_version.as_deref(), Some("2025-04-30.basil"));
        assert!(!env.livemode);
        assert_eq!(
            env.object_id().as_deref(),
            Some("cs_test_a1IOx43WOHxmIybohUjT6JUZge8HMHzX0ocHsIfShUENY4l8M7F9FY4zT4")
        );
    }

    #[test]
    fn rejects_a_json_object_that_is_not_an_event() {
        let body = br#"{"id":"evt_1","object":"charge","type":"x.y"}"#;
        assert!(matches!(
            EventEnvelope::parse(body),
            Err(EnvelopeError::NotAnEvent(_))
        ));
    }

    #[test]
    fn rejects_missing_fields_and_non_objects() {
        for body in [
            &br#"{"object":"event","type":"a.b"}"#[..],
            br#"{"id":"evt_1","object":"event"}"#,
            br#"[1,2]"#,
            b"not json",
            b"",
        ] {
            assert!(EventEnvelope::parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn rejects_a_type_that_is_no_routing_key() {
        let body = br#"{"id":"evt_1","object":"event","type":"a.#"}"#;
        assert!(matches!(
            EventEnvelope::parse(body),
            Err(EnvelopeError::BadType)
        ));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
                if let Ok(env) = EventEnvelope::parse(&body) {
                    prop_assert_eq!(env.object.as_str(), "event");
                    let _ = env.object_id();
                }
            }

            #[test]
            fn arbitrary_json_values_never_panic(id in ".{0,40}", kind in ".{0,40}", object in ".{0,20}") {
                let body = serde_json::json!({"id": id, "object": object, "type": kind, "data": {"object": {"id": id}}});
                let _ = EventEnvelope::parse(body.to_string().as_bytes());
            }
        }
    }
}
