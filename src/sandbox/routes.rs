//! The sandbox's HTTP surface: Astra's `/v1` endpoints behind fault injection, and the loopback-only admin
//! routes under `/_sandbox`.

use std::{
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::{Body, to_bytes},
    extract::{ConnectInfo, Path, Query, Request, State as AxState},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{MalformedKind, State, hang_for, state::TokenAnswer};
use crate::{
    astra::{TransferStatus, UserStatus},
    money::Cents,
    sandbox::{CardRec, Hold, TransferRec, UserRec},
};

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/oauth/token", post(token))
        .route("/v1/user", get(user))
        .route("/v1/transfers", get(transfers))
        .route("/v1/transfers/{id}", get(transfer))
        .route("/v1/cards", get(cards))
        .route("/v1/cards/{id}", get(card))
        .layer(middleware::from_fn_with_state(state.clone(), faults));
    let admin = Router::new()
        .route("/_sandbox/users", post(admin_user))
        .route("/_sandbox/users/{id}/status", post(admin_user_status))
        .route("/_sandbox/grants", post(admin_grant))
        .route("/_sandbox/grants/{user_id}", get(admin_grant_info))
        .route("/_sandbox/grants/{user_id}/revoke", post(admin_revoke))
        .route("/_sandbox/transfers", post(admin_transfer))
        .route("/_sandbox/transfers/{id}/status", post(admin_transfer_status))
        .route("/_sandbox/cards", post(admin_card))
        .route("/_sandbox/cards/{id}/freeze", post(admin_freeze))
        .route("/_sandbox/cards/{id}/unfreeze", post(admin_unfreeze))
        .route("/_sandbox/clock", post(admin_clock))
        .route("/_sandbox/faults", post(admin_faults))
        .route("/_sandbox/stats", get(admin_stats))
        .route("/_sandbox/calls", get(admin_calls))
        .layer(middleware::from_fn(loopback_only));
    api.merge(admin).with_state(state)
}

fn astra_error(status: StatusCode, description: &str) -> Response {
    let name = status.canonical_reason().unwrap_or("Error");
    (status, Json(json!({"code": status.as_u16(), "name": name, "description": description}))).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// Rate limit, faults, `request-id`, `Idempotency-Key` replay, and the call log, around every `/v1` call.
async fn faults(AxState(st): AxState<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let request_id = uuid::Uuid::new_v4().to_string();
    enum Plan {
        Limited(u64),
        Hang(std::time::Duration),
        Fail(StatusCode),
        Pass { delay_ms: u64, malformed: Option<MalformedKind> },
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
                Plan::Pass { delay_ms: f.latency_ms + jitter, malformed }
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
        Plan::Pass { delay_ms, malformed } => {
            if delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
            let r = with_idempotency(&st, req, next).await;
            match malformed {
                Some(kind) if r.status().is_success() => malformed_body(r, kind).await,
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

/// Same `Idempotency-Key` and same body: the first response again. Same key, other body: 422.
async fn with_idempotency(st: &Shared, req: Request, next: Next) -> Response {
    let Some(key) = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return next.run(req).await;
    };
    if key.len() > 128 {
        return astra_error(StatusCode::BAD_REQUEST, "Idempotency-Key longer than 128 characters");
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, 1 << 20).await else {
        return astra_error(StatusCode::BAD_REQUEST, "body too large");
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (parts.uri.path(), &bytes[..]).hash(&mut h);
    let hash = h.finish();
    if let Some((seen, status, body)) = lock(st).idempotency.get(&key).cloned() {
        if seen != hash {
            return astra_error(StatusCode::UNPROCESSABLE_ENTITY, "Idempotency-Key reused with a different request");
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let (rp, rb) = resp.into_parts();
    let body = to_bytes(rb, 16 << 20).await.unwrap_or_default();
    lock(st).idempotency.insert(key, (hash, rp.status.as_u16(), String::from_utf8_lossy(&body).into_owned()));
    Response::from_parts(rp, Body::from(body))
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

/// Which user a response concerned, for the call log.
#[derive(Clone)]
struct UserTag(String);

fn tagged(mut r: Response, user: &str) -> Response {
    r.extensions_mut().insert(UserTag(user.to_string()));
    r
}

fn basic_auth(h: &HeaderMap) -> Option<(String, String)> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(v.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (id, secret) = s.split_once(':')?;
    Some((id.into(), secret.into()))
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    refresh_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
}

async fn token(AxState(st): AxState<Shared>, headers: HeaderMap, body: String) -> Response {
    let Some((id, secret)) = basic_auth(&headers) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication required");
    };
    if !lock(&st).check_client(&id, &secret) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed");
    }
    let Ok(form) = serde_urlencoded::from_str::<TokenForm>(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "malformed form body");
    };
    let answer = match (form.grant_type.as_str(), form.refresh_token, form.code) {
        ("refresh_token", Some(rt), _) => lock(&st).refresh(&rt, form.redirect_uri.as_deref()),
        ("authorization_code", _, Some(_)) => TokenAnswer::InvalidGrant("authorization codes are not simulated"),
        _ => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "unsupported grant request"),
    };
    match answer {
        TokenAnswer::Issued(v) => Json(v).into_response(),
        TokenAnswer::Lost => {
            let d = hang_for(&lock(&st).settings.faults);
            tokio::time::sleep(d).await;
            astra_error(StatusCode::GATEWAY_TIMEOUT, "answer lost")
        }
        TokenAnswer::InvalidClient => oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client rejected"),
        TokenAnswer::InvalidGrant(why) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
    }
}

/// The user behind a live Bearer token.
fn authed(st: &Shared, h: &HeaderMap) -> Option<String> {
    lock(st).user_for_access(bearer(h)?)
}

fn unauthorized() -> Response {
    astra_error(StatusCode::UNAUTHORIZED, "missing, invalid or expired access token")
}

async fn user(AxState(st): AxState<Shared>, h: HeaderMap) -> Response {
    let Some(uid) = authed(&st, &h) else { return unauthorized() };
    let body = lock(&st).user_json(&uid);
    match body {
        Some(v) => tagged(Json(v).into_response(), &uid),
        None => astra_error(StatusCode::NOT_FOUND, "user not found"),
    }
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn transfers(AxState(st): AxState<Shared>, h: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let Some(uid) = authed(&st, &h) else { return unauthorized() };
    let (count, page) = lock(&st).transfers_page(&uid, q.limit.unwrap_or(25).clamp(1, 100_000), q.offset.unwrap_or(0));
    tagged(Json(json!({"count": count, "transfers": page})).into_response(), &uid)
}

async fn transfer(AxState(st): AxState<Shared>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(uid) = authed(&st, &h) else { return unauthorized() };
    let t = lock(&st).transfer_json(&uid, &id);
    match t {
        Some(v) => tagged(Json(v).into_response(), &uid),
        None => astra_error(StatusCode::NOT_FOUND, "transfer not found"),
    }
}

async fn cards(AxState(st): AxState<Shared>, h: HeaderMap) -> Response {
    let Some(uid) = authed(&st, &h) else { return unauthorized() };
    let cards = lock(&st).cards_of(&uid);
    tagged(Json(json!({"cards": cards})).into_response(), &uid)
}

async fn card(AxState(st): AxState<Shared>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(uid) = authed(&st, &h) else { return unauthorized() };
    let c = lock(&st).card_json(&uid, &id);
    match c {
        Some(v) => tagged(Json(v).into_response(), &uid),
        None => astra_error(StatusCode::NOT_FOUND, "card not found"),
    }
}

// ---- admin (loopback only) ----

async fn loopback_only(ConnectInfo(addr): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    if !addr.ip().is_loopback() {
        return astra_error(StatusCode::FORBIDDEN, "the sandbox admin surface answers loopback only");
    }
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    id: Option<String>,
    #[serde(default = "approved")]
    status: UserStatus,
    phone: Option<String>,
    email: Option<String>,
}

fn approved() -> UserStatus {
    UserStatus::Approved
}

async fn admin_user(AxState(st): AxState<Shared>, Json(u): Json<NewUser>) -> Response {
    let mut s = lock(&st);
    let id = u.id.unwrap_or_else(|| s.new_id("usr"));
    s.upsert_user(UserRec { id: id.clone(), status: u.status, phone: u.phone, email: u.email });
    Json(json!({"id": id})).into_response()
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
    failure_reason: Option<String>,
}

async fn admin_user_status(
    AxState(st): AxState<Shared>,
    Path(id): Path<String>,
    Json(b): Json<StatusBody>,
) -> Response {
    let Ok(status) = serde_json::from_value::<UserStatus>(Value::String(b.status.clone())) else {
        return astra_error(StatusCode::BAD_REQUEST, "unknown user status");
    };
    if lock(&st).set_user_status(&id, status) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGrant {
    user_id: String,
    /// When the refresh token was issued (it expires ten days later); default now.
    issued_at: Option<DateTime<Utc>>,
}

async fn admin_grant(AxState(st): AxState<Shared>, Json(g): Json<NewGrant>) -> Response {
    let mut s = lock(&st);
    let at = g.issued_at.unwrap_or_else(|| s.now());
    Json(s.issue_grant(&g.user_id, at)).into_response()
}

async fn admin_grant_info(AxState(st): AxState<Shared>, Path(user_id): Path<String>) -> Response {
    match lock(&st).grant_info(&user_id) {
        Some(g) => Json(g).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn admin_revoke(AxState(st): AxState<Shared>, Path(user_id): Path<String>) -> Response {
    if lock(&st).revoke_grant(&user_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTransfer {
    id: Option<String>,
    user_id: String,
    amount_cents: i64,
    initiated: Option<DateTime<Utc>>,
    #[serde(default = "pending")]
    status: TransferStatus,
    destination_id: Option<String>,
    source_id: Option<String>,
    routine_type: Option<String>,
    /// `daily_limit_exceeded` or `card_frozen` (then `destination_id` is the card).
    settlement_reason: Option<String>,
}

fn pending() -> TransferStatus {
    TransferStatus::Pending
}

async fn admin_transfer(AxState(st): AxState<Shared>, Json(t): Json<NewTransfer>) -> Response {
    let mut s = lock(&st);
    let now = s.now();
    let initiated = t.initiated.unwrap_or(now);
    let hold = match t.settlement_reason.as_deref() {
        None => None,
        Some("daily_limit_exceeded") => Some(Hold::DailyLimit { clears_at: s.bank_day_end(initiated) }),
        Some("card_frozen") => match &t.destination_id {
            Some(card) => Some(Hold::CardFrozen { card_id: card.clone() }),
            None => return astra_error(StatusCode::BAD_REQUEST, "card_frozen needs destination_id"),
        },
        Some(_) => return astra_error(StatusCode::BAD_REQUEST, "unknown settlement_reason"),
    };
    let id = t.id.unwrap_or_else(|| s.new_id("trf"));
    s.add_transfer(TransferRec {
        id: id.clone(),
        user_id: t.user_id,
        routine_id: Some(format!("rtn_{id}")),
        routine_type: t.routine_type,
        source_id: t.source_id,
        destination_id: t.destination_id,
        amount: Cents(t.amount_cents),
        payment_type: "ach".into(),
        initiated,
        updated: initiated,
        estimated_clearing_date: clearing_date(initiated),
        status: t.status,
        hold,
        failure_reason: None,
    });
    Json(json!({"id": id})).into_response()
}

/// ACH estimate: the next day.
pub fn clearing_date(initiated: DateTime<Utc>) -> NaiveDate {
    (initiated + TimeDelta::days(1)).date_naive()
}

async fn admin_transfer_status(
    AxState(st): AxState<Shared>,
    Path(id): Path<String>,
    Json(b): Json<StatusBody>,
) -> Response {
    let Ok(status) = serde_json::from_value::<TransferStatus>(Value::String(b.status.clone())) else {
        return astra_error(StatusCode::BAD_REQUEST, "unknown transfer status");
    };
    if lock(&st).set_transfer_status(&id, status, b.failure_reason) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCard {
    id: Option<String>,
    user_id: String,
    #[serde(default = "yes")]
    push_enabled: bool,
    #[serde(default = "yes")]
    pull_enabled: bool,
    #[serde(default)]
    frozen: bool,
}

fn yes() -> bool {
    true
}

async fn admin_card(AxState(st): AxState<Shared>, Json(c): Json<NewCard>) -> Response {
    let mut s = lock(&st);
    let id = c.id.unwrap_or_else(|| s.new_id("crd"));
    s.add_card(CardRec {
        id: id.clone(),
        user_id: c.user_id,
        status: "approved".into(),
        push_enabled: c.push_enabled,
        pull_enabled: c.pull_enabled,
        frozen: c.frozen,
    });
    Json(json!({"id": id})).into_response()
}

async fn admin_freeze(AxState(st): AxState<Shared>, Path(id): Path<String>) -> Response {
    if lock(&st).set_card_frozen(&id, true) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn admin_unfreeze(AxState(st): AxState<Shared>, Path(id): Path<String>) -> Response {
    if lock(&st).set_card_frozen(&id, false) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    advance_seconds: i64,
}

async fn admin_clock(AxState(st): AxState<Shared>, Json(b): Json<ClockBody>) -> Response {
    let now = lock(&st).advance_clock(TimeDelta::seconds(b.advance_seconds));
    Json(json!({"now": now})).into_response()
}

async fn admin_faults(AxState(st): AxState<Shared>, Json(f): Json<super::Faults>) -> Response {
    lock(&st).settings.faults = f;
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_stats(AxState(st): AxState<Shared>) -> Response {
    let s = lock(&st);
    Json(json!({
        "now": s.now(),
        "requests": s.calls.len(),
        "max_requests_in_one_second": s.max_in_one_second,
        "refreshes": s.total_refreshes(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct CallsQuery {
    limit: Option<usize>,
}

async fn admin_calls(AxState(st): AxState<Shared>, Query(q): Query<CallsQuery>) -> Response {
    let s = lock(&st);
    let n = q.limit.unwrap_or(100);
    let calls: Vec<_> = s.calls.iter().rev().take(n).cloned().collect();
    Json(calls).into_response()
}
