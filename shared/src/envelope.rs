//! The minimal typed view of a Stripe event.
//!
//! Only what routing and deduplication need is typed; `data.object` stays raw JSON so
//! that nothing Stripe sent is lost or reshaped on the way through the broker. The
//! broker carries the exact bytes Stripe signed, never a re-serialisation.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, de};
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

/// The checks after the JSON is read, the same for [`EventEnvelope`] and [`EventHead`].
fn check(object: &str, event_type: &str) -> Result<(), EnvelopeError> {
    if object != "event" {
        return Err(EnvelopeError::NotAnEvent(object.to_owned()));
    }
    let valid_type = !event_type.is_empty()
        && event_type.len() <= MAX_TYPE_LEN
        && event_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._".contains(&b));
    if !valid_type {
        return Err(EnvelopeError::BadType);
    }
    Ok(())
}

impl EventEnvelope {
    /// Parses a (verified) body. Requires `id` (`evt_…`), `object: "event"` and `type`.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = serde_json::from_slice(body).map_err(EnvelopeError::Json)?;
        check(&envelope.object, &envelope.event_type)?;
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

/// What ingest routes and labels an event by, borrowed from the body it verified.
///
/// [`EventHead::parse`] reads the body exactly as [`EventEnvelope::parse`] does (the same
/// fields with the same types, so the same bodies pass and the same errors come back; a
/// test compares the two on arbitrary input) but keeps only `id`, `type` and
/// `data.object` as a slice of the body: nothing of the 3 KB object is copied, and only
/// the few short strings that are kept are allocated.
#[derive(Debug)]
pub struct EventHead<'a> {
    pub id: EventId,
    pub event_type: Cow<'a, str>,
    /// `data.object`, unparsed (valid JSON: the parse has read it).
    pub object: Option<&'a RawValue>,
}

/// [`EventEnvelope`]'s fields with the same types, borrowed where [`EventHead`] keeps them
/// and only type-checked where it does not. The structs have the same names as those
/// they mirror because serde's errors name them.
mod borrowed {
    use std::borrow::Cow;

    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::AnyString;
    use crate::ids::EventId;

    #[derive(Deserialize)]
    pub(super) struct EventEnvelope<'a> {
        pub(super) id: EventId,
        #[serde(borrow)]
        pub(super) object: Cow<'a, str>,
        #[serde(rename = "type", borrow)]
        pub(super) event_type: Cow<'a, str>,
        #[serde(rename = "created", default)]
        _created: Option<i64>,
        #[serde(rename = "api_version", default)]
        _api_version: Option<AnyString>,
        #[serde(rename = "livemode", default)]
        _livemode: bool,
        #[serde(rename = "account", default)]
        _account: Option<AnyString>,
        #[serde(default, borrow)]
        pub(super) data: Option<EventData<'a>>,
    }

    #[derive(Deserialize)]
    pub(super) struct EventData<'a> {
        #[serde(borrow)]
        pub(super) object: &'a RawValue,
    }
}

/// A JSON string, checked as `String` checks it (same error) and then dropped.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = AnyString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        deserializer.deserialize_string(Visitor)
    }
}

impl<'a> EventHead<'a> {
    /// Parses a (verified) body, as [`EventEnvelope::parse`] does.
    pub fn parse(body: &'a [u8]) -> Result<Self, EnvelopeError> {
        let fields: borrowed::EventEnvelope<'a> =
            serde_json::from_slice(body).map_err(EnvelopeError::Json)?;
        check(&fields.object, &fields.event_type)?;
        Ok(Self {
            id: fields.id,
            event_type: fields.event_type,
            object: fields.data.map(|d| d.object),
        })
    }

    /// The `id` of `data.object`, when there is one.
    ///
    /// Stripe writes `id` as the first key of every object, so that key alone is read when
    /// it is there (the rest of the object is not parsed a second time); otherwise the
    /// object is read as [`EventEnvelope::object_id`] does. The one difference: a second
    /// `id` key further on, which makes that method give up, is not looked for here.
    pub fn object_id(&self) -> Option<Cow<'a, str>> {
        let raw: &'a str = self.object?.get();
        if let Some(first) = first_id(raw) {
            return first;
        }
        #[derive(Deserialize)]
        struct IdOnly<'b> {
            #[serde(borrow)]
            id: Option<Cow<'b, str>>,
        }
        serde_json::from_str::<IdOnly<'a>>(raw)
            .ok()
            .and_then(|o| o.id)
    }
}

/// `Some(id)` when `object` (valid JSON) starts with an `"id"` key holding a plain string
/// or null; `None` when it does not start so and has to be read in full.
fn first_id(object: &str) -> Option<Option<Cow<'_, str>>> {
    const WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];
    let value = object
        .strip_prefix('{')?
        .trim_start_matches(WHITESPACE)
        .strip_prefix("\"id\"")?
        .trim_start_matches(WHITESPACE)
        .strip_prefix(':')?;
    // One value from the start of the rest; the stream stops there.
    match serde_json::Deserializer::from_str(value)
        .into_iter::<Option<&str>>()
        .next()?
    {
        Ok(id) => Some(id.map(Cow::Borrowed)),
        // Not a string or null, or a string with escapes: the full read decides.
        Err(_) => None,
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

    #[test]
    fn the_head_of_the_real_event_is_what_the_envelope_says() {
        let head = EventHead::parse(REAL.as_bytes()).unwrap();
        let env = EventEnvelope::parse(REAL.as_bytes()).unwrap();
        assert_eq!(head.id, env.id);
        assert_eq!(head.event_type, env.event_type);
        assert_eq!(head.object.unwrap().get(), env.data.unwrap().object.get());
        assert_eq!(
            head.object_id().as_deref(),
            Some("cs_test_a1IOx43WOHxmIybohUjT6JUZge8HMHzX0ocHsIfShUENY4l8M7F9FY4zT4")
        );
    }

    #[test]
    fn the_object_id_is_found_first_or_anywhere_escaped_or_not() {
        for (object, id) in [
            (r#"{"id":"cs_1","object":"checkout.session"}"#, Some("cs_1")),
            ("{\n  \"id\" :\t\"cs_2\",\n  \"x\": 1\n}", Some("cs_2")),
            (r#"{"object":"checkout.session","id":"cs_3"}"#, Some("cs_3")),
            (r#"{"id":"cs_\u0034"}"#, Some("cs_4")),
            (r#"{"id":null,"object":"x"}"#, None),
            (r#"{"id":5}"#, None),
            (r#"{"object":"x"}"#, None),
            (r#"[1]"#, None),
            (r#""cs_5""#, None),
        ] {
            let body = format!(
                r#"{{"id":"evt_1","object":"event","type":"a.b","data":{{"object":{object}}}}}"#
            );
            let head = EventHead::parse(body.as_bytes()).unwrap();
            let env = EventEnvelope::parse(body.as_bytes()).unwrap();
            assert_eq!(head.object_id().as_deref(), id, "{object}");
            assert_eq!(env.object_id().as_deref(), id, "{object}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Pieces of event-like bodies, valid and not: wrong types, big numbers, escapes,
        /// bytes that are not UTF-8 inside and outside `data.object`.
        fn member() -> impl Strategy<Value = Vec<u8>> {
            let key = prop::sample::select(vec![
                "id",
                "object",
                "type",
                "created",
                "api_version",
                "livemode",
                "account",
                "data",
                "request",
                "i\\u0064",
            ]);
            let value = prop::sample::select(vec![
                &br#""evt_1""#[..],
                br#""evt_""#,
                br#""evt_\u0031""#,
                br#""event""#,
                br#""checkout.session.completed""#,
                br#""a.#""#,
                br#""""#,
                b"5",
                b"-1",
                b"1e400",
                b"18446744073709551616",
                b"1.5",
                b"null",
                b"true",
                b"false",
                b"[]",
                b"{}",
                br#"{"object":{"id":"cs_1","x":[1,{"y":null}]}}"#,
                br#"{"object":{"x":1,"id":"cs_2"}}"#,
                br#"{"object":{"id":"cs_\u0033"}}"#,
                br#"{"object":{"id":5}}"#,
                br#"{"object":5}"#,
                br#"{"object":1e400}"#,
                br#"{"object":["cs_1"]}"#,
                br#"{"object":"cs_1"}"#,
                br#"{"object":null}"#,
                br#"{"other":1}"#,
                b"\"\xff\"",
                b"{\"object\":{\"id\":\"cs_1\",\"a\":\"\xc3\"}}",
                b"{\"object\":{\"\xff\":1}}",
                b"{\"object\":\"\xe2\x82\"}",
                b"{\"object\":{\"id\":\"cs_1\"}",
                b"\"unterminated",
            ]);
            let space = prop::sample::select(vec!["", " ", "\n  "]);
            (key, space.clone(), value, space).prop_map(|(k, s1, v, s2)| {
                let mut m = format!("{s1}\"{k}\"{s2}:{s1}").into_bytes();
                m.extend_from_slice(v);
                m
            })
        }

        /// Mostly a valid event's three required members and then pieces (which may
        /// repeat or break them), sometimes pieces alone.
        fn body() -> impl Strategy<Value = Vec<u8>> {
            let valid = br#""id":"evt_1","object":"event","type":"checkout.session.completed""#;
            (
                prop::bool::weighted(0.8),
                prop::collection::vec(member(), 0..6),
            )
                .prop_map(move |(start_valid, members)| {
                    let mut body = b"{".to_vec();
                    let mut members = members;
                    if start_valid {
                        members.insert(0, valid.to_vec());
                    }
                    body.extend(members.join(&b","[..]));
                    body.push(b'}');
                    body
                })
        }

        fn same_outcome(body: &[u8]) -> Result<(), TestCaseError> {
            match (EventEnvelope::parse(body), EventHead::parse(body)) {
                (Ok(env), Ok(head)) => {
                    prop_assert_eq!(&env.id, &head.id);
                    prop_assert_eq!(env.event_type.as_str(), &*head.event_type);
                    prop_assert_eq!(
                        env.data.as_ref().map(|d| d.object.get()),
                        head.object.map(RawValue::get)
                    );
                    let (full, first) = (env.object_id(), head.object_id());
                    prop_assert_eq!(full.as_deref(), first.as_deref());
                }
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(
                    false,
                    "envelope {:?} but head {:?}",
                    a.map(|_| ()),
                    b.map(|_| ())
                ),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn the_head_accepts_and_refuses_what_the_envelope_does(body in body()) {
                same_outcome(&body)?;
            }

            #[test]
            fn the_head_agrees_with_the_envelope_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                same_outcome(&body)?;
            }
        }

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
