//! Delivery of the outbox to the fintech's endpoint: signed POSTs, a claim per batch, backoff on failure.

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tracing::{info, warn};

use super::store;
use crate::{config::OutboxSettings, store::Store};

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
