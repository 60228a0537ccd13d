//! The outbox: re-authorization prompts and follow-ups for the fintech, written in the same transaction as
//! what they announce, delivered to its HTTPS endpoint as JSON signed with HMAC-SHA256, retried with backoff,
//! and never sent again once a 2xx acknowledged it.
//!
//! Signature header: `Astra-Worker-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`;
//! the key is `ASTRA_WORKER_OUTBOX_KEY`. The receiver deduplicates on the `Idempotency-Key` header.

pub mod store;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::Sha256;
use tracing::{info, warn};

use crate::{config::OutboxSettings, store::Store};

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

/// Delivers to the configured endpoint.
pub struct Deliverer {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    key: SecretString,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deliverer({})", self.endpoint)
    }
}

/// What one delivery pass did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Delivered {
    pub delivered: u64,
    pub failed: u64,
}

/// The signature header's value for `body` at time `t`.
pub fn sign(key: &SecretString, t: i64, body: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_secret().as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{t}.{body}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Backoff after `attempts` failed deliveries: 30 s doubling, at most 6 h.
fn backoff(attempts: i32) -> TimeDelta {
    let secs = 30i64.saturating_mul(1i64 << attempts.clamp(0, 20)).min(6 * 3600);
    TimeDelta::seconds(secs)
}

impl Deliverer {
    pub fn new(settings: &OutboxSettings, endpoint: reqwest::Url, key: SecretString) -> anyhow::Result<Deliverer> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .user_agent(concat!("astra-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer { http, endpoint, key })
    }

    /// Delivers every message that is due, a batch at a time; failures are rescheduled, never lost.
    pub async fn deliver_due(&self, store: &Store, now: DateTime<Utc>) -> anyhow::Result<Delivered> {
        let mut report = Delivered::default();
        loop {
            let batch = store::claim_due(store, now, now + TimeDelta::seconds(60), 50).await?;
            if batch.is_empty() {
                return Ok(report);
            }
            for m in batch {
                match self.post(&m.idempotency_key, &m.payload).await {
                    Ok(()) => {
                        store::mark_delivered(store, &m.id, Utc::now()).await?;
                        report.delivered += 1;
                    }
                    Err(e) => {
                        let next = now + backoff(m.attempts);
                        warn!(key = %m.idempotency_key, attempt = m.attempts + 1, error = %e, retry_at = %next, "outbox delivery failed; will retry");
                        store::reschedule(store, &m.id, next, &e).await?;
                        report.failed += 1;
                    }
                }
            }
        }
    }

    async fn post(&self, key: &str, body: &str) -> Result<(), String> {
        let t = Utc::now().timestamp();
        let resp = self
            .http
            .post(self.endpoint.clone())
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .header("astra-worker-signature", sign(&self.key, t, body))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| if e.is_timeout() { "timed out".to_string() } else { "connection failed".to_string() })?;
        if resp.status().is_success() { Ok(()) } else { Err(format!("HTTP {}", resp.status().as_u16())) }
    }
}

/// Delivers due messages if an endpoint is configured; logs what happened.
pub async fn deliver_if_configured(deliverer: Option<&Deliverer>, store: &Store) -> anyhow::Result<Delivered> {
    let Some(d) = deliverer else { return Ok(Delivered::default()) };
    let r = d.deliver_due(store, Utc::now()).await?;
    if r.delivered + r.failed > 0 {
        info!(delivered = r.delivered, failed = r.failed, "outbox delivery");
    }
    Ok(r)
}

/// Default request timeout toward the fintech's endpoint.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
