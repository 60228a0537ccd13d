//! What Astra may send: a transfer item as any JSON, a timestamp, a clearing date, an amount in dollars.
#![no_main]

use astra_worker::{astra::model, domain::Cents};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
        && let Err(r) = model::parse_transfer(v)
    {
        assert!(!r.detail.is_empty() && r.detail.chars().count() <= 600, "refusal: {}", r.detail);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = model::parse_time(text);
        let _ = model::Clearing::parse(text);
        if let Ok(c) = Cents::parse_dollars(text) {
            assert!(c.0.unsigned_abs() <= 1_000_000_000_000, "{text} → {c:?}");
        }
    }
});
