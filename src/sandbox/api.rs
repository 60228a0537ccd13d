//! Astra's `/v1` endpoints as the sandbox answers them, from its state.

use axum::{
    Json, Router,
    extract::{Path, Query, State as AxState},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::{
    hang_for,
    routes::{Shared, astra_error, lock, oauth_error},
    state::{PageQuery, TokenAnswer},
};

/// The Astra `/v1` routes.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/oauth/token", post(token))
        .route("/v1/user", get(user))
        .route("/v1/transfers", get(transfers))
        .route("/v1/transfers/{id}", get(transfer))
        .route("/v1/cards", get(cards))
        .route("/v1/cards/{id}", get(card))
}

/// Which user a response concerned, for the call log.
#[derive(Clone)]
pub(super) struct UserTag(pub(super) String);

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
    let mut user = None;
    let answer = match (form.grant_type.as_str(), form.refresh_token, form.code) {
        ("refresh_token", Some(rt), _) => {
            let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
            let mut s = lock(&st);
            user = s.user_of_refresh_token(&rt);
            s.refresh(&rt, form.redirect_uri.as_deref(), key)
        }
        ("authorization_code", _, Some(code)) => lock(&st).exchange_code(&code, form.redirect_uri.as_deref()),
        _ => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "unsupported grant request"),
    };
    let user = user.unwrap_or_default();
    match answer {
        TokenAnswer::Issued(v) => tagged(Json(v).into_response(), &user),
        TokenAnswer::Lost(_) => {
            let d = {
                let mut s = lock(&st);
                s.spoiled_token_answers.push(user);
                hang_for(&s.settings.faults)
            };
            tokio::time::sleep(d).await;
            astra_error(StatusCode::GATEWAY_TIMEOUT, "answer lost")
        }
        TokenAnswer::InvalidGrant(why) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
        TokenAnswer::KeyReused => {
            astra_error(StatusCode::UNPROCESSABLE_ENTITY, "Idempotency-Key reused with a different request")
        }
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

async fn transfers(AxState(st): AxState<Shared>, h: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let Some(uid) = authed(&st, &h) else { return unauthorized() };
    let (count, page) = lock(&st).transfers_page(&uid, &q);
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
    tagged(Json(json!({"count": cards.len(), "cards": cards})).into_response(), &uid)
}

async fn card(AxState(st): AxState<Shared>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(uid) = authed(&st, &h) else { return unauthorized() };
    let c = lock(&st).card_json(&uid, &id);
    match c {
        Some(v) => tagged(Json(v).into_response(), &uid),
        None => astra_error(StatusCode::NOT_FOUND, "card not found"),
    }
}
