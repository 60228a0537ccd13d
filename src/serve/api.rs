//! The handlers: each parses its body (a 400 names the field), makes the same library call as its command,
//! and answers JSON.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument as _;

use super::{
    AppState,
    http::{error, failure, parse},
};
use crate::{
    domain::{Cents, time::parse_duration},
    inbox::{self, Webhook, signature},
    reconcile::{
        guard::{self, GuardRequest, HoldRequest},
        holds,
    },
    store::Session,
    tokens::{self, ImportLine, Imported, NoToken},
};

/// `POST /v1/guard`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GuardBody {
    user_id: String,
    amount_cents: i64,
    #[serde(default)]
    destination_id: Option<String>,
    #[serde(default)]
    hold_key: Option<String>,
    /// A duration such as `30m` or `1h` (default `guard.hold_for`).
    #[serde(default)]
    hold_for: Option<String>,
}

pub(super) async fn guard(State(st): State<AppState>, body: Bytes) -> Response {
    let b: GuardBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let w = &st.worker;
    let settings = &w.settings.guard;
    let req = GuardRequest {
        user_id: &b.user_id,
        amount: Cents(b.amount_cents),
        destination_id: b.destination_id.as_deref(),
    };
    let now = Utc::now();
    let answer = match &b.hold_key {
        None if b.hold_for.is_some() => return error(StatusCode::BAD_REQUEST, "field `hold_for`: needs `hold_key`"),
        None => guard::check(&w.store, settings, &req, now).await,
        Some(key) => {
            let hold_for = match b.hold_for.as_deref().map(parse_duration) {
                None => settings.hold_for,
                Some(Ok(d)) => d,
                Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("field `hold_for`: {e}")),
            };
            guard::check_and_hold(&w.store, settings, &req, &HoldRequest { key, hold_for }, now).await
        }
    };
    match answer {
        Ok(a) => Json(a).into_response(),
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttachBody {
    routine_id: String,
}

/// A path's id that no store could hold or no command would take (empty, over-long, a control character such
/// as the NUL PostgreSQL refuses): a 400 naming it.
fn bad_id(checked: Result<(), String>) -> Option<Response> {
    checked.err().map(|e| error(StatusCode::BAD_REQUEST, e))
}

pub(super) async fn attach(State(st): State<AppState>, Path(key): Path<String>, body: Bytes) -> Response {
    if let Some(r) = bad_id(holds::check_key(&key)) {
        return r;
    }
    let b: AttachBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if let Some(r) = bad_id(holds::check_routine_id(&b.routine_id)) {
        return r;
    }
    match holds::get(&mut Session::pooled(&st.worker.store), &key).await {
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no hold under key {}", crate::secrets::shown(&key))),
        Err(e) => return failure(e.into()),
        Ok(Some(_)) => {}
    }
    // To the end: the attach commits, then ends the hold if its routine's transfer is already counted.
    let (store, k, routine) = (st.worker.store.clone(), key.clone(), b.routine_id.clone());
    match to_the_end(&st, async move { holds::attach(&store, &k, &routine).await }).await {
        Ok(()) => Json(json!({"hold_key": key, "routine_id": b.routine_id, "attached": true})).into_response(),
        // A bad routine id 400; the hold ended, or the routine is another hold's: 409.
        Err(e) => failure(e),
    }
}

pub(super) async fn release(State(st): State<AppState>, Path(key): Path<String>) -> Response {
    if let Some(r) = bad_id(holds::check_key(&key)) {
        return r;
    }
    match holds::release(&st.worker.store, &key, Utc::now()).await {
        Ok(true) => Json(json!({"hold_key": key, "released": true})).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no open hold under key {}", crate::secrets::shown(&key))),
        Err(e) => failure(e.into()),
    }
}

/// Runs `work` to its end even when the caller goes away: hyper drops a request's handler when its connection
/// closes, and a refresh or a code exchange cut between Astra's answer and its commit loses the grant (Astra
/// has rotated or spent the code; the store never learns the new pair); an attach cut between its two steps
/// leaves a counted hold open.
/// Shutdown waits for it within the grace period ([`AppState::to_the_end`]).
async fn to_the_end<T: Send + 'static>(
    st: &AppState,
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    // In the request's span: its log lines carry the request id.
    st.to_the_end.spawn(work.in_current_span()).await.map_err(|e| anyhow::anyhow!("the request's work stopped: {e}"))?
}

pub(super) async fn access_token(State(st): State<AppState>, Path(user_id): Path<String>) -> Response {
    if let Some(r) = bad_id(crate::secrets::check_id("user_id", &user_id)) {
        return r;
    }
    let (store, svc) = (st.worker.store.clone(), st.services.clone());
    let work = async move { tokens::access_token_until(&store, &svc.tokens, &user_id).await };
    match to_the_end(&st, work).await {
        Ok(a) => Json(json!({"access_token": a.token.expose_secret(), "expires_at": a.expires_at})).into_response(),
        Err(e) => match e.downcast_ref::<NoToken>() {
            Some(NoToken::NoGrant { .. }) => error(StatusCode::NOT_FOUND, format!("{e:#}")),
            Some(NoToken::NeedsReauthorization { .. }) => error(StatusCode::CONFLICT, format!("{e:#}")),
            None => failure(e),
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExchangeBody {
    user_id: String,
    code: SecretString,
}

pub(super) async fn exchange(State(st): State<AppState>, body: Bytes) -> Response {
    let b: ExchangeBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let (store, svc) = (st.worker.store.clone(), st.services.clone());
    let work = async move { tokens::exchange(&store, &svc.tokens, &b.user_id, &b.code, Utc::now()).await };
    match to_the_end(&st, work).await {
        Ok(done) => Json(done).into_response(),
        Err(e) if crate::exit::classify(&e) == crate::failure::Status::No => {
            error(StatusCode::BAD_REQUEST, format!("{e:#}"))
        }
        Err(e) => failure(e),
    }
}

/// `POST /v1/grants`: a JSON array of grants, or JSON lines, as `grants import` reads them. Each grant is
/// judged on its own; the answer counts them and names every one refused, by its number.
pub(super) async fn import(State(st): State<AppState>, body: Bytes) -> Response {
    let svc = &st.services;
    let items: Vec<(usize, Result<ImportLine, String>)> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => match serde_json::from_slice::<Vec<serde_json::Value>>(&body) {
            Ok(v) => v
                .into_iter()
                .enumerate()
                .map(|(i, x)| (i + 1, ImportLine::parse_line(x.to_string().as_bytes(), Utc::now())))
                .collect(),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed array: {e}")),
        },
        _ => match std::str::from_utf8(&body) {
            Ok(text) => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i + 1, ImportLine::parse_line(l.as_bytes(), Utc::now())))
                .collect(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "the body is not UTF-8"),
        },
    };
    let (mut new, mut replaced, mut unchanged, mut stale) = (0, 0, 0, 0);
    let mut rejected = Vec::new();
    for (n, item) in items {
        let line = match item {
            Ok(l) => l,
            Err(e) => {
                rejected.push(json!({"item": n, "error": e}));
                continue;
            }
        };
        match tokens::import(&st.worker.store, &svc.tokens.keyring, &line, Utc::now()).await {
            Ok(Imported::New) => new += 1,
            Ok(Imported::Replaced { .. }) => replaced += 1,
            Ok(Imported::Unchanged) => unchanged += 1,
            Ok(Imported::Stale) => stale += 1,
            Err(e) if crate::exit::classify(&e) == crate::failure::Status::No => rejected
                .push(json!({"item": n, "user_id": crate::secrets::shown(&line.user_id), "error": format!("{e:#}")})),
            Err(e) => return failure(e.context(format!("item {n}"))),
        }
    }
    let status = if rejected.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let body = json!({"new": new, "replaced": replaced, "unchanged": unchanged, "stale": stale, "rejected": rejected});
    (status, Json(body)).into_response()
}

/// `POST /webhooks/astra`: verified against `Astra-Verification` before anything is read or stored, stored
/// once per `webhook_id`, answered at once; the inbox processor does the rest.
pub(super) async fn webhook(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let svc = &st.services;
    let sig = headers.get("astra-verification").and_then(|v| v.to_str().ok());
    if !signature::verify(&svc.credentials.client_secret, &body, sig) {
        return error(StatusCode::UNAUTHORIZED, "missing or bad Astra-Verification signature");
    }
    let w = match Webhook::parse(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let text = String::from_utf8_lossy(&body);
    match inbox::store::accept(&st.worker.store, &w, &text, Utc::now()).await {
        Ok(new) => {
            if new {
                st.wake.notify_one();
            }
            Json(json!({"webhook_id": w.webhook_id, "accepted": true, "duplicate": !new})).into_response()
        }
        Err(e) => failure(e.into()),
    }
}
