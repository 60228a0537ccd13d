//! Grants in and out: import from the fintech, unsealed reads, the fenced refresh the jobs and `token <user>`
//! share, and re-sealing under a new key.

mod refresh;
pub mod store;

use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use refresh::{Refreshed, refresh_leased};

use crate::{
    astra::{AstraError, Call},
    config::Settings,
    crypto::{CryptoError, Keyring, TokenKind},
    exit::Failure,
    services::Services,
    store::Store,
};

/// A grant with its tokens unsealed. `Debug` prints no token.
#[derive(Debug, Clone)]
pub struct Grant {
    pub user_id: String,
    pub status: String,
    pub version: i64,
    pub access: SecretString,
    pub refresh: SecretString,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: DateTime<Utc>,
    pub phone: Option<String>,
    pub user_status: Option<String>,
}

fn unseal(k: &Keyring, s: store::SealedGrant) -> Result<Grant, CryptoError> {
    let access = k.open(&s.key_id, &s.user_id, s.token_version, TokenKind::Access, &s.access_ct)?;
    let refresh = k.open(&s.key_id, &s.user_id, s.token_version, TokenKind::Refresh, &s.refresh_ct)?;
    Ok(Grant {
        user_id: s.user_id,
        status: s.status,
        version: s.token_version,
        access,
        refresh,
        access_expires_at: s.access_expires_at,
        refresh_expires_at: s.refresh_expires_at,
        phone: s.phone,
        user_status: s.user_status,
    })
}

pub async fn load(db: &Store, keyring: &Keyring, user_id: &str) -> anyhow::Result<Option<Grant>> {
    match store::load(db, user_id).await? {
        None => Ok(None),
        Some(s) => Ok(Some(unseal(keyring, s)?)),
    }
}

/// Seals a pair for `user_id` at `version` and builds the row write.
struct Sealed {
    key_id: String,
    access_ct: Vec<u8>,
    refresh_ct: Vec<u8>,
}

fn seal(k: &Keyring, user_id: &str, version: i64, access: &SecretString, refresh: &SecretString) -> Sealed {
    Sealed {
        key_id: k.current_id().to_string(),
        access_ct: k.seal(user_id, version, TokenKind::Access, access),
        refresh_ct: k.seal(user_id, version, TokenKind::Refresh, refresh),
    }
}

/// One line of `grants import`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportLine {
    pub user_id: String,
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    #[serde(default)]
    pub refresh_token_issued_at: Option<DateTime<FixedOffset>>,
    #[serde(default)]
    pub refresh_token_expires_at: Option<DateTime<FixedOffset>>,
    #[serde(default)]
    pub access_token_expires_at: Option<DateTime<FixedOffset>>,
    #[serde(default)]
    pub phone: Option<String>,
}

/// What importing one grant did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    New,
    /// A newer grant replaced the stored one; `episode_open_for` is how long the closed episode had been open.
    Replaced {
        episode_open_for: Option<TimeDelta>,
    },
    /// The same grant again: nothing changed.
    Unchanged,
    /// Older than the stored grant: not imported.
    Stale,
}

impl ImportLine {
    fn validate(&self) -> Result<DateTime<Utc>, String> {
        if self.user_id.trim().is_empty() {
            return Err("user_id is empty".into());
        }
        if self.refresh_token.expose_secret().trim().is_empty() {
            return Err("refresh_token is empty".into());
        }
        if self.access_token.expose_secret().trim().is_empty() {
            return Err("access_token is empty".into());
        }
        match (self.refresh_token_issued_at, self.refresh_token_expires_at) {
            (Some(_), Some(_)) => Err("give refresh_token_issued_at or refresh_token_expires_at, not both".into()),
            (None, None) => Err("refresh_token_issued_at or refresh_token_expires_at is required".into()),
            (Some(i), None) => Ok(i.with_timezone(&Utc) + crate::astra::REFRESH_TOKEN_LIFETIME),
            (None, Some(e)) => Ok(e.with_timezone(&Utc)),
        }
    }
}

/// Imports one grant: idempotent; a newer grant replaces the stored one and closes the user's episode.
pub async fn import(db: &Store, keyring: &Keyring, line: &ImportLine, now: DateTime<Utc>) -> anyhow::Result<Imported> {
    let refresh_expires_at = line.validate().map_err(anyhow::Error::msg)?;
    let existing = store::load(db, &line.user_id).await?;
    let (version, outcome) = match existing {
        None => (1, Imported::New),
        Some(s) => {
            let old = unseal(keyring, s)?;
            if old.refresh.expose_secret() == line.refresh_token.expose_secret() {
                return Ok(Imported::Unchanged);
            }
            if refresh_expires_at < old.refresh_expires_at && old.status == "active" {
                return Ok(Imported::Stale);
            }
            (old.version + 1, Imported::Replaced { episode_open_for: None })
        }
    };
    let sealed = seal(keyring, &line.user_id, version, &line.access_token, &line.refresh_token);
    let w = store::GrantWrite {
        user_id: &line.user_id,
        version,
        key_id: &sealed.key_id,
        access_ct: &sealed.access_ct,
        refresh_ct: &sealed.refresh_ct,
        access_expires_at: line.access_token_expires_at.map(|t| t.with_timezone(&Utc)),
        refresh_expires_at,
        phone: line.phone.as_deref(),
        now,
    };
    let closed = store::put_imported(db, &w).await?;
    Ok(match outcome {
        Imported::Replaced { .. } => Imported::Replaced { episode_open_for: closed },
        other => other,
    })
}

/// How long `token <user>` waits for another process that is refreshing the same grant.
const LEASE_WAIT: Duration = Duration::from_secs(30);

/// A valid access token for `user_id`, refreshed first (under the grant's lease) when it expires within
/// `astra.access_margin`. This is the call the fintech's backend makes before calling Astra.
pub async fn access_token(
    db: &Store,
    svc: &Services,
    settings: &Settings,
    user_id: &str,
) -> anyhow::Result<SecretString> {
    let call = Call { run: None, user_id: Some(user_id) };
    fresh_access(db, svc, settings, call, user_id, None).await.map(|(t, _)| t)
}

/// Runs `f` with the user's access token; when Astra rejects that token (401), refreshes once and runs again.
pub async fn with_access<T, F, Fut>(
    db: &Store,
    svc: &Services,
    settings: &Settings,
    call: Call<'_>,
    user_id: &str,
    f: F,
) -> anyhow::Result<Result<T, AstraError>>
where
    F: Fn(SecretString) -> Fut,
    Fut: std::future::Future<Output = Result<T, AstraError>>,
{
    let (token, version) = fresh_access(db, svc, settings, call, user_id, None).await?;
    match f(token).await {
        Err(AstraError::AccessTokenRejected { .. }) => {
            let (token, _) = fresh_access(db, svc, settings, call, user_id, Some(version)).await?;
            Ok(f(token).await)
        }
        other => Ok(other),
    }
}

/// The access token and its grant version; refreshed first when it expires within the margin, or when its
/// version is `rejected_version` (Astra refused it).
async fn fresh_access(
    db: &Store,
    svc: &Services,
    settings: &Settings,
    call: Call<'_>,
    user_id: &str,
    rejected_version: Option<i64>,
) -> anyhow::Result<(SecretString, i64)> {
    let owner = format!("token:{}:{}", std::process::id(), uuid::Uuid::new_v4());
    let margin = TimeDelta::from_std(settings.astra.access_margin).unwrap_or(TimeDelta::minutes(5));
    let lease = TimeDelta::from_std(settings.runner.claim_lease).unwrap_or(TimeDelta::minutes(2));
    let give_up = tokio::time::Instant::now() + LEASE_WAIT;
    loop {
        let g = load(db, &svc.keyring, user_id).await?.ok_or_else(|| {
            anyhow::anyhow!("no grant for user {user_id}; import one with `astra-worker grants import`")
        })?;
        if g.status != "active" {
            anyhow::bail!("the grant of user {user_id} needs re-authorization (status {})", g.status);
        }
        let now = Utc::now();
        if g.access_expires_at.is_some_and(|t| t > now + margin) && rejected_version != Some(g.version) {
            return Ok((g.access, g.version));
        }
        if store::try_lease(db, user_id, &owner, now + lease, now).await? {
            let r = refresh_leased(db, svc, settings, call, user_id, &owner).await;
            store::release(db, user_id, &owner).await?;
            match r? {
                Refreshed::Rotated { access } => return Ok((access, g.version + 1)),
                Refreshed::Adopted | Refreshed::Inactive => continue,
                Refreshed::Dead { reason, .. } => {
                    anyhow::bail!(
                        "the grant of user {user_id} is dead ({}); the user must authorize again",
                        reason.as_str()
                    )
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

/// Re-seals every grant not under the current key; safe while the worker runs (compare-and-swap on the
/// version: a grant rotated meanwhile was sealed under the current key already). Returns how many.
pub async fn rotate_keys(db: &Store, keyring: &Keyring) -> anyhow::Result<u64> {
    let mut done = 0;
    let mut skipped = std::collections::HashSet::new();
    loop {
        let users = store::sealed_under_other_key(db, keyring.current_id(), 500).await?;
        let todo: Vec<_> = users.into_iter().filter(|u| !skipped.contains(u)).collect();
        if todo.is_empty() {
            return Ok(done);
        }
        for u in todo {
            let Some(s) = store::load(db, &u).await? else { continue };
            let g = unseal(keyring, s)?;
            let sealed = seal(keyring, &g.user_id, g.version, &g.access, &g.refresh);
            if store::reseal(db, &g.user_id, g.version, &sealed.key_id, &sealed.access_ct, &sealed.refresh_ct).await? {
                done += 1;
            } else {
                skipped.insert(u);
            }
        }
    }
}
