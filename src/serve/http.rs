//! What every route shares: a request id on every answer and in the logs, the bearer API key on `/v1`
//! (constant-time), request counts and latencies per route, JSON bodies parsed with the failing field named,
//! and errors turned into status codes by their kind.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json,
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::Instrument as _;

use super::AppState;
use crate::{
    exit::classify,
    failure::{Failure, Status},
};

/// Gives every request an id (the caller's `x-request-id` when it is a short printable one), logs under it,
/// answers with it, and counts the request per route. A body that has not all arrived within
/// `[service].body_timeout` is answered 408.
pub(crate) async fn around(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "other".into());
    // The standard verbs by name, anything else as one label: a caller cannot grow the metrics.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let started = Instant::now();
    let late = Arc::new(AtomicBool::new(false));
    let body_timeout = st.worker.settings.service.body_timeout;
    let req = req.map(|body| within(body, body_timeout, late.clone()));
    let mut resp = as_json(next.run(req).instrument(span.clone()).await).await;
    if late.load(Ordering::Relaxed) {
        resp = error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request's body did not arrive within {} s ([service].body_timeout)",
                body_timeout.as_secs_f64()
            ),
        );
        // The rest of the body is not read: the connection cannot carry another request.
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    span.in_scope(|| tracing::info!(status, latency_ms = elapsed.as_secs_f64() * 1000.0, "answered"));
    st.metrics.record(&method, &route, status, elapsed);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// `body`, which fails (and sets `late`) when it has not all arrived within `limit`: a client that sends its body
/// slowly, or stops, does not hold its handler for longer.
fn within(body: Body, limit: Duration, late: Arc<AtomicBool>) -> Body {
    let deadline = tokio::time::Instant::now() + limit;
    Body::from_stream(
        futures::stream::unfold(Some(body.into_data_stream()), move |frames| {
            let late = late.clone();
            async move {
                let mut frames = frames?;
                match tokio::time::timeout_at(deadline, frames.next()).await {
                    Ok(Some(frame)) => Some((frame, Some(frames))),
                    Ok(None) => None,
                    Err(_) => {
                        late.store(true, Ordering::Relaxed);
                        Some((Err(axum::Error::new("the request's body did not arrive in time")), None))
                    }
                }
            }
        })
        .fuse(),
    )
}

/// `/v1` requires `Authorization: Bearer <ASTRA_WORKER_API_KEY>`.
pub(crate) async fn require_key(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key);
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), st.api_key.expose_secret().as_bytes()));
    if !ok {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (Authorization: Bearer <ASTRA_WORKER_API_KEY>)",
        );
    }
    next.run(req).await
}

/// Equal, in time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// axum's own refusals (a body over the limit, a path that is not UTF-8, a body that is not all there) are plain
/// text, or have no body at all (a method the route does not take); the API's own errors are JSON
/// (`{"error": …}`), so a caller reads one shape for all. Their text is axum's, at most a line, or the status's.
async fn as_json(resp: Response) -> Response {
    let text_or_none = resp.headers().get(header::CONTENT_TYPE).is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(resp.status().is_client_error() && text_or_none) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = Some(text.trim()).filter(|t| !t.is_empty()).or(parts.status.canonical_reason()).unwrap_or("refused");
    let json = error(parts.status, text);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, json.into_body())
}

/// A JSON error answer.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// A body that does not parse: a 400 naming the field.
pub(crate) struct BadBody(String);

impl IntoResponse for BadBody {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

/// A body parsed as `T`; the failing field (its path) named otherwise.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, BadBody> {
    crate::secrets::parse_json(body).map_err(BadBody)
}

/// An error of the library as an HTTP answer: bad input 400, "no" 409, unavailable 503, a bug 500.
pub(crate) fn failure(e: anyhow::Error) -> Response {
    let msg = format!("{e:#}");
    match classify(&e) {
        Status::Config if e.downcast_ref::<Failure>().is_some() => error(StatusCode::BAD_REQUEST, msg),
        Status::No => error(StatusCode::CONFLICT, msg),
        Status::Temporary => error(StatusCode::SERVICE_UNAVAILABLE, msg),
        Status::Config => error(StatusCode::BAD_GATEWAY, msg),
        _ => {
            tracing::error!(error = %msg, "request failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error; the log carries the request id")
        }
    }
}

/// Request counts and latencies per route and status, for `/metrics`.
/// Method, route, status.
type RouteKey = (String, String, u16);

#[derive(Default)]
pub struct RouteMetrics {
    /// Requests answered and the time spent on them.
    by_route: Mutex<BTreeMap<RouteKey, (u64, Duration)>>,
}

impl RouteMetrics {
    fn record(&self, method: &str, route: &str, status: u16, took: Duration) {
        let mut m = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry((method.to_string(), route.to_string(), status)).or_default();
        e.0 += 1;
        e.1 += took;
    }

    /// The Prometheus text of the counts.
    pub fn render(&self) -> String {
        let m = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from(
            "# HELP astra_worker_http_requests_total HTTP requests answered, by route and status.\n\
             # TYPE astra_worker_http_requests_total counter\n",
        );
        let mut secs = String::from(
            "# HELP astra_worker_http_request_seconds_sum Time spent answering, by route and status.\n\
             # TYPE astra_worker_http_request_seconds_sum counter\n",
        );
        for ((method, route, status), (n, took)) in m.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            let _ = writeln!(out, "astra_worker_http_requests_total{{{labels}}} {n}");
            let _ = writeln!(secs, "astra_worker_http_request_seconds_sum{{{labels}}} {:.6}", took.as_secs_f64());
        }
        out + &secs
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::FromRequest as _;

    use super::*;

    /// axum's refusal of a body over its limit, as the extractor makes it, becomes `{"error": …}` with its
    /// status; an answer that is not a client error keeps its plain text (`/readyz`).
    #[tokio::test]
    async fn axums_plain_text_refusals_become_json_errors() {
        let too_big = Request::new(Body::from(vec![b'a'; 3 << 20]));
        let refusal = axum::body::Bytes::from_request(too_big, &()).await.unwrap_err().into_response();
        assert_eq!(refusal.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8", "axum's own shape");
        let answer = as_json(refusal).await;
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(answer.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| e.contains("length limit exceeded")), "{v}");

        let ready = as_json((StatusCode::SERVICE_UNAVAILABLE, "the store does not answer\n").into_response()).await;
        assert_eq!(ready.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }
}
