//! The owner of `webhook_inbox`: webhooks accepted once per `webhook_id` (a repeat only counts the delivery),
//! claimed by one processor at a time (`for update skip locked` on PostgreSQL, so two `serve` processes on one
//! store never process a webhook twice at once), finished or rescheduled only under the claim that took it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Webhook;
use crate::store::{Store, with_pool};

/// Stores a webhook as received. `true` when it is new; a repeat of a known `webhook_id` only counts the
/// delivery (its processing, done or pending, stands).
pub async fn accept(store: &Store, w: &Webhook, body: &str, now: DateTime<Utc>) -> sqlx::Result<bool> {
    with_pool!(store, |p| {
        let n = sqlx::query(
            "INSERT INTO webhook_inbox (webhook_id, webhook_type, user_id, resource_id, body, received_at,
                 next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (webhook_id) DO NOTHING",
        )
        .bind(&w.webhook_id)
        .bind(&w.webhook_type)
        .bind(w.user_id.as_deref())
        .bind(w.resource_id.as_deref())
        .bind(body)
        .bind(now)
        .execute(p)
        .await?
        .rows_affected();
        if n == 0 {
            sqlx::query("UPDATE webhook_inbox SET deliveries = deliveries + 1 WHERE webhook_id = $1")
                .bind(&w.webhook_id)
                .execute(p)
                .await?;
        }
        Ok(n == 1)
    })
}

/// A claimed webhook.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub webhook_id: String,
    pub webhook_type: String,
    pub user_id: Option<String>,
    pub resource_id: Option<String>,
    pub attempts: i32,
}

/// Claims up to `limit` webhooks due for processing, for `owner` until `until`.
pub async fn claim_due(
    store: &Store,
    owner: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Claimed>> {
    let lock = if store.is_postgres() { "FOR UPDATE SKIP LOCKED" } else { "" };
    let sql = format!(
        "UPDATE webhook_inbox SET claimed_by = $1, claimed_until = $2, attempts = attempts + 1
         WHERE webhook_id IN (
             SELECT webhook_id FROM webhook_inbox
             WHERE processed_at IS NULL AND next_attempt_at <= $3 AND (claimed_until IS NULL OR claimed_until < $3)
             ORDER BY next_attempt_at, webhook_id LIMIT $4 {lock})
         RETURNING webhook_id, webhook_type, user_id, resource_id, attempts"
    );
    with_pool!(store, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// Extends to `until` `owner`'s claims on `ids` (the batch it is processing) that it still holds: one finished,
/// rescheduled or taken over is not touched. How many it held.
pub async fn renew(store: &Store, owner: &str, ids: &[&str], until: DateTime<Utc>) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let listed = (0..ids.len()).map(|i| format!("${}", i + 3)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "UPDATE webhook_inbox SET claimed_until = $1
         WHERE claimed_by = $2 AND claimed_until IS NOT NULL AND processed_at IS NULL AND webhook_id IN ({listed})"
    );
    with_pool!(store, |p| {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(until).bind(owner);
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(p).await.map(|r| r.rows_affected())
    })
}

/// Ends a webhook's processing (`processed`, `ignored` or `failed`), only under `owner`'s claim: `false` when
/// the claim was lost (another processor took it over; its outcome stands).
pub async fn finish(
    store: &Store,
    id: &str,
    owner: &str,
    outcome: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE webhook_inbox SET processed_at = $1, outcome = $2, last_error = $3, claimed_until = NULL
         WHERE webhook_id = $4 AND claimed_by = $5 AND processed_at IS NULL"
    )
    .bind(now)
    .bind(outcome)
    .bind(note)
    .bind(id)
    .bind(owner)
    .execute(p)
    .await
    .map(|r| r.rows_affected() == 1))
}

/// Gives a webhook back for another attempt at `next`, only under `owner`'s claim.
pub async fn reschedule(store: &Store, id: &str, owner: &str, next: DateTime<Utc>, error: &str) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE webhook_inbox SET next_attempt_at = $1, last_error = $2, claimed_until = NULL
         WHERE webhook_id = $3 AND claimed_by = $4 AND processed_at IS NULL"
    )
    .bind(next)
    .bind(error)
    .bind(id)
    .bind(owner)
    .execute(p)
    .await
    .map(|r| r.rows_affected() == 1))
}

/// Webhooks not yet processed (the inbox depth).
pub async fn depth(store: &Store) -> sqlx::Result<i64> {
    with_pool!(store, |p| sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox WHERE processed_at IS NULL")
        .fetch_one(p)
        .await)
}

/// One webhook as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InboxRow {
    pub webhook_id: String,
    pub webhook_type: String,
    pub user_id: Option<String>,
    pub resource_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub deliveries: i32,
    pub attempts: i32,
    pub processed_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub last_error: Option<String>,
}

/// The inbox, newest first.
pub async fn list(store: &Store, limit: i64) -> sqlx::Result<Vec<InboxRow>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT webhook_id, webhook_type, user_id, resource_id, received_at, deliveries, attempts, processed_at,
                outcome, last_error
         FROM webhook_inbox ORDER BY received_at DESC, webhook_id LIMIT $1"
    )
    .bind(limit)
    .fetch_all(p)
    .await)
}

/// Webhooks processed before the cutoff (the `retention` job's `webhooks`); one still waiting is kept.
pub const FORGET: crate::store::forget::Forget = crate::store::forget::Forget {
    table: "webhook_inbox",
    key: "webhook_id",
    done_before: "processed_at IS NOT NULL AND processed_at < $1",
};
