//! The one table of routes: the router is built from it and `/openapi.json` is written from it, so a route
//! cannot exist undocumented. Request bodies are size-limited (`/v1`: 1 MiB; webhooks: 64 KiB).

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, delete, get, post},
};
use serde_json::{Value, json};

use super::{AppState, api, http, openapi};
use crate::inbox;

/// One route: how it is served and how it is described.
pub(crate) struct Route {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) summary: &'static str,
    /// Requires the bearer API key.
    pub(crate) authed: bool,
    /// The request body's JSON schema, when it takes one.
    pub(crate) body: Option<fn() -> Value>,
    /// The success status and what it answers.
    pub(crate) answers: (u16, &'static str),
    pub(crate) handler: fn() -> MethodRouter<AppState>,
}

fn object(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "required": required, "properties": props, "additionalProperties": false})
}

pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "post",
        path: "/webhooks/astra",
        summary: "Astra's webhooks: verified by Astra-Verification (Base64 HMAC-SHA256 of the body under the client secret), stored once per webhook_id, processed in the background",
        authed: false,
        body: Some(|| {
            object(
                &["webhook_type", "webhook_id"],
                json!({"webhook_type": {"type": "string"}, "webhook_id": {"type": "string"},
                       "user_id": {"type": "string"}, "resource_id": {"type": "string"}}),
            )
        }),
        answers: (200, "accepted (also for a webhook_id seen before)"),
        handler: || post(api::webhook).layer(DefaultBodyLimit::max(inbox::MAX_BODY)),
    },
    Route {
        method: "post",
        path: "/v1/guard",
        summary: "May this routine request go out? With hold_key, the allowed amount is held until its transfer is counted, released or expired",
        authed: true,
        body: Some(|| {
            object(
                &["user_id", "amount_cents"],
                json!({"user_id": {"type": "string"}, "amount_cents": {"type": "integer", "minimum": 1},
                       "destination_id": {"type": "string"}, "hold_key": {"type": "string", "maxLength": 128},
                       "hold_for": {"type": "string", "examples": ["1h"]}}),
            )
        }),
        answers: (200, "the guard's answer, allowed or denied (the CLI's JSON)"),
        handler: || post(api::guard),
    },
    Route {
        method: "post",
        path: "/v1/holds/{key}/attach",
        summary: "Ties an open hold to the routine Astra created for it",
        authed: true,
        body: Some(|| object(&["routine_id"], json!({"routine_id": {"type": "string"}}))),
        answers: (200, "attached"),
        handler: || post(api::attach),
    },
    Route {
        method: "delete",
        path: "/v1/holds/{key}",
        summary: "Releases an open hold (the routine was not created)",
        authed: true,
        body: None,
        answers: (200, "released"),
        handler: || delete(api::release),
    },
    Route {
        method: "get",
        path: "/v1/users/{user_id}/access-token",
        summary: "A valid access token for the user, refreshed first under the grant's lease when it is about to expire",
        authed: true,
        body: None,
        answers: (200, "{access_token, expires_at}"),
        handler: || get(api::access_token),
    },
    Route {
        method: "post",
        path: "/v1/grants/exchange",
        summary: "Exchanges the authorization code of the OAuth redirect for the user's grant, stores it, closes the re-authorization episode",
        authed: true,
        body: Some(|| object(&["user_id", "code"], json!({"user_id": {"type": "string"}, "code": {"type": "string"}}))),
        answers: (200, "what was stored (never a token)"),
        handler: || post(api::exchange),
    },
    Route {
        method: "post",
        path: "/v1/grants",
        summary: "Imports grants: a JSON array, or JSON lines, as `grants import` reads them",
        authed: true,
        body: Some(|| {
            json!({"type": "array", "items": object(&["user_id", "access_token", "refresh_token"],
                json!({"user_id": {"type": "string"}, "access_token": {"type": "string"},
                       "refresh_token": {"type": "string"}, "refresh_token_issued_at": {"type": "string", "format": "date-time"},
                       "refresh_token_expires_at": {"type": "string", "format": "date-time"},
                       "access_token_expires_at": {"type": "string", "format": "date-time"}, "phone": {"type": "string"}}))})
        }),
        answers: (200, "counts; 422 when some grants were refused (the others are stored)"),
        handler: || post(api::import),
    },
    Route {
        method: "get",
        path: "/healthz",
        summary: "The process lives",
        authed: false,
        body: None,
        answers: (200, "ok"),
        handler: || get(|| async { "ok\n" }),
    },
    Route {
        method: "get",
        path: "/readyz",
        summary: "The store answers and its schema is up to date",
        authed: false,
        body: None,
        answers: (200, "ready; 503 otherwise"),
        handler: || get(ready),
    },
    Route {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics: jobs, HTTP requests per route, the webhook inbox depth",
        authed: false,
        body: None,
        answers: (200, "Prometheus text"),
        handler: || get(metrics),
    },
    Route {
        method: "get",
        path: "/openapi.json",
        summary: "This document",
        authed: false,
        body: None,
        answers: (200, "OpenAPI 3.1"),
        handler: || get(|| async { axum::Json(openapi::document()) }),
    },
];

/// The service's router, from [`ROUTES`].
pub(super) fn router(state: AppState) -> Router {
    let (mut open, mut authed) = (Router::new(), Router::new());
    for r in ROUTES {
        if r.authed {
            authed = authed.route(r.path, (r.handler)());
        } else {
            open = open.route(r.path, (r.handler)());
        }
    }
    let authed = authed
        .route_layer(middleware::from_fn_with_state(state.clone(), http::require_key))
        .layer(DefaultBodyLimit::max(1024 * 1024));
    open.merge(authed)
        .route_layer(middleware::from_fn_with_state(state.clone(), http::around))
        .fallback(|| async { http::error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

async fn ready(State(st): State<AppState>) -> Response {
    match st.worker.store.is_migrated().await {
        Ok(true) => (StatusCode::OK, "ready\n").into_response(),
        Ok(false) => (StatusCode::SERVICE_UNAVAILABLE, "the store's schema is behind: run `astra-worker migrate`\n")
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the store does not answer (see the log)\n").into_response()
        }
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let jobs = match crate::ops::metrics::render(&st.worker).await {
        Ok(t) => t,
        Err(e) => return http::failure(e),
    };
    let depth = match inbox::store::depth(&st.worker.store).await {
        Ok(n) => n,
        Err(e) => return http::failure(e.into()),
    };
    let text = format!(
        "{jobs}# HELP astra_worker_webhook_inbox_depth Webhooks accepted and not yet processed.\n\
         # TYPE astra_worker_webhook_inbox_depth gauge\nastra_worker_webhook_inbox_depth {depth}\n{}",
        st.metrics.render()
    );
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
