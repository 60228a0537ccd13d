//! Sending Astra's webhooks: the body as Astra's own example writes it (Python's `json.dumps`), signed with
//! `Astra-Verification` = Base64(HMAC-SHA256(client secret, body)), each sent `1 + webhook_duplicates` times
//! after a random delay up to `webhook_delay_ms` (late, repeated and out of order, as Astra's retries are).

use std::{sync::Arc, time::Duration};

use rand::Rng;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::routes::{Shared, lock};
use crate::inbox::signature;

/// Sends what the state queued, until `stop`.
pub(super) async fn run(st: Shared, stop: CancellationToken) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let (batch, url, secret, copies, delay) = {
            let mut s = lock(&st);
            let Some(url) = s.settings.webhook_url.clone() else { continue };
            let f = &s.settings.faults;
            let (copies, delay) = (1 + f.webhook_duplicates, f.webhook_delay_ms);
            let secret = Arc::new(SecretString::from(s.settings.client_secret.clone()));
            (s.take_webhooks(), url, secret, copies, delay)
        };
        for w in batch {
            let body = signature::python_dumps(w.to_string().as_bytes()).unwrap_or_else(|| w.to_string());
            for _ in 0..copies {
                let wait = if delay > 0 { rand::rng().random_range(0..=delay) } else { 0 };
                let (http, url, body, secret) = (http.clone(), url.clone(), body.clone(), secret.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    let sig = signature::sign(&secret, body.as_bytes());
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("Astra-Verification", sig)
                        .body(body)
                        .send()
                        .await;
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "sandbox: a webhook could not be delivered");
                    }
                });
            }
        }
    }
}
