//! The sandbox's HTTP surface: Astra's `/v1` endpoints (`api`) behind fault injection (`faults`), and the
//! loopback-only admin routes under `/_sandbox` (`admin`).

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{State, admin, api, faults::faults};

pub(super) type Shared = Arc<Mutex<State>>;

pub(super) fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn router(state: Shared) -> Router {
    let api = api::routes().layer(middleware::from_fn_with_state(state.clone(), faults));
    let admin = admin::routes().layer(middleware::from_fn(admin::loopback_only));
    api.merge(admin).with_state(state)
}

pub(super) fn astra_error(status: StatusCode, description: &str) -> Response {
    let name = status.canonical_reason().unwrap_or("Error");
    (status, Json(json!({"code": status.as_u16(), "name": name, "description": description}))).into_response()
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}
