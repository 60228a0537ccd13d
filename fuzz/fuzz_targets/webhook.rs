//! A webhook as any body and signature header: verified or not, parsed or refused, never a panic.
#![no_main]

use astra_worker::inbox::{Webhook, signature};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let secret = secrecy::SecretString::from("fuzz-secret".to_string());
    let (header, body) = data.split_at(data.len().min(64));
    let _ = signature::verify(&secret, body, std::str::from_utf8(header).ok());
    if let Err(e) = Webhook::parse(body) {
        let e = format!("{e:#}");
        assert!(!e.is_empty() && e.chars().count() <= 600, "refusal: {e}");
    }
});
