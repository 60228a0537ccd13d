//! How one request reaches Astra: the limiter first, then the attempt, read and classified into
//! [`AstraError`]; transient failures and 429s retried with jittered backoff within the retry budget; every
//! attempt recorded and logged without a token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use reqwest::{Method, RequestBuilder, StatusCode, header::HeaderMap};
use serde::{Deserialize, de::DeserializeOwned};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{AstraClient, Call, error::AstraError, record};
use crate::secrets::redact_quoted;

/// The largest response body accepted.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// The first retry waits about this long; each next one twice as long, with jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(200);
/// When a 429 carries no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How one attempt went.
struct Attempt<T> {
    result: Result<T, AstraError>,
    status: Option<u16>,
    request_id: Option<String>,
    /// Retry after this long (`None`: do not retry).
    retry_in: Option<Duration>,
    /// Astra may have applied this attempt though its answer did not arrive.
    ambiguous: bool,
}

/// Error body shapes: Astra's `{code, name, description}` or OAuth's `{error, error_description}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

impl ErrorBody {
    fn parse(bytes: &[u8]) -> ErrorBody {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn detail(&self) -> String {
        let parts: Vec<&str> = [&self.error, &self.error_description, &self.name, &self.description]
            .into_iter()
            .filter_map(|s| s.as_deref())
            .collect();
        if parts.is_empty() { "(no error body)".into() } else { truncate(&parts.join(": "), 300) }
    }
}

impl AstraClient {
    /// Sends with the limiter, retries transient failures and 429s with jittered backoff within the retry
    /// budget, and records every attempt. A token request waits for the limiter only within the retry budget
    /// too (a 429's `Retry-After` pauses the limiter for as long as Astra says): a refresh holds its grant's
    /// lease, which is taken for the retry budget and one attempt's timeout, not for however long Astra asks
    /// to wait, so it gives up instead (not sent: nothing applied).
    pub(super) async fn send<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        method: Method,
        path: &str,
        token_endpoint: bool,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, AstraError> {
        let endpoint = format!("{method} {path}");
        let url = self.base.join(path.trim_start_matches('/')).map_err(|e| AstraError::Malformed {
            endpoint: endpoint.clone(),
            detail: format!("cannot build the URL: {e}"),
        })?;
        let deadline = Instant::now() + self.retry_budget;
        let mut ambiguous_before = false;
        let mut attempt_no = 0u32;
        let mut last_error = None;
        loop {
            attempt_no += 1;
            if !token_endpoint {
                self.limiter.acquire().await;
            } else if tokio::time::timeout_at(deadline, self.limiter.acquire()).await.is_err() {
                let e = last_error.unwrap_or_else(|| AstraError::Transient {
                    endpoint: endpoint.clone(),
                    detail: "no request slot within astra.retry_budget (the request limiter is paused or full)".into(),
                    maybe_applied: false,
                });
                return Err(if ambiguous_before { e.after_ambiguous_attempt(&endpoint) } else { e });
            }
            call.count_request();
            let at = Utc::now();
            let started = Instant::now();
            let sent = build(self.http.request(method.clone(), url.clone())).send().await;
            let mut attempt = self.read_attempt::<T>(sent, &endpoint, token_endpoint, attempt_no).await;
            let latency = started.elapsed();
            self.limiter.observe(latency);
            if let Err(AstraError::GrantRejected { after_ambiguous_attempt, .. }) = &mut attempt.result {
                *after_ambiguous_attempt = ambiguous_before;
            }
            ambiguous_before |= attempt.ambiguous;
            if let Err(AstraError::Transient { maybe_applied, .. }) = &mut attempt.result {
                *maybe_applied = ambiguous_before;
            }
            self.record(call, &method, path, attempt_no, &attempt, at, latency).await;

            let retry_in = attempt.retry_in.filter(|_| attempt_no <= self.max_retries);
            match (attempt.result, retry_in) {
                (Ok(v), _) => return Ok(v),
                (Err(e), Some(wait)) if Instant::now() + wait < deadline => {
                    debug!(endpoint = %endpoint, attempt = attempt_no, wait_ms = wait.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(wait).await;
                    last_error = Some(e);
                }
                (Err(e), _) if ambiguous_before => return Err(e.after_ambiguous_attempt(&endpoint)),
                (Err(e), _) => return Err(e),
            }
        }
    }

    async fn read_attempt<T: DeserializeOwned>(
        &self,
        sent: reqwest::Result<reqwest::Response>,
        endpoint: &str,
        token_endpoint: bool,
        attempt_no: u32,
    ) -> Attempt<T> {
        let backoff = backoff(attempt_no);
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // A connect error never reached Astra; anything else (a timeout) may have been applied.
                let ambiguous = token_endpoint && !e.is_connect();
                let detail = if e.is_timeout() { "timed out".to_string() } else { transport_detail(&e) };
                return Attempt {
                    result: Err(AstraError::Transient { endpoint: endpoint.into(), detail, maybe_applied: ambiguous }),
                    status: None,
                    request_id: None,
                    retry_in: Some(backoff),
                    ambiguous,
                };
            }
        };
        let status = resp.status();
        let request_id = request_id(resp.headers());
        let retry_after = retry_after(resp.headers());
        let body = read_body(resp).await;
        let mk = |result, retry_in, ambiguous| Attempt {
            result,
            status: Some(status.as_u16()),
            request_id: request_id.clone(),
            retry_in,
            ambiguous,
        };
        let body = match body {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                let e = AstraError::Malformed {
                    endpoint: endpoint.into(),
                    detail: format!("body larger than {MAX_BODY} bytes"),
                };
                return mk(Err(e), None, false);
            }
            Err(BodyError::Transport(detail)) => {
                let e = AstraError::Transient { endpoint: endpoint.into(), detail, maybe_applied: token_endpoint };
                return mk(Err(e), Some(backoff), token_endpoint);
            }
        };
        if status.is_success() {
            return match serde_json::from_slice::<T>(&body) {
                Ok(v) => mk(Ok(v), None, false),
                Err(e) => {
                    // A value serde quotes may be a token or an account number, on any endpoint.
                    let detail = truncate(&redact_quoted(&e.to_string()), 300);
                    mk(Err(AstraError::Malformed { endpoint: endpoint.into(), detail }), None, false)
                }
            };
        }
        let eb = ErrorBody::parse(&body);
        let e = endpoint.to_string();
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                self.limiter.pause_for(wait);
                warn!(endpoint, retry_after_s = wait.as_secs(), "Astra answered 429: slowing every request down");
                mk(Err(AstraError::RateLimited { endpoint: e, retry_after: wait }), Some(Duration::ZERO), false)
            }
            s if s.is_server_error() => {
                // A gateway's 502/504 may hide a token request Astra applied.
                let ambiguous = token_endpoint && matches!(s.as_u16(), 502 | 504);
                let detail = format!("{} {}", s.as_u16(), eb.detail());
                mk(
                    Err(AstraError::Transient { endpoint: e, detail, maybe_applied: ambiguous }),
                    Some(backoff),
                    ambiguous,
                )
            }
            // Before the body's reading: a redirect's body is not Astra's answer.
            s if s.is_redirection() => {
                let detail = "a redirect, not followed (astra.base_url must be Astra's own https URL)".into();
                mk(Err(AstraError::Refused { endpoint: e, status: s.as_u16(), detail }), None, false)
            }
            _ if token_endpoint && eb.error.as_deref() == Some("invalid_client") => {
                mk(Err(AstraError::ClientRejected), None, false)
            }
            _ if token_endpoint && eb.error.as_deref() == Some("invalid_grant") => {
                let description = eb.error_description.clone().unwrap_or_else(|| "refused".into());
                mk(
                    Err(AstraError::GrantRejected {
                        description: truncate(&redact_quoted(&description), 200),
                        after_ambiguous_attempt: false,
                    }),
                    None,
                    false,
                )
            }
            StatusCode::UNAUTHORIZED if token_endpoint => mk(Err(AstraError::ClientRejected), None, false),
            StatusCode::UNAUTHORIZED => mk(Err(AstraError::AccessTokenRejected { endpoint: e }), None, false),
            StatusCode::NOT_FOUND => mk(Err(AstraError::NotFound { endpoint: e }), None, false),
            s => mk(Err(AstraError::Refused { endpoint: e, status: s.as_u16(), detail: eb.detail() }), None, false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn record<T>(
        &self,
        call: Call<'_>,
        method: &Method,
        path: &str,
        attempt_no: u32,
        attempt: &Attempt<T>,
        at: DateTime<Utc>,
        latency: Duration,
    ) {
        let (outcome, error) = match &attempt.result {
            Ok(_) => ("ok", None),
            Err(e) => (outcome_name(e), Some(e.to_string())),
        };
        let run_id = call.run_id;
        debug!(
            method = %method, endpoint = path, status = attempt.status, request_id = attempt.request_id.as_deref(),
            latency_ms = latency.as_millis() as u64, outcome, attempt = attempt_no, user_id = call.user_id,
            "astra call"
        );
        let Some(log) = &self.calls else { return };
        log.record(record::ApiCall {
            run_id: run_id.map(str::to_string),
            at,
            method: method.as_str().to_string(),
            endpoint: path.to_string(),
            user_id: call.user_id.map(str::to_string),
            attempt: attempt_no as i32,
            status: attempt.status.map(i32::from),
            latency_ms: latency.as_millis() as i64,
            request_id: attempt.request_id.clone(),
            outcome,
            error,
        })
        .await;
    }
}

fn outcome_name(e: &AstraError) -> &'static str {
    match e {
        AstraError::GrantRejected { .. } => "grant_rejected",
        AstraError::ClientRejected => "client_rejected",
        AstraError::AccessTokenRejected { .. } => "access_token_rejected",
        AstraError::RateLimited { .. } => "rate_limited",
        AstraError::Transient { .. } => "transient",
        AstraError::NotFound { .. } => "not_found",
        AstraError::Refused { .. } => "refused",
        AstraError::Malformed { .. } => "malformed",
    }
}

/// Jittered exponential backoff: between half and all of `BASE * 2^(n-1)`, at most 10 s.
fn backoff(attempt_no: u32) -> Duration {
    let full = BASE_BACKOFF.saturating_mul(1 << attempt_no.saturating_sub(1).min(6)).min(Duration::from_secs(10));
    let ms = full.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

fn request_id(h: &HeaderMap) -> Option<String> {
    h.get("request-id").and_then(|v| v.to_str().ok()).map(|s| truncate(s, 128))
}

/// `Retry-After` in seconds (HTTP dates are read as the default).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

enum BodyError {
    TooLarge,
    Transport(String),
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n as usize > MAX_BODY) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Transport(transport_detail(&e))),
        }
    }
}

/// A transport error's description without the URL (which carries no secret, but is noise).
fn transport_detail(e: &reqwest::Error) -> String {
    let mut s = e.without_url_ref().to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    truncate(&s, 300)
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        if self.is_connect() {
            "connection failed".into()
        } else if self.is_body() || self.is_decode() {
            "the body was cut off".into()
        } else if self.is_request() {
            "the request failed".into()
        } else {
            "transport error".into()
        }
    }
}

pub(super) fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for n in 1..20 {
            let b = backoff(n);
            assert!(b <= Duration::from_secs(10));
            assert!(b >= BASE_BACKOFF / 2);
        }
        assert!(backoff(5) >= Duration::from_millis(1600));
    }
}
