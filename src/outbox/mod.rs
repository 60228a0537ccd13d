//! The outbox: re-authorization prompts and follow-ups for the fintech, written in the same transaction as
//! what they announce, delivered to its HTTPS endpoint as JSON signed with HMAC-SHA256, retried with backoff,
//! and never sent again once a 2xx acknowledged it.
//!
//! Signature header: `Astra-Worker-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`;
//! the key is `ASTRA_WORKER_OUTBOX_KEY`. The receiver deduplicates on the `Idempotency-Key` header.

mod deliver;
pub mod store;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use deliver::{Bound, Delivered, Deliverer, MAX_PER_RUN, deliver_if_configured, sign};
pub(crate) use store::outbox_insert;

/// A message to put in the outbox.
#[derive(Debug, Clone)]
pub struct Message {
    pub idempotency_key: String,
    pub kind: &'static str,
    pub user_id: Option<String>,
    /// The body delivered (it carries `kind` and `idempotency_key` too).
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

impl Message {
    /// A message sent once per `subject`: its idempotency key is `<kind>:<subject>`.
    pub fn once(kind: &'static str, subject: &str, user_id: Option<&str>, data: Value, now: DateTime<Utc>) -> Message {
        Message::new(kind, format!("{kind}:{subject}"), user_id, data, now)
    }

    pub fn new(kind: &'static str, key: String, user_id: Option<&str>, mut data: Value, now: DateTime<Utc>) -> Message {
        if let Value::Object(m) = &mut data {
            m.insert("kind".into(), kind.into());
            m.insert("idempotency_key".into(), key.clone().into());
            m.insert("created_at".into(), now.to_rfc3339().into());
            if let Some(u) = user_id {
                m.insert("user_id".into(), u.into());
            }
        }
        Message { idempotency_key: key, kind, user_id: user_id.map(str::to_string), payload: data, created_at: now }
    }
}
