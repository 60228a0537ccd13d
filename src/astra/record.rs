//! The `api_call` table: one row per HTTP attempt to Astra, with its request-id; never a token or a body.

use chrono::{DateTime, Utc};

use crate::{store::Store, store::with_pool};

pub(super) struct ApiCall<'a> {
    pub run_id: Option<&'a str>,
    pub at: DateTime<Utc>,
    pub method: &'a str,
    pub endpoint: &'a str,
    pub user_id: Option<&'a str>,
    pub attempt: i32,
    pub status: Option<i32>,
    pub latency_ms: i64,
    pub request_id: Option<&'a str>,
    pub outcome: &'a str,
    pub error: Option<&'a str>,
}

pub(super) async fn insert(store: &Store, c: &ApiCall<'_>) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query(
        "INSERT INTO api_call (run_id, at, method, endpoint, user_id, attempt, status, latency_ms, request_id,
                               outcome, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )
    .bind(c.run_id)
    .bind(c.at)
    .bind(c.method)
    .bind(c.endpoint)
    .bind(c.user_id)
    .bind(c.attempt)
    .bind(c.status)
    .bind(c.latency_ms)
    .bind(c.request_id)
    .bind(c.outcome)
    .bind(c.error)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Calls older than the cutoff (the `retention` job's `api_calls`).
pub const FORGET: crate::store::forget::Forget =
    crate::store::forget::Forget { table: "api_call", key: "id", done_before: "at < $1" };
