//! An import line as any bytes, as a destination or ACH credit line and as a grant line: read or refused
//! with a short message, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = astra_worker::reconcile::registry::ImportLine::parse(data) {
        assert!(!e.is_empty() && e.chars().count() <= 600, "refusal: {e}");
    }
    if let Err(e) = astra_worker::tokens::ImportLine::parse_line(data, chrono::Utc::now()) {
        assert!(!e.is_empty() && e.chars().count() <= 600, "refusal: {e}");
    }
});
