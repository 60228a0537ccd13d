//! Delivery of the outbox to the fintech's endpoint: signed POSTs, a claim per message held for its whole POST
//! and fencing its completion, backoff on failure, and a bound on what one job run spends on it.

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tracing::{debug, info, warn};

use super::store;
use crate::{config::OutboxSettings, store::Store};

/// Delivers to the configured endpoint.
pub struct Deliverer {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    key: SecretString,
    timeout: std::time::Duration,
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
    /// The pass stopped with messages still due (bounded for a job run).
    pub left: bool,
    /// The endpoint stopped answering (this pass, or one before it): no pass tries it before then.
    pub endpoint_down_until: Option<DateTime<Utc>>,
}

/// How much one pass may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Everything due (the background deliverer of the daemon and the service; tests).
    Everything,
    /// What a job run may spend on it: stop at the first failed delivery, and after `MAX_PER_RUN`.
    ForARun,
}

/// The most messages one job run delivers (the next run, or the background deliverer, does the rest).
pub const MAX_PER_RUN: u64 = 200;

/// A delivery that did not succeed; `unreachable`: the endpoint did not answer at all.
struct PostError {
    detail: String,
    unreachable: bool,
}

/// The signature header's value for `body` at time `t`.
pub fn sign(key: &SecretString, t: i64, body: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_secret().as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{t}.{body}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// How long every pass leaves an endpoint alone after `failures` times in a row it did not answer: 30 s
/// doubling, at most 10 min (so it is tried again at most 10 minutes after it is back).
fn endpoint_backoff(failures: i32) -> TimeDelta {
    let secs = 30i64.saturating_mul(1i64 << (failures - 1).clamp(0, 20)).min(600);
    TimeDelta::seconds(secs)
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
            // Followed, a 301/302/303 would turn the POST into a GET without its body, whose 2xx would mark a
            // message delivered that never was; a 307/308 would send it to any host the `Location` names.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("astra-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer { http, endpoint, key, timeout: settings.request_timeout })
    }

    /// Delivers every message due at `now`; failures are rescheduled, never lost.
    pub async fn deliver_due(&self, store: &Store, now: DateTime<Utc>) -> anyhow::Result<Delivered> {
        self.deliver(store, now, Bound::Everything).await
    }

    /// Delivers what is due at `now`, one message at a time, each under a claim of its own that outlasts its
    /// POST and fences its completion (a deliverer whose claim was taken over records nothing). A pass stops at
    /// the first delivery that could not reach the endpoint (it is down: the rest would wait on it too), and
    /// every pass, in every process, leaves it alone for a back-off ([`endpoint_backoff`]), so a dead endpoint
    /// costs one timeout per back-off, not one per job run; with [`Bound::ForARun`], a pass also stops at the
    /// first failed delivery and after `MAX_PER_RUN` messages. The rest is left for later.
    pub async fn deliver(&self, store: &Store, now: DateTime<Utc>, bound: Bound) -> anyhow::Result<Delivered> {
        let owner = uuid::Uuid::new_v4().to_string();
        let claim_for = TimeDelta::from_std(self.timeout).unwrap_or(TimeDelta::MAX) + TimeDelta::seconds(30);
        let mut report = Delivered::default();
        // Its mark is kept under the endpoint's address without credentials.
        let endpoint = crate::secrets::redact_url(self.endpoint.as_str());
        if let Some(until) = store::endpoint_retry_at(store, &endpoint).await?.filter(|until| *until > now) {
            report.endpoint_down_until = Some(until);
            report.left = true;
            return Ok(report);
        }
        // The first answer of a pass tells every process that the endpoint answers again.
        let mut answered = false;
        loop {
            if bound == Bound::ForARun && report.delivered + report.failed >= MAX_PER_RUN {
                report.left = true;
                return Ok(report);
            }
            let until = now.max(Utc::now()) + claim_for;
            let Some(m) = store::claim_one(store, &owner, now, until).await? else { return Ok(report) };
            let posted = self.post(&m.idempotency_key, &m.payload).await;
            let reached = posted.as_ref().err().is_none_or(|e| !e.unreachable);
            let kept = match posted {
                Ok(()) => {
                    report.delivered += 1;
                    store::mark_delivered(store, &m.id, &owner, Utc::now()).await?
                }
                Err(e) => {
                    let next = now.max(Utc::now()) + backoff(m.attempts);
                    warn!(key = %m.idempotency_key, attempt = m.attempts + 1, error = %e.detail, retry_at = %next, "outbox delivery failed; will retry");
                    report.failed += 1;
                    let kept = store::reschedule(store, &m.id, &owner, next, &e.detail).await?;
                    if e.unreachable {
                        let at = now.max(Utc::now());
                        let until =
                            store::endpoint_unreachable(store, &endpoint, at, &e.detail, endpoint_backoff).await?;
                        warn!(retry_at = %until, "the outbox endpoint does not answer; no delivery tries it before then");
                        report.endpoint_down_until = Some(until);
                    }
                    // An endpoint that does not answer stalls every message behind it: the pass ends (and no
                    // pass tries it before its back-off). A job run also gives up at the first failure of any
                    // kind, so a slow failing endpoint costs it one timeout at most.
                    if e.unreachable || bound == Bound::ForARun {
                        report.left = true;
                        return Ok(report);
                    }
                    kept
                }
            };
            if !kept {
                warn!(key = %m.idempotency_key, "the message's delivery claim was taken over; its outcome is the other deliverer's");
            }
            // After the message's outcome is stored: a failure here loses none.
            if reached && !answered {
                store::endpoint_answered(store, &endpoint).await?;
                answered = true;
            }
        }
    }

    async fn post(&self, key: &str, body: &str) -> Result<(), PostError> {
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
            .map_err(|e| PostError {
                detail: if e.is_timeout() { "timed out".to_string() } else { "connection failed".to_string() },
                unreachable: true,
            })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            let detail =
                format!("HTTP {}: a redirect, not followed (outbox.endpoint must be its final URL)", status.as_u16());
            Err(PostError { detail, unreachable: false })
        } else {
            Err(PostError { detail: format!("HTTP {}", status.as_u16()), unreachable: false })
        }
    }
}

/// Delivers due messages, within `bound`, if an endpoint is configured; logs what happened.
pub async fn deliver_if_configured(
    deliverer: Option<&Deliverer>,
    store: &Store,
    bound: Bound,
) -> anyhow::Result<Delivered> {
    let Some(d) = deliverer else { return Ok(Delivered::default()) };
    let r = d.deliver(store, Utc::now(), bound).await?;
    if r.delivered + r.failed > 0 {
        info!(delivered = r.delivered, failed = r.failed, "outbox delivery");
    } else if let Some(until) = r.endpoint_down_until {
        debug!(retry_at = %until, "outbox delivery waits: the endpoint did not answer");
    }
    Ok(r)
}
