//! The sandbox's HTTP surface: Astra's `/v1` endpoints (`api`) behind fault injection (`faults`), and the
//! loopback-only admin routes under `/_sandbox` (`admin`).

use std::sync::{Arc, Mutex, MutexGuard};

use axum::{
    Json, Router,
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{State, admin, api, faults::faults};

pub(super) type Shared = Arc<Mutex<State>>;

/// The state, locked by one request; how long it stays locked is measured (see [`State::longest_hold`]).
pub(super) fn lock(s: &Shared) -> Locked<'_> {
    Locked { guard: s.lock().unwrap_or_else(|p| p.into_inner()), since: std::time::Instant::now() }
}

/// The state's lock guard, which records its hold time when it is let go: every request waits on this lock,
/// so a long hold is a stall of the whole sandbox, and arrivals counted after it come in a bunch.
pub(super) struct Locked<'a> {
    guard: MutexGuard<'a, State>,
    since: std::time::Instant,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        if held > self.guard.longest_hold {
            self.guard.longest_hold = held;
        }
    }
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
