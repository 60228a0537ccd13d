//! Astra's webhook signature: `Astra-Verification` = Base64(HMAC-SHA256(client secret, body)). Checked against
//! the raw body first, then against the body re-serialized the way Astra's own example does (Python's
//! `json.dumps` with its default separators `", "` and `": "`, keys in their order, non-ASCII escaped), since
//! a sender that signs its re-serialization and sends compact JSON is what that example does. Constant-time.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::Sha256;

/// The signature of `body` under `secret`, as Astra sends it.
pub fn sign(secret: &SecretString, body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac(secret, body).finalize().into_bytes())
}

fn mac(secret: &SecretString, body: &[u8]) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes any key");
    m.update(body);
    m
}

/// Whether `header` signs `body` (raw, or as Python's `json.dumps` re-serializes it) under `secret`.
pub fn verify(secret: &SecretString, body: &[u8], header: Option<&str>) -> bool {
    let Some(given) = header.and_then(|h| base64::engine::general_purpose::STANDARD.decode(h.trim()).ok()) else {
        return false;
    };
    // `verify_slice` compares in constant time.
    if mac(secret, body).verify_slice(&given).is_ok() {
        return true;
    }
    match python_dumps(body) {
        Some(re) if re.as_bytes() != body => mac(secret, re.as_bytes()).verify_slice(&given).is_ok(),
        _ => false,
    }
}

/// JSON with the order of keys kept, for re-serializing.
enum Ordered {
    Object(Vec<(String, Ordered)>),
    Array(Vec<Ordered>),
    String(String),
    Other(serde_json::Value),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered::Other(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered::Other(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered::Other(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
                Ok(Ordered::Other(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::String(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Other(serde_json::Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Ordered::Array(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry()? {
                    v.push((k, x));
                }
                Ok(Ordered::Object(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `body` as Python's `json.dumps(json.loads(body))` writes it; `None` when it is not JSON.
pub fn python_dumps(body: &[u8]) -> Option<String> {
    let v: Ordered = serde_json::from_slice(body).ok()?;
    let mut out = String::with_capacity(body.len() + 16);
    write(&v, &mut out);
    Some(out)
}

fn write(v: &Ordered, out: &mut String) {
    match v {
        Ordered::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                string(k, out);
                out.push_str(": ");
                write(x, out);
            }
            out.push('}');
        }
        Ordered::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(x, out);
            }
            out.push(']');
        }
        Ordered::String(s) => string(s, out),
        Ordered::Other(x) => out.push_str(&x.to_string()),
    }
}

/// A string as Python's `json.dumps` escapes it by default (`ensure_ascii`).
fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SecretString {
        SecretString::from("client-secret".to_string())
    }

    #[test]
    fn the_raw_body_and_its_python_re_serialization_both_verify_and_a_tampered_body_does_not() {
        let compact = br#"{"webhook_type":"user_updated","webhook_id":"w1","user_id":"u1","resource_id":"u1"}"#;
        let python = r#"{"webhook_type": "user_updated", "webhook_id": "w1", "user_id": "u1", "resource_id": "u1"}"#;
        assert_eq!(python_dumps(compact).unwrap(), python);
        assert!(verify(&secret(), compact, Some(&sign(&secret(), compact))));
        // Signed over Python's re-serialization, sent compact.
        assert!(verify(&secret(), compact, Some(&sign(&secret(), python.as_bytes()))));
        let tampered = br#"{"webhook_type":"user_updated","webhook_id":"w1","user_id":"u2","resource_id":"u1"}"#;
        assert!(!verify(&secret(), tampered, Some(&sign(&secret(), compact))));
        assert!(!verify(&secret(), compact, None));
        assert!(!verify(&secret(), compact, Some("not base64 !")));
        assert!(!verify(&SecretString::from("other".to_string()), compact, Some(&sign(&secret(), compact))));
    }

    #[test]
    fn python_escapes_non_ascii_and_keeps_key_order() {
        assert_eq!(
            python_dumps("{\"b\":\"é😀\",\"a\":[1,2.5,null,true]}".as_bytes()).unwrap(),
            r#"{"b": "\u00e9\ud83d\ude00", "a": [1, 2.5, null, true]}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn verifying_any_body_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200), h in ".{0,60}") {
            let _ = verify(&secret(), &body, Some(&h));
            let _ = python_dumps(&body);
        }
    }
}
