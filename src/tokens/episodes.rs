//! Re-authorization episodes (the owner of `reauth_episode`): a dead grant opens at most one, with its prompt written to the outbox in the
//! same transaction; suspended or rejected users get a `user_suspended` follow-up instead, once; unanswered
//! episodes are prompted again on a schedule; importing a new grant closes the episode (see `tokens`).

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::Url;
use serde_json::json;

use super::store::grant_mark_dead;
use crate::{
    astra::UserStatus,
    outbox::{Message, outbox_insert},
    store::{Store, with_pool},
};

/// Why a grant needs the user to authorize again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Astra refused the refresh token (`invalid_grant`).
    RefreshRejected,
    /// The refresh token's ten days ran out.
    Expired,
    /// A refresh was applied by Astra but its answer was lost.
    LostRotation,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RefreshRejected => "refresh_rejected",
            Reason::Expired => "expired",
            Reason::LostRotation => "lost_rotation",
        }
    }
}

/// What opening did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A new episode and its prompt.
    Episode,
    /// An episode was already open for this grant.
    AlreadyOpen,
    /// The user is suspended or rejected: a follow-up instead of a prompt (or nothing, if already sent).
    UserSuspended,
    /// Nothing: the grant was replaced or its lease taken over since it was found dead.
    Superseded,
}

/// The fields of the SDK re-authorization URL.
#[derive(Debug, Clone)]
pub struct PromptLink {
    pub authorize_url: Url,
    pub client_id: String,
    pub redirect_uri: String,
}

impl PromptLink {
    /// `…/login/oauth/authorize?client_id=…&redirect_uri=…&response_type=code&user_id=…&phone=…&phone_read_only=true`
    pub fn url(&self, user_id: &str, phone: Option<&str>) -> String {
        let mut u = self.authorize_url.clone();
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("response_type", "code")
                .append_pair("user_id", user_id);
            if let Some(p) = phone {
                q.append_pair("phone", p).append_pair("phone_read_only", "true");
            }
        }
        u.to_string()
    }
}

/// The dead grant, as the episode needs it: the version found dead and the lease holder who found it.
pub(crate) struct DeadGrant<'a> {
    pub user_id: &'a str,
    pub version: i64,
    pub owner: &'a str,
    pub phone: Option<&'a str>,
    pub user_status: Option<UserStatus>,
}

/// Marks the grant `needs_reauth` and opens its episode with one prompt, or the `user_suspended` follow-up,
/// in one transaction — only while the grant is still at the version found dead and its finder holds the
/// lease ([`Opened::Superseded`] otherwise: nothing written).
pub(crate) async fn open(
    store: &Store,
    g: &DeadGrant<'_>,
    reason: Reason,
    link: &PromptLink,
    now: DateTime<Utc>,
) -> sqlx::Result<Opened> {
    let suspended = g.user_status.is_some_and(UserStatus::is_barred);
    let episode_id = uuid::Uuid::new_v4().to_string();
    let msg = if suspended {
        Message::once(
            "user_suspended",
            g.user_id,
            Some(g.user_id),
            json!({"user_status": g.user_status.map(UserStatus::as_str), "grant_reason": reason.as_str()}),
            now,
        )
    } else {
        Message::new(
            "reauthorization_prompt",
            format!("reauth:{episode_id}:1"),
            Some(g.user_id),
            json!({
                "episode_id": episode_id,
                "reason": reason.as_str(),
                "prompt_number": 1,
                "reauthorization_url": link.url(g.user_id, g.phone),
            }),
            now,
        )
    };
    let _turn = store.write_turn().await?;
    with_pool!(store, |p| {
        let mut tx = p.begin().await?;
        if grant_mark_dead!(&mut *tx, g.user_id, g.version, g.owner, now)? == 0 {
            return Ok(Opened::Superseded);
        }
        let outcome = if suspended {
            outbox_insert!(&mut *tx, &msg)?;
            Opened::UserSuspended
        } else {
            let n = sqlx::query(
                "INSERT INTO reauth_episode (id, user_id, reason, opened_at, prompts_sent, last_prompted_at)
                 VALUES ($1, $2, $3, $4, 1, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&episode_id)
            .bind(g.user_id)
            .bind(reason.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                outbox_insert!(&mut *tx, &msg)?;
                Opened::Episode
            } else {
                Opened::AlreadyOpen
            }
        };
        tx.commit().await?;
        Ok(outcome)
    })
}

#[derive(sqlx::FromRow)]
struct Unanswered {
    id: String,
    user_id: String,
    reason: String,
    prompts_sent: i32,
    phone: Option<String>,
    user_status: Option<String>,
}

/// Closes the user's open episode because a new grant arrived, on a connection or transaction (the grant
/// store's). Evaluates to `sqlx::Result<Option<DateTime<Utc>>>`: when the closed episode was opened.
macro_rules! episode_close_for_new_grant {
    ($conn:expr, $user_id:expr, $now:expr) => {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "UPDATE reauth_episode SET closed_at = $1, close_reason = 'new_grant_imported'
             WHERE user_id = $2 AND closed_at IS NULL RETURNING opened_at",
        )
        .bind($now)
        .bind($user_id)
        .fetch_optional($conn)
        .await
    };
}
pub(crate) use episode_close_for_new_grant;

/// Prompts again every open episode last prompted more than `after` ago (still one episode). Returns how
/// many prompts were written.
pub(crate) async fn reprompt_unanswered(
    store: &Store,
    after: TimeDelta,
    link: &PromptLink,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let due: Vec<Unanswered> = with_pool!(store, |p| sqlx::query_as(
        "SELECT e.id, e.user_id, e.reason, e.prompts_sent, g.phone, g.user_status
         FROM reauth_episode e LEFT JOIN grant_token g ON g.user_id = e.user_id
         WHERE e.closed_at IS NULL AND e.last_prompted_at <= $1 ORDER BY e.opened_at LIMIT 1000"
    )
    .bind(now - after)
    .fetch_all(p)
    .await?);
    let mut sent = 0;
    for e in due {
        if e.user_status.as_deref().and_then(UserStatus::parse).is_some_and(UserStatus::is_barred) {
            continue;
        }
        let n = e.prompts_sent + 1;
        let msg = Message::new(
            "reauthorization_prompt",
            format!("reauth:{}:{n}", e.id),
            Some(&e.user_id),
            json!({
                "episode_id": e.id,
                "reason": e.reason,
                "prompt_number": n,
                "reauthorization_url": link.url(&e.user_id, e.phone.as_deref()),
            }),
            now,
        );
        let _turn = store.write_turn().await?;
        let wrote = with_pool!(store, |p| {
            let mut tx = p.begin().await?;
            let n_upd = sqlx::query(
                "UPDATE reauth_episode SET prompts_sent = $1, last_prompted_at = $2
                 WHERE id = $3 AND prompts_sent = $4 AND closed_at IS NULL",
            )
            .bind(n)
            .bind(now)
            .bind(&e.id)
            .bind(e.prompts_sent)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n_upd == 1 {
                outbox_insert!(&mut *tx, &msg)?;
            }
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(n_upd == 1)
        })?;
        sent += u64::from(wrote);
    }
    Ok(sent)
}

/// Open episodes by reason.
pub(crate) async fn open_by_reason(store: &Store) -> sqlx::Result<Vec<(String, i64)>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT reason, COUNT(*) FROM reauth_episode WHERE closed_at IS NULL GROUP BY reason ORDER BY reason"
    )
    .fetch_all(p)
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_url_is_prefilled_with_the_user_and_a_read_only_phone() {
        let base = Url::parse("https://app-sandbox.astra.finance/login/oauth/authorize").unwrap();
        let link =
            PromptLink { authorize_url: base, client_id: "cid".into(), redirect_uri: "https://x.example/cb".into() };
        let u = Url::parse(&link.url("u 1", Some("+15555550100"))).unwrap();
        let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["redirect_uri"], "https://x.example/cb");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["user_id"], "u 1");
        assert_eq!(q["phone"], "+15555550100");
        assert_eq!(q["phone_read_only"], "true");
        assert!(!link.url("u", None).contains("phone"));
    }
}
