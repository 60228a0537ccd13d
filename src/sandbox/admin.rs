//! The loopback-only admin surface (`/_sandbox/…`): seed users, grants, transfers and cards, move the
//! clock, set faults, read statistics and the call log.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{ConnectInfo, Path, Query, Request, State as AxState},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::routes::{Shared, astra_error, lock};
use crate::{
    astra::{TransferStatus, UserStatus},
    domain::Cents,
    sandbox::{CardRec, Hold, TransferRec, UserRec},
};

/// The admin (`/_sandbox/…`) routes.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/_sandbox/users", post(admin_user))
        .route("/_sandbox/users/{id}/status", post(admin_user_status))
        .route("/_sandbox/grants", post(admin_grant))
        .route("/_sandbox/grants/{user_id}", get(admin_grant_info))
        .route("/_sandbox/grants/{user_id}/revoke", post(admin_revoke))
        .route("/_sandbox/codes", post(admin_code))
        .route("/_sandbox/transfers", post(admin_transfer))
        .route("/_sandbox/transfers/{id}/status", post(admin_transfer_status))
        .route("/_sandbox/cards", post(admin_card))
        .route("/_sandbox/cards/{id}/freeze", post(admin_freeze))
        .route("/_sandbox/cards/{id}/unfreeze", post(admin_unfreeze))
        .route("/_sandbox/clock", post(admin_clock))
        .route("/_sandbox/faults", post(admin_faults))
        .route("/_sandbox/stats", get(admin_stats))
        .route("/_sandbox/calls", get(admin_calls))
}

pub(super) async fn loopback_only(ConnectInfo(addr): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
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

/// `converted_to_user` is a user intent's status; `GET /v1/user` never answers it.
fn user_status_refused(status: UserStatus) -> Option<Response> {
    (status == UserStatus::ConvertedToUser)
        .then(|| astra_error(StatusCode::BAD_REQUEST, "converted_to_user is a user intent's status, not a user's"))
}

async fn admin_user(AxState(st): AxState<Shared>, Json(u): Json<NewUser>) -> Response {
    if let Some(r) = user_status_refused(u.status) {
        return r;
    }
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
    if let Some(r) = user_status_refused(status) {
        return r;
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCode {
    user_id: String,
}

/// Mints an authorization code for a user (what Astra's authorization page hands the redirect).
async fn admin_code(AxState(st): AxState<Shared>, Json(c): Json<NewCode>) -> Response {
    match lock(&st).mint_code(&c.user_id) {
        Some(code) => Json(serde_json::json!({ "code": code })).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
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
    client_correlation_id: Option<String>,
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
        client_correlation_id: t.client_correlation_id,
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
pub(super) fn clearing_date(initiated: DateTime<Utc>) -> NaiveDate {
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
        "longest_lock_hold_ms": s.longest_hold.as_secs_f64() * 1e3,
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
