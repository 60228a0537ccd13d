//! SQL of the `outbox` table: messages written in the same transaction as the fact they announce, claimed one
//! at a time for the whole of its delivery, marked delivered or rescheduled only under that claim.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{store::Store, store::with_pool};

/// Inserts an outbox message on a connection or transaction; a second message with the same idempotency key
/// is ignored. Evaluates to `sqlx::Result<u64>` (rows inserted).
macro_rules! outbox_insert {
    ($conn:expr, $msg:expr) => {{
        let m: &$crate::outbox::Message = $msg;
        sqlx::query(
            "INSERT INTO outbox (id, idempotency_key, kind, user_id, payload, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&m.idempotency_key)
        .bind(m.kind)
        .bind(m.user_id.as_deref())
        .bind(m.payload.to_string())
        .bind(m.created_at)
        .execute($conn)
        .await
        .map(|r| r.rows_affected())
    }};
}
pub(crate) use outbox_insert;

/// Adds one message on its own.
pub async fn insert(store: &Store, m: &super::Message) -> sqlx::Result<bool> {
    with_pool!(store, |p| outbox_insert!(p, m).map(|n| n == 1))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub idempotency_key: String,
    pub payload: String,
    pub attempts: i32,
}

/// Claims the oldest message due for delivery at `now` for `owner` until `until` (several deliverers never send
/// one at once: a claim lasts longer than one POST can take).
pub async fn claim_one(
    store: &Store,
    owner: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<Option<Claimed>> {
    let lock = if store.is_postgres() { "FOR UPDATE SKIP LOCKED" } else { "" };
    let sql = format!(
        "UPDATE outbox SET claimed_until = $1, claimed_by = $2 WHERE id IN (
             SELECT id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $3
               AND (claimed_until IS NULL OR claimed_until < $3)
             ORDER BY created_at, id LIMIT 1 {lock})
         RETURNING id, idempotency_key, payload, attempts"
    );
    with_pool!(store, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(until)
        .bind(owner)
        .bind(now)
        .fetch_optional(p)
        .await)
}

/// Marks a message delivered, only under `owner`'s claim; `false` when the claim was lost.
pub async fn mark_delivered(store: &Store, id: &str, owner: &str, now: DateTime<Utc>) -> sqlx::Result<bool> {
    with_pool!(store, |p| {
        sqlx::query(
            "UPDATE outbox SET delivered_at = $1, attempts = attempts + 1, claimed_until = NULL, last_error = NULL
             WHERE id = $2 AND claimed_by = $3 AND delivered_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .bind(owner)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1)
    })
}

/// Reschedules a failed delivery, only under `owner`'s claim; `false` when the claim was lost.
pub async fn reschedule(store: &Store, id: &str, owner: &str, next: DateTime<Utc>, error: &str) -> sqlx::Result<bool> {
    with_pool!(store, |p| {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, claimed_until = NULL, last_error = $2
             WHERE id = $3 AND claimed_by = $4 AND delivered_at IS NULL",
        )
        .bind(next)
        .bind(error)
        .bind(id)
        .bind(owner)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1)
    })
}

/// When a pass may deliver to `endpoint` again, if it stopped answering (see [`endpoint_unreachable`]).
pub async fn endpoint_retry_at(store: &Store, endpoint: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    with_pool!(store, |p| sqlx::query_scalar("SELECT retry_at FROM outbox_endpoint WHERE endpoint = $1")
        .bind(endpoint)
        .fetch_optional(p)
        .await)
}

/// Records that `endpoint` did not answer at `now`: passes leave it alone until a back-off that doubles with
/// each failure in a row (`backoff(failures)`) has passed; returns until when.
pub async fn endpoint_unreachable(
    store: &Store,
    endpoint: &str,
    now: DateTime<Utc>,
    error: &str,
    backoff: impl Fn(i32) -> chrono::TimeDelta,
) -> sqlx::Result<DateTime<Utc>> {
    // One transaction: the row the first statement wrote is the one the second dates (another process's
    // `endpoint_answered` waits for it).
    with_pool!(store, |p| {
        let mut tx = p.begin().await?;
        let failures: i32 = sqlx::query_scalar(
            "INSERT INTO outbox_endpoint (endpoint, failures, retry_at, last_error) VALUES ($1, 1, $2, $3)
             ON CONFLICT (endpoint) DO UPDATE SET failures = outbox_endpoint.failures + 1, last_error = $3
             RETURNING failures",
        )
        .bind(endpoint)
        .bind(now)
        .bind(error)
        .fetch_one(&mut *tx)
        .await?;
        // As stored (PostgreSQL keeps microseconds).
        let retry_at =
            sqlx::query_scalar("UPDATE outbox_endpoint SET retry_at = $1 WHERE endpoint = $2 RETURNING retry_at")
                .bind(now + backoff(failures))
                .bind(endpoint)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(retry_at)
    })
}

/// Records that `endpoint` answered (whatever it answered): passes deliver to it again at once.
pub async fn endpoint_answered(store: &Store, endpoint: &str) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query("DELETE FROM outbox_endpoint WHERE endpoint = $1")
        .bind(endpoint)
        .execute(p)
        .await
        .map(|_| ()))
}

/// One line of `prompts list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: String,
    pub idempotency_key: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

pub async fn list(
    store: &Store,
    undelivered_only: bool,
    kind: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT id, idempotency_key, kind, user_id, payload, created_at, attempts, delivered_at, last_error
         FROM outbox WHERE ($1 = FALSE OR delivered_at IS NULL) AND ($2 IS NULL OR kind = $2)
         ORDER BY created_at DESC, id LIMIT $3"
    )
    .bind(undelivered_only)
    .bind(kind)
    .bind(limit)
    .fetch_all(p)
    .await)
}

/// Messages of each kind: (kind, total, delivered).
pub async fn count_by_kind(store: &Store) -> sqlx::Result<Vec<(String, i64, i64)>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT kind, COUNT(*), COUNT(delivered_at) FROM outbox GROUP BY kind ORDER BY kind"
    )
    .fetch_all(p)
    .await)
}
