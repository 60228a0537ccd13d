//! A valid access token for a user, refreshed first under the grant's lease when it is about to expire or
//! Astra refused it: the call the fintech's backend makes (`token <user>`), and the one every job uses.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tracing::instrument;

use super::{
    GrantStatus, Tokens,
    grants::load,
    refresh::{Refreshed, refresh_leased},
    store,
};
use crate::{
    astra::{AstraError, Call},
    failure::{Classify, Failure, Status},
    store::Store,
};

/// No access token can be had for the user until the fintech acts: not a failure of the worker (exit 1, "no").
#[derive(Debug, thiserror::Error)]
pub enum NoToken {
    #[error("no grant for user {user_id}; import one with `astra-worker grants import`")]
    NoGrant { user_id: String },
    #[error("the grant of user {user_id} needs re-authorization ({why}); the user must authorize again")]
    NeedsReauthorization { user_id: String, why: String },
}

impl Classify for NoToken {
    fn status(&self) -> Status {
        Status::No
    }
}

/// How long `token <user>` waits for another process that is refreshing the same grant.
const LEASE_WAIT: Duration = Duration::from_secs(30);

/// A valid access token for `user_id`, refreshed first (under the grant's lease) when it expires within
/// `astra.access_margin`. This is the call the fintech's backend makes before calling Astra.
#[instrument(name = "access_token", skip_all, fields(user_id = %user_id))]
pub async fn access_token(db: &Store, tok: &Tokens, user_id: &str) -> anyhow::Result<SecretString> {
    access_token_until(db, tok, user_id).await.map(|a| a.token)
}

/// An access token handed out, and until when it is good (`None`: the grant was imported without an expiry).
pub struct Access {
    pub token: SecretString,
    pub expires_at: Option<DateTime<Utc>>,
    version: i64,
}

/// [`access_token`], with the access token's expiry (what `GET /v1/users/{id}/access-token` answers).
pub async fn access_token_until(db: &Store, tok: &Tokens, user_id: &str) -> anyhow::Result<Access> {
    fresh_access(db, tok, Call::for_user(user_id), user_id, None).await
}

/// Runs `f` with the user's access token; when Astra rejects that token (401), refreshes once and runs again.
pub async fn with_access<T, F, Fut>(
    db: &Store,
    tok: &Tokens,
    call: Call<'_>,
    user_id: &str,
    f: F,
) -> anyhow::Result<Result<T, AstraError>>
where
    F: Fn(SecretString) -> Fut,
    Fut: std::future::Future<Output = Result<T, AstraError>>,
{
    let first = fresh_access(db, tok, call, user_id, None).await?;
    match f(first.token).await {
        Err(AstraError::AccessTokenRejected { .. }) => {
            let again = fresh_access(db, tok, call, user_id, Some(first.version)).await?;
            Ok(f(again.token).await)
        }
        other => Ok(other),
    }
}

/// The access token and its grant version; refreshed first when it expires within the margin, or when its
/// version is `rejected_version` (Astra refused it).
async fn fresh_access(
    db: &Store,
    tok: &Tokens,
    call: Call<'_>,
    user_id: &str,
    rejected_version: Option<i64>,
) -> anyhow::Result<Access> {
    let owner = format!("token:{}:{}", std::process::id(), uuid::Uuid::new_v4());
    let give_up = tokio::time::Instant::now() + LEASE_WAIT;
    loop {
        let g =
            load(db, &tok.keyring, user_id).await?.ok_or_else(|| NoToken::NoGrant { user_id: user_id.to_string() })?;
        if g.status != GrantStatus::Active {
            return Err(
                NoToken::NeedsReauthorization { user_id: user_id.to_string(), why: g.status.to_string() }.into()
            );
        }
        let now = Utc::now();
        if g.access_expires_at.is_some_and(|t| t > now + tok.access_margin) && rejected_version != Some(g.version) {
            return Ok(Access { token: g.access, expires_at: g.access_expires_at, version: g.version });
        }
        if store::try_lease(db, user_id, &owner, now + tok.lease, now).await? {
            let r = refresh_leased(db, tok, call, user_id, &owner, Some(g.version)).await;
            match r? {
                Refreshed::Rotated { access, access_expires_at, .. } => {
                    return Ok(Access { token: access, expires_at: Some(access_expires_at), version: g.version + 1 });
                }
                Refreshed::Adopted | Refreshed::Inactive | Refreshed::NotLeased => continue,
                Refreshed::Dead { reason, .. } => {
                    let why = format!("dead: {}", reason.as_str());
                    return Err(NoToken::NeedsReauthorization { user_id: user_id.to_string(), why }.into());
                }
                Refreshed::Failed { detail } => {
                    return Err(
                        Failure::Unavailable(format!("refreshing the grant of user {user_id}: {detail}")).into()
                    );
                }
            }
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(Failure::Unavailable(format!(
                "the grant of user {user_id} is being refreshed by another process"
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
