//! `jobs.toml` as any bytes: parsed or refused with a short message, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = astra_worker::config::Settings::parse(text, None)
    {
        assert!(!e.is_empty() && e.chars().count() <= 600, "refusal: {e}");
    }
});
