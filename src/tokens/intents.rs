//! The owner of `refresh_intent`: written before every refresh call, closed with its result; an intent still
//! open when nobody holds the grant's lease means a process died between Astra's answer and the commit.

use chrono::{DateTime, Utc};

use crate::store::{Store, with_pool};

/// Opens the refresh intent for `version`, or finds the one already open (a refresh whose result is unknown:
/// this refresh is then a probe): (id, whether it was already open). `None`: an intent was open a moment ago
/// and is closed now (another refresh of the grant finished meanwhile).
pub(crate) async fn open_or_find(
    store: &Store,
    user_id: &str,
    version: i64,
    owner: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<(String, bool)>> {
    let id = uuid::Uuid::new_v4().to_string();
    let opened: Option<String> = with_pool!(store, |p| sqlx::query_scalar(
        "INSERT INTO refresh_intent (id, user_id, token_version, owner, opened_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING RETURNING id"
    )
    .bind(&id)
    .bind(user_id)
    .bind(version)
    .bind(owner)
    .bind(now)
    .fetch_optional(p)
    .await)?;
    if let Some(id) = opened {
        return Ok(Some((id, false)));
    }
    let open: Option<String> = with_pool!(store, |p| sqlx::query_scalar(
        "SELECT id FROM refresh_intent WHERE user_id = $1 AND closed_at IS NULL"
    )
    .bind(user_id)
    .fetch_optional(p)
    .await)?;
    Ok(open.map(|id| (id, true)))
}

pub(crate) async fn close_intent(store: &Store, intent_id: &str, result: &str, now: DateTime<Utc>) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE refresh_intent SET closed_at = $1, result = $2 WHERE id = $3 AND closed_at IS NULL"
    )
    .bind(now)
    .bind(result)
    .bind(intent_id)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Users with an open intent whose grant nobody holds: a refresh died between Astra's answer and the commit.
pub(crate) async fn orphaned_intents(store: &Store, now: DateTime<Utc>) -> sqlx::Result<Vec<String>> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT i.user_id FROM refresh_intent i JOIN grant_token g ON g.user_id = i.user_id
         WHERE i.closed_at IS NULL AND g.status = 'active' AND (g.lease_until IS NULL OR g.lease_until < $1)
         ORDER BY i.opened_at"
    )
    .bind(now)
    .fetch_all(p)
    .await)
}

/// Intents closed before the cutoff (the `retention` job's `refresh_intents`); an open one is kept.
pub(crate) const FORGET: crate::store::forget::Forget = crate::store::forget::Forget {
    table: "refresh_intent",
    key: "id",
    done_before: "closed_at IS NOT NULL AND closed_at < $1",
};
