//! Stripe webhook signature verification over the raw body bytes.
//!
//! Follows Stripe's official SDKs (`constructEvent`): the `Stripe-Signature` header is
//! `t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]`; only `v1` (HMAC-SHA256) counts, other
//! schemes are ignored. The expected signature is HMAC-SHA256 keyed by the whole
//! `whsec_…` string over `"{t}.{raw body}"`, compared in constant time against every
//! `v1` entry, for every configured secret (rotation). Unlike stripe-node we also reject
//! timestamps too far in the *future*. <https://docs.stripe.com/webhooks#verify-manually>
//!
//! The body is never parsed or re-serialised before this check: a framework that parses
//! JSON first changes the bytes and every signature fails (shared/seeds, the failed delivery).

use std::{fmt, time::Duration};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Most `v1` entries looked at in one header; Stripe sends one per active secret.
pub const MAX_SIGNATURES: usize = 64;

/// A webhook signing secret (`whsec_…`). Its `Debug` never shows the value.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("webhook secrets must start with \"whsec_\"")]
pub struct WebhookSecretError;

impl WebhookSecret {
    pub fn parse(raw: &str) -> Result<Self, WebhookSecretError> {
        let raw = raw.trim();
        if raw.len() <= "whsec_".len() || !raw.starts_with("whsec_") {
            return Err(WebhookSecretError);
        }
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    fn key(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_[REDACTED])")
    }
}

/// Why a delivery was rejected. Each is its own reason label in `/metrics`.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    MissingHeader,
    #[error("malformed Stripe-Signature header: no valid timestamp")]
    MalformedHeader,
    #[error("Stripe-Signature header has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    #[error("no v1 signature in the Stripe-Signature header")]
    NoV1Signature,
    #[error("no signature matches the expected signature for the payload")]
    NoMatch,
    #[error("timestamp outside the tolerance zone")]
    TimestampOutsideTolerance,
}

impl SignatureError {
    /// A short, stable label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::MalformedHeader => "malformed_header",
            Self::TooManySignatures => "too_many_signatures",
            Self::NoV1Signature => "no_v1_signature",
            Self::NoMatch => "no_match",
            Self::TimestampOutsideTolerance => "timestamp_outside_tolerance",
        }
    }

    pub const ALL: [Self; 6] = [
        Self::MissingHeader,
        Self::MalformedHeader,
        Self::TooManySignatures,
        Self::NoV1Signature,
        Self::NoMatch,
        Self::TimestampOutsideTolerance,
    ];
}

/// The parts of a `Stripe-Signature` header that matter.
#[derive(Debug, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    pub timestamp: i64,
    pub v1: Vec<&'a str>,
}

/// Parses `t=…,v1=…` exactly as Stripe's official SDKs do: items split on `,`, each on
/// its first `=`, keys compared as they are (no trimming: `" v1"` and `"v1 "` are other
/// schemes), values taken as they are; unknown schemes and items without `=` are ignored.
pub fn parse_header(header: &str) -> Result<SignatureHeader<'_>, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = value.parse::<i64>().ok(),
            "v1" => {
                if v1.len() == MAX_SIGNATURES {
                    return Err(SignatureError::TooManySignatures);
                }
                v1.push(value);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MalformedHeader)?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(SignatureHeader { timestamp, v1 })
}

/// Verifies `payload` (the bytes as received) against the header.
///
/// `now` is Unix seconds, a parameter so tests control the clock. Returns the signed
/// timestamp. The signature is checked before the timestamp, so an attacker without a
/// secret learns nothing about tolerance.
pub fn verify(
    payload: &[u8],
    header: Option<&str>,
    secrets: &[WebhookSecret],
    now: i64,
    tolerance: Duration,
) -> Result<i64, SignatureError> {
    let header = header
        .filter(|h| !h.trim().is_empty())
        .ok_or(SignatureError::MissingHeader)?;
    let parsed = parse_header(header)?;
    let candidates: Vec<[u8; 32]> = parsed
        .v1
        .iter()
        // The SDKs compare the hex text with what they compute, which is lowercase: an
        // uppercase or padded value never matches.
        .filter(|hex_sig| is_lowercase_hex(hex_sig))
        .filter_map(|hex_sig| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(hex_sig, &mut out).ok().map(|()| out)
        })
        .collect();

    let timestamp_text = parsed.timestamp.to_string();
    let matched = secrets.iter().any(|secret| {
        let Ok(mut mac) = HmacSha256::new_from_slice(secret.key()) else {
            return false;
        };
        mac.update(timestamp_text.as_bytes());
        mac.update(b".");
        mac.update(payload);
        // verify_slice compares in constant time.
        candidates
            .iter()
            .any(|sig| mac.clone().verify_slice(sig).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }

    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(parsed.timestamp) > tolerance.unsigned_abs() {
        return Err(SignatureError::TimestampOutsideTolerance);
    }
    Ok(parsed.timestamp)
}

fn is_lowercase_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_746_373_867;

    /// Signs like Stripe does (the fake Stripe has the same for other tests).
    fn sign(payload: &[u8], secret: &WebhookSecret, timestamp: i64) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.key()).unwrap();
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        format!(
            "t={timestamp},v1={}",
            hex::encode(mac.finalize().into_bytes())
        )
    }
    const TOL: Duration = Duration::from_secs(300);
    const PAYLOAD: &[u8] = b"{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}";

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::parse(s).unwrap()
    }

    fn check(
        payload: &[u8],
        header: &str,
        secrets: &[WebhookSecret],
    ) -> Result<i64, SignatureError> {
        verify(payload, Some(header), secrets, NOW, TOL)
    }

    #[test]
    fn accepts_a_signature_computed_independently_of_this_code() {
        // HMAC-SHA256 by Python's hmac module over "1746373867." + PAYLOAD.
        let header =
            "t=1746373867,v1=c81717b00190efa1053b0b70fbbeebe6dccad13573f8437b9f6836be50f9f204";
        assert_eq!(
            check(PAYLOAD, header, &[secret("whsec_test_secret")]),
            Ok(NOW)
        );
    }

    #[test]
    fn accepts_what_sign_produces() {
        let s = secret("whsec_abc");
        assert_eq!(check(PAYLOAD, &sign(PAYLOAD, &s, NOW), &[s]), Ok(NOW));
    }

    #[test]
    fn rejects_a_signature_made_with_another_secret() {
        let header = sign(PAYLOAD, &secret("whsec_other"), NOW);
        assert_eq!(
            check(PAYLOAD, &header, &[secret("whsec_abc")]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn rejects_a_tampered_body() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW);
        let mut tampered = PAYLOAD.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            check(&tampered, &header, &[s]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn rejects_a_body_that_was_parsed_and_re_serialized() {
        // The classic framework bug: the JSON is equal, the bytes are not.
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW);
        let value: serde_json::Value = serde_json::from_slice(PAYLOAD).unwrap();
        let reserialized = serde_json::to_vec(&value).unwrap();
        assert_ne!(reserialized, PAYLOAD);
        assert_eq!(
            check(&reserialized, &header, &[s]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn rejects_a_missing_or_blank_header() {
        let s = [secret("whsec_abc")];
        assert_eq!(
            verify(PAYLOAD, None, &s, NOW, TOL),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            verify(PAYLOAD, Some(" "), &s, NOW, TOL),
            Err(SignatureError::MissingHeader)
        );
    }

    #[test]
    fn rejects_a_header_without_a_timestamp() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW);
        let v1_only = header.split(',').nth(1).unwrap();
        assert_eq!(
            check(PAYLOAD, v1_only, std::slice::from_ref(&s)),
            Err(SignatureError::MalformedHeader)
        );
        assert_eq!(
            check(PAYLOAD, "t=soon,v1=ab", std::slice::from_ref(&s)),
            Err(SignatureError::MalformedHeader)
        );
        assert_eq!(
            check(PAYLOAD, "garbage", &[s]),
            Err(SignatureError::MalformedHeader)
        );
    }

    #[test]
    fn rejects_spaces_around_the_equals_sign() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW);
        for spaced in [header.replace("v1=", "v1 ="), header.replace("v1=", "v1= ")] {
            assert!(
                check(PAYLOAD, &spaced, std::slice::from_ref(&s)).is_err(),
                "{spaced}"
            );
        }
        assert_eq!(
            check(
                PAYLOAD,
                &header.replace("t=", "t= "),
                std::slice::from_ref(&s)
            ),
            Err(SignatureError::MalformedHeader)
        );
    }

    #[test]
    fn rejects_a_space_after_a_comma() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW).replace(",v1=", ", v1=");
        assert_eq!(
            check(PAYLOAD, &header, &[s]),
            Err(SignatureError::NoV1Signature)
        );
    }

    #[test]
    fn rejects_an_uppercase_hex_signature() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW);
        let (t, sig) = header.split_once(",v1=").unwrap();
        let upper = format!("{t},v1={}", sig.to_uppercase());
        assert_eq!(check(PAYLOAD, &upper, &[s]), Err(SignatureError::NoMatch));
    }

    #[test]
    fn rejects_a_header_without_a_v1_signature() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW).replace("v1=", "v0=");
        assert_eq!(
            check(PAYLOAD, &header, &[s]),
            Err(SignatureError::NoV1Signature)
        );
    }

    #[test]
    fn rejects_a_signature_older_than_the_tolerance() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW - 301);
        assert_eq!(
            check(PAYLOAD, &header, std::slice::from_ref(&s)),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        let edge = sign(PAYLOAD, &s, NOW - 300);
        assert_eq!(check(PAYLOAD, &edge, &[s]), Ok(NOW - 300));
    }

    #[test]
    fn rejects_a_signature_from_the_future_beyond_the_tolerance() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW + 301);
        assert_eq!(
            check(PAYLOAD, &header, &[s]),
            Err(SignatureError::TimestampOutsideTolerance)
        );
    }

    #[test]
    fn a_valid_signature_at_a_stale_time_is_still_stale_with_a_larger_clock_skew() {
        let s = secret("whsec_abc");
        let header = sign(PAYLOAD, &s, NOW - 1000);
        assert_eq!(
            verify(PAYLOAD, Some(&header), &[s], NOW, Duration::from_secs(1000)),
            Ok(NOW - 1000)
        );
    }

    #[test]
    fn accepts_when_any_of_several_v1_signatures_matches() {
        let s = secret("whsec_abc");
        let good = sign(PAYLOAD, &s, NOW);
        let sig = good.split("v1=").nth(1).unwrap();
        let header = format!("t={NOW},v1={},v1=nothex,v1={sig},v0={sig}", "0".repeat(64));
        assert_eq!(check(PAYLOAD, &header, &[s]), Ok(NOW));
    }

    #[test]
    fn ignores_other_schemes_and_junk_items() {
        let s = secret("whsec_abc");
        let good = sign(PAYLOAD, &s, NOW);
        let header = format!("v0=deadbeef,{good},scheme2=xyz,novalue");
        assert_eq!(check(PAYLOAD, &header, &[s]), Ok(NOW));
    }

    #[test]
    fn accepts_any_of_several_secrets_during_rotation() {
        let old = secret("whsec_old");
        let new = secret("whsec_new");
        let both = [old.clone(), new.clone()];
        assert_eq!(check(PAYLOAD, &sign(PAYLOAD, &old, NOW), &both), Ok(NOW));
        assert_eq!(check(PAYLOAD, &sign(PAYLOAD, &new, NOW), &both), Ok(NOW));
        assert_eq!(
            check(PAYLOAD, &sign(PAYLOAD, &new, NOW), &[old]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn rejects_a_header_with_too_many_signatures() {
        let s = secret("whsec_abc");
        let mut header = format!("t={NOW}");
        for _ in 0..=MAX_SIGNATURES {
            header.push_str(",v1=00");
        }
        assert_eq!(
            check(PAYLOAD, &header, &[s]),
            Err(SignatureError::TooManySignatures)
        );
    }

    #[test]
    fn secrets_must_look_like_stripe_secrets_and_never_print() {
        assert_eq!(
            WebhookSecret::parse("sk_test_123").unwrap_err(),
            WebhookSecretError
        );
        assert!(WebhookSecret::parse("whsec_").is_err());
        let s = secret("whsec_supersecret");
        assert!(!format!("{s:?}").contains("supersecret"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_headers_and_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..4096), header in ".{0,600}") {
                let _ = verify(&body, Some(&header), &[secret("whsec_abc")], NOW, TOL);
                if let Ok(parsed) = parse_header(&header) {
                    prop_assert!(parsed.v1.len() <= MAX_SIGNATURES);
                }
            }

            #[test]
            fn any_mutation_of_a_signed_body_is_rejected(
                body in proptest::collection::vec(any::<u8>(), 1..2048),
                at in any::<prop::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let s = secret("whsec_abc");
                let header = sign(&body, &s, NOW);
                prop_assert_eq!(check(&body, &header, std::slice::from_ref(&s)), Ok(NOW));
                let mut mutated = body.clone();
                let i = at.index(mutated.len());
                mutated[i] ^= flip;
                prop_assert_eq!(check(&mutated, &header, &[s]), Err(SignatureError::NoMatch));
            }

            #[test]
            fn any_mutation_of_the_header_is_rejected(
                body in proptest::collection::vec(any::<u8>(), 1..512),
                at in any::<prop::sample::Index>(),
                replacement in any::<char>(),
            ) {
                let s = secret("whsec_abc");
                let header = sign(&body, &s, NOW);
                let mut chars: Vec<char> = header.chars().collect();
                let i = at.index(chars.len());
                prop_assume!(chars[i] != replacement);
                // Changing case of a hex digit keeps the same bytes: not a mutation.
                prop_assume!(!(chars[i].is_ascii_hexdigit() && replacement.is_ascii_hexdigit()
                    && chars[i].eq_ignore_ascii_case(&replacement)));
                chars[i] = replacement;
                let mutated: String = chars.into_iter().collect();
                prop_assert!(check(&body, &mutated, &[s]).is_err(), "{mutated}");
            }
        }
    }
}
