//! The owner of `grant_token` and `grant_fingerprint`: sealed rows in and out, per-grant leases, batch claims of
//! due grants (`for update skip locked` on PostgreSQL), and writes fenced on the token version and the lease
//! (which close the grant's refresh intents in the same transaction; see [`super::intents`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::episodes::episode_close_for_new_grant;
use crate::{
    astra::{REFRESH_TOKEN_LIFETIME, UserStatus},
    store::{Store, faults, with_pool},
};

/// A grant row as stored: tokens still sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedGrant {
    pub user_id: String,
    pub status: String,
    pub token_version: i64,
    pub key_id: String,
    pub access_ct: Vec<u8>,
    pub refresh_ct: Vec<u8>,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: DateTime<Utc>,
    pub phone: Option<String>,
    pub user_status: Option<String>,
    pub user_status_at: Option<DateTime<Utc>>,
    /// When Astra issued the stored pair (NULL on rows stored before it was recorded).
    pub issued_at: Option<DateTime<Utc>>,
    /// The stored refresh token's fingerprint (NULL on rows stored before it was recorded).
    pub refresh_fingerprint: Option<String>,
    /// Why the stored tokens cannot be opened, once a run found so.
    pub unreadable: Option<String>,
}

impl SealedGrant {
    /// When Astra issued the stored pair; for rows stored before that was recorded, ten days before expiry.
    pub fn issued(&self) -> DateTime<Utc> {
        self.issued_at.unwrap_or(self.refresh_expires_at - REFRESH_TOKEN_LIFETIME)
    }
}

const GRANT_COLUMNS: &str = "user_id, status, token_version, key_id, access_ct, refresh_ct, access_expires_at, \
                             refresh_expires_at, phone, user_status, user_status_at, issued_at, \
                             refresh_fingerprint, unreadable";

/// How long the fingerprints of replaced refresh tokens are kept: well past a refresh token's ten-day life.
const FINGERPRINTS_KEPT: chrono::TimeDelta = chrono::TimeDelta::days(30);

pub async fn load(store: &Store, user_id: &str) -> sqlx::Result<Option<SealedGrant>> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM grant_token WHERE user_id = $1");
    with_pool!(store, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user_id).fetch_optional(p).await)
}

/// A new row, or a replacement of the user's grant (a new authorization), at `version`.
pub struct GrantWrite<'a> {
    pub user_id: &'a str,
    pub version: i64,
    pub key_id: &'a str,
    pub access_ct: &'a [u8],
    pub refresh_ct: &'a [u8],
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: DateTime<Utc>,
    pub phone: Option<&'a str>,
    /// When Astra issued the pair.
    pub issued_at: DateTime<Utc>,
    /// The refresh token's fingerprint (see [`super::grants::fingerprint`]).
    pub fingerprint: &'a str,
    pub now: DateTime<Utc>,
}

/// Records the fingerprint of a refresh token the grant now holds, in the transaction that stores the pair.
/// Evaluates to `sqlx::Result<()>`.
macro_rules! fingerprint_insert {
    ($tx:expr, $w:expr) => {
        sqlx::query(
            "INSERT INTO grant_fingerprint (user_id, fingerprint, stored_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind($w.user_id)
        .bind($w.fingerprint)
        .bind($w.now)
        .execute(&mut *$tx)
        .await
        .map(|_| ())
    };
}

/// Forgets the fingerprints of every grant stored before the keeping (once per rotation run; one kept longer
/// only makes the refusal of a stale import stricter).
pub async fn forget_old_fingerprints(store: &Store, now: DateTime<Utc>) -> sqlx::Result<u64> {
    with_pool!(store, |p| sqlx::query("DELETE FROM grant_fingerprint WHERE stored_at < $1")
        .bind(now - FINGERPRINTS_KEPT)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
}

/// Whether the grant of `user_id` ever held the refresh token with this fingerprint (within the keeping).
pub async fn fingerprint_known(store: &Store, user_id: &str, fingerprint: &str) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM grant_fingerprint WHERE user_id = $1 AND fingerprint = $2"
    )
    .bind(user_id)
    .bind(fingerprint)
    .fetch_one(p)
    .await
    .map(|n| n > 0))
}

/// Inserts the user's grant (`expected` is `None`) or replaces the one at version `expected`, as `active`,
/// readable, and leased by nobody (a refresh in flight on the old pair can no longer store its answer); closes
/// the user's open intents and episode in the same transaction. `Ok(None)`: another writer changed the grant
/// first; nothing written. `Ok(Some(d))`: stored, `d` how long the closed episode had been open, if any.
pub async fn put_imported(
    store: &Store,
    w: &GrantWrite<'_>,
    expected: Option<i64>,
) -> sqlx::Result<Option<Option<chrono::TimeDelta>>> {
    let _turn = store.write_turn().await?;
    with_pool!(store, |p| {
        let mut tx = p.begin().await?;
        let n = sqlx::query(
            "INSERT INTO grant_token (user_id, status, token_version, key_id, access_ct, refresh_ct,
                 access_expires_at, refresh_expires_at, phone, imported_at, updated_at, issued_at,
                 refresh_fingerprint)
             VALUES ($1, 'active', $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $12)
             ON CONFLICT (user_id) DO UPDATE SET status = 'active', token_version = excluded.token_version,
                 key_id = excluded.key_id, access_ct = excluded.access_ct, refresh_ct = excluded.refresh_ct,
                 access_expires_at = excluded.access_expires_at, refresh_expires_at = excluded.refresh_expires_at,
                 phone = COALESCE(excluded.phone, grant_token.phone), imported_at = excluded.imported_at,
                 updated_at = excluded.updated_at, issued_at = excluded.issued_at,
                 refresh_fingerprint = excluded.refresh_fingerprint, unreadable = NULL,
                 lease_owner = NULL, lease_until = NULL
             WHERE grant_token.token_version = $11",
        )
        .bind(w.user_id)
        .bind(w.version)
        .bind(w.key_id)
        .bind(w.access_ct)
        .bind(w.refresh_ct)
        .bind(w.access_expires_at)
        .bind(w.refresh_expires_at)
        .bind(w.phone)
        .bind(w.now)
        .bind(w.issued_at)
        .bind(expected.unwrap_or(-1))
        .bind(w.fingerprint)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        fingerprint_insert!(tx, w)?;
        sqlx::query(
            "UPDATE refresh_intent SET closed_at = $1, result = 'superseded' WHERE user_id = $2 AND closed_at IS NULL",
        )
        .bind(w.now)
        .bind(w.user_id)
        .execute(&mut *tx)
        .await?;
        let opened = episode_close_for_new_grant!(&mut *tx, w.user_id, w.now)?;
        tx.commit().await?;
        Ok(Some(opened.map(|o| w.now - o)))
    })
}

/// Stores a refreshed pair if the grant is still active at `old_version` and `owner` still holds its lease
/// (compare-and-swap on both), records its fingerprint, closes the intent and releases the lease, all or none.
/// `false`: the grant was replaced, or its lease taken over, meanwhile; nothing written. On PostgreSQL one
/// statement (its parts commit together), one round trip instead of five: a rotation writes this once a grant.
pub async fn put_rotated(
    store: &Store,
    w: &GrantWrite<'_>,
    old_version: i64,
    owner: &str,
    intent_id: &str,
) -> sqlx::Result<bool> {
    faults::injected(store, faults::PUT_ROTATED)?;
    macro_rules! store_pair_sql {
        () => {
            "UPDATE grant_token SET token_version = $1, key_id = $2, access_ct = $3, refresh_ct = $4,
             access_expires_at = $5, refresh_expires_at = $6, last_rotated_at = $7, updated_at = $7,
             issued_at = $7, refresh_fingerprint = $11, lease_until = NULL
         WHERE user_id = $8 AND token_version = $9 AND status = 'active' AND lease_owner = $10"
        };
    }
    const STORE_PAIR: &str = store_pair_sql!();
    // PostgreSQL: the pair, its fingerprint and the intent's close in one statement, all or nothing.
    const STORE_PAIR_TOGETHER: &str = concat!(
        "WITH stored AS (",
        store_pair_sql!(),
        " RETURNING user_id),
              fingerprinted AS (INSERT INTO grant_fingerprint (user_id, fingerprint, stored_at)
                                SELECT user_id, $11, $7 FROM stored ON CONFLICT DO NOTHING),
              closed AS (UPDATE refresh_intent SET closed_at = $7, result = 'rotated'
                         WHERE id = $12 AND EXISTS (SELECT 1 FROM stored))
         SELECT user_id FROM stored"
    );
    macro_rules! store_pair {
        ($sql:expr) => {
            sqlx::query($sql)
                .bind(w.version)
                .bind(w.key_id)
                .bind(w.access_ct)
                .bind(w.refresh_ct)
                .bind(w.access_expires_at)
                .bind(w.refresh_expires_at)
                .bind(w.now)
                .bind(w.user_id)
                .bind(old_version)
                .bind(owner)
                .bind(w.fingerprint)
        };
    }
    match store {
        Store::Postgres(p) => {
            let stored = store_pair!(STORE_PAIR_TOGETHER).bind(intent_id).fetch_optional(p).await?;
            Ok(stored.is_some())
        }
        Store::Sqlite(p) => {
            let _turn = store.write_turn().await?;
            let mut tx = p.begin().await?;
            let n = store_pair!(STORE_PAIR).execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                fingerprint_insert!(tx, w)?;
                sqlx::query("UPDATE refresh_intent SET closed_at = $1, result = 'rotated' WHERE id = $2")
                    .bind(w.now)
                    .bind(intent_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        }
    }
}

/// Re-seals a grant under another key without changing its version (key rotation).
pub async fn reseal(
    store: &Store,
    user_id: &str,
    version: i64,
    key_id: &str,
    access_ct: &[u8],
    refresh_ct: &[u8],
) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE grant_token SET key_id = $1, access_ct = $2, refresh_ct = $3 WHERE user_id = $4 AND token_version = $5"
    )
    .bind(key_id)
    .bind(access_ct)
    .bind(refresh_ct)
    .bind(user_id)
    .bind(version)
    .execute(p)
    .await
    .map(|r| r.rows_affected() == 1))
}

/// Users whose grant is sealed under a key other than `key_id`, a batch at a time.
pub async fn sealed_under_other_key(store: &Store, key_id: &str, limit: i64) -> sqlx::Result<Vec<String>> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT user_id FROM grant_token WHERE key_id <> $1 ORDER BY user_id LIMIT $2"
    )
    .bind(key_id)
    .bind(limit)
    .fetch_all(p)
    .await)
}

/// Takes the grant's lease if nobody holds it. `false`: someone else refreshes it now.
pub async fn try_lease(
    store: &Store,
    user_id: &str,
    owner: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE grant_token SET lease_owner = $1, lease_until = $2
         WHERE user_id = $3 AND (lease_until IS NULL OR lease_until < $4)"
    )
    .bind(owner)
    .bind(until)
    .bind(user_id)
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected() == 1))
}

/// Extends the lease `owner` holds to `until` and reads the grant, in one statement (just before a refresh
/// call). `None`: the grant is gone, or its lease was taken over meanwhile (it lapsed and another process took
/// it); the caller must not refresh.
pub async fn renew_and_load(
    store: &Store,
    user_id: &str,
    owner: &str,
    until: DateTime<Utc>,
) -> sqlx::Result<Option<SealedGrant>> {
    let sql = format!(
        "UPDATE grant_token SET lease_until = $1 WHERE user_id = $2 AND lease_owner = $3 AND lease_until IS NOT NULL
         RETURNING {GRANT_COLUMNS}"
    );
    with_pool!(store, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(until)
        .bind(user_id)
        .bind(owner)
        .fetch_optional(p)
        .await)
}

/// Releases the lease if `owner` still holds it.
pub async fn release(store: &Store, user_id: &str, owner: &str) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE grant_token SET lease_until = NULL WHERE user_id = $1 AND lease_owner = $2"
    )
    .bind(user_id)
    .bind(owner)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Releases every lease `owner` holds (a run that stops early gives back what it claimed).
pub async fn release_all(store: &Store, owner: &str) -> sqlx::Result<u64> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE grant_token SET lease_until = NULL WHERE lease_owner = $1 AND lease_until IS NOT NULL"
    )
    .bind(owner)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
}

/// Claims up to `limit` active grants whose refresh token expires before `due_before`, not yet tried under
/// `mark` (this slot attempt) and not leased: leases them to `owner` and marks them. Several processes on
/// PostgreSQL split the work without overlap (`for update skip locked`).
pub async fn claim_due(
    store: &Store,
    owner: &str,
    mark: &str,
    due_before: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<String>> {
    let lock = if store.is_postgres() { "FOR UPDATE SKIP LOCKED" } else { "" };
    let sql = format!(
        "UPDATE grant_token SET lease_owner = $1, lease_until = $2, last_attempt_mark = $3
         WHERE user_id IN (
             SELECT user_id FROM grant_token
             WHERE status = 'active' AND refresh_expires_at < $4
               AND (lease_until IS NULL OR lease_until < $5)
               AND (last_attempt_mark IS NULL OR last_attempt_mark <> $3)
             ORDER BY refresh_expires_at, user_id LIMIT $6 {lock})
         RETURNING user_id"
    );
    with_pool!(store, |p| sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(owner)
        .bind(lease_until)
        .bind(mark)
        .bind(due_before)
        .bind(now)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// Marks the grant dead (`needs_reauth`) and releases its lease, on a connection or transaction (an
/// episode's) — only if it is still active at `$version`, the version found dead, and `$owner` holds its
/// lease. Evaluates to `sqlx::Result<u64>`: 0 when another writer changed the grant first.
macro_rules! grant_mark_dead {
    ($conn:expr, $user_id:expr, $version:expr, $owner:expr, $now:expr) => {
        sqlx::query(
            "UPDATE grant_token SET status = 'needs_reauth', lease_until = NULL, updated_at = $1
             WHERE user_id = $2 AND token_version = $3 AND status = 'active' AND lease_owner = $4",
        )
        .bind($now)
        .bind($user_id)
        .bind($version)
        .bind($owner)
        .execute($conn)
        .await
        .map(|r| r.rows_affected())
    };
}
pub(crate) use grant_mark_dead;

/// Flags the grant whose stored tokens cannot be opened (`why` names the key or the failure, never a token);
/// runs skip it until a re-import of the user repairs it.
pub async fn mark_unreadable(store: &Store, user_id: &str, why: &str) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query("UPDATE grant_token SET unreadable = $1 WHERE user_id = $2")
        .bind(why)
        .bind(user_id)
        .execute(p)
        .await
        .map(|_| ()))
}

/// The ids of the keys the stored grants are sealed under.
pub async fn stored_key_ids(store: &Store) -> sqlx::Result<Vec<String>> {
    with_pool!(store, |p| sqlx::query_scalar("SELECT DISTINCT key_id FROM grant_token ORDER BY key_id")
        .fetch_all(p)
        .await)
}

/// How many grants are flagged unreadable.
pub async fn count_unreadable(store: &Store) -> sqlx::Result<i64> {
    with_pool!(store, |p| sqlx::query_scalar("SELECT COUNT(*) FROM grant_token WHERE unreadable IS NOT NULL")
        .fetch_one(p)
        .await)
}

/// Records the user's status as read from Astra by a read begun at `read_at`, unless a read begun later is
/// recorded already (two reads answered out of order, a webhook's and a rotation's: the later one stands).
pub async fn set_user_status(
    store: &Store,
    user_id: &str,
    status: UserStatus,
    read_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    faults::injected(store, faults::SET_USER_STATUS)?;
    with_pool!(store, |p| sqlx::query(
        "UPDATE grant_token SET user_status = $1, user_status_at = $2
         WHERE user_id = $3 AND (user_status_at IS NULL OR user_status_at <= $2)"
    )
    .bind(status.as_str())
    .bind(read_at)
    .bind(user_id)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Users whose grant is active.
pub async fn active_users(store: &Store) -> sqlx::Result<Vec<String>> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT user_id FROM grant_token WHERE status = 'active' ORDER BY user_id"
    )
    .fetch_all(p)
    .await)
}

/// Active grants expiring before `before` (the sweep's danger window), oldest first.
pub async fn active_expiring_before(store: &Store, before: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<String>> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT user_id FROM grant_token WHERE status = 'active' AND refresh_expires_at < $1
         ORDER BY refresh_expires_at LIMIT $2"
    )
    .bind(before)
    .bind(limit)
    .fetch_all(p)
    .await)
}

/// One line of `grants list`: never a token.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct GrantSummary {
    pub user_id: String,
    pub status: String,
    pub token_version: i64,
    pub refresh_expires_at: DateTime<Utc>,
    pub last_rotated_at: Option<DateTime<Utc>>,
    pub user_status: Option<String>,
    pub episode_reason: Option<String>,
    pub episode_opened_at: Option<DateTime<Utc>>,
    /// Why the stored tokens cannot be opened, when a run found so (re-import the user to repair).
    pub unreadable: Option<String>,
}

pub async fn list(store: &Store, status: Option<&str>, limit: i64) -> sqlx::Result<Vec<GrantSummary>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT g.user_id, g.status, g.token_version, g.refresh_expires_at, g.last_rotated_at, g.user_status,
                e.reason AS episode_reason, e.opened_at AS episode_opened_at, g.unreadable
         FROM grant_token g LEFT JOIN reauth_episode e ON e.user_id = g.user_id AND e.closed_at IS NULL
         WHERE ($1 IS NULL OR g.status = $1) ORDER BY g.user_id LIMIT $2"
    )
    .bind(status)
    .bind(limit)
    .fetch_all(p)
    .await)
}

/// How many grants are in each status.
pub async fn count_by_status(store: &Store) -> sqlx::Result<Vec<(String, i64)>> {
    with_pool!(store, |p| sqlx::query_as("SELECT status, COUNT(*) FROM grant_token GROUP BY status ORDER BY status")
        .fetch_all(p)
        .await)
}
