//! Around every `/v1` call: the rate limit (429 with `Retry-After`), latency, 5xx, hangs, malformed bodies,
//! `request-id`, `Idempotency-Key` replay, and the call log.

use axum::{
    body::{Body, to_bytes},
    extract::{Request, State as AxState},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::Response,
};
use rand::Rng;

use super::{
    MalformedKind, State,
    api::UserTag,
    hang_for,
    routes::{Shared, astra_error, lock},
};

/// Rate limit, faults, `request-id`, `Idempotency-Key` replay, and the call log, around every `/v1` call.
pub(super) async fn faults(AxState(st): AxState<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let request_id = uuid::Uuid::new_v4().to_string();
    enum Plan {
        Limited(u64),
        Hang(std::time::Duration),
        Fail(StatusCode),
        Pass { delay_ms: u64, late_ms: u64, malformed: Option<MalformedKind> },
    }
    let plan = {
        let mut s = lock(&st);
        if s.arrive() {
            Plan::Limited(s.settings.retry_after_secs)
        } else {
            let f = s.settings.faults.clone();
            let draw = |s: &mut State, p: f64| p > 0.0 && s.rng.random_bool(p.min(1.0));
            if draw(&mut s, f.hang_rate) {
                Plan::Hang(hang_for(&f))
            } else if draw(&mut s, f.error_rate) {
                Plan::Fail(if s.rng.random_bool(0.5) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                })
            } else {
                let jitter = if f.latency_jitter_ms > 0 { s.rng.random_range(0..=f.latency_jitter_ms) } else { 0 };
                let malformed = draw(&mut s, f.malformed_rate).then(|| {
                    let kinds = if f.malformed_kinds.is_empty() {
                        vec![
                            MalformedKind::Truncated,
                            MalformedKind::Html,
                            MalformedKind::Empty,
                            MalformedKind::MissingFields,
                        ]
                    } else {
                        f.malformed_kinds.clone()
                    };
                    kinds[s.rng.random_range(0..kinds.len())]
                });
                let floor = f.late_answer_min_ms.min(f.late_answer_ms);
                let late_ms = if f.late_answer_ms > 0 { s.rng.random_range(floor..=f.late_answer_ms) } else { 0 };
                Plan::Pass { delay_ms: f.latency_ms + jitter, late_ms, malformed }
            }
        }
    };
    let mut resp = match plan {
        Plan::Limited(secs) => {
            let mut r = astra_error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        Plan::Hang(d) => {
            tokio::time::sleep(d).await;
            astra_error(StatusCode::GATEWAY_TIMEOUT, "injected hang")
        }
        Plan::Fail(code) => astra_error(code, "injected failure"),
        Plan::Pass { delay_ms, late_ms, malformed } => {
            if delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
            let r = next.run(req).await;
            if late_ms > 0 {
                // Applied already; the answer comes back late, so answers overtake each other.
                tokio::time::sleep(std::time::Duration::from_millis(late_ms)).await;
            }
            match malformed {
                Some(kind) if r.status().is_success() => {
                    if path == "/v1/oauth/token" {
                        let user = r.extensions().get::<UserTag>().map(|u| u.0.clone()).unwrap_or_default();
                        lock(&st).spoiled_token_answers.push(user);
                    }
                    malformed_body(r, kind).await
                }
                _ => r,
            }
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("request-id", v);
    }
    let user = resp.extensions().get::<UserTag>().map(|u| u.0.clone());
    lock(&st).log_call(&method, &path, resp.status().as_u16(), user);
    resp
}

async fn malformed_body(r: Response, kind: MalformedKind) -> Response {
    let (parts, body) = r.into_parts();
    let bytes = to_bytes(body, 16 << 20).await.unwrap_or_default();
    let (ctype, new_body): (&str, Vec<u8>) = match kind {
        MalformedKind::Truncated => ("application/json", bytes[..bytes.len() / 2].to_vec()),
        MalformedKind::Html => ("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec()),
        MalformedKind::Empty => ("application/json", Vec::new()),
        MalformedKind::MissingFields => ("application/json", b"{}".to_vec()),
    };
    let mut r = Response::from_parts(parts, Body::from(new_body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().remove(header::CONTENT_LENGTH);
    r
}
