//! A grant as the rest of the worker sees it: its status, and its tokens unsealed from the store; sealing a
//! pair for a grant and version; re-sealing every grant under the current key.

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{
    keys::{Keyring, TokenKind},
    store,
};
use crate::{astra::UserStatus, store::Store};

/// Whether a grant can be used: `active`, or dead until the user authorizes again (`needs_reauth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    Active,
    NeedsReauth,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Active => "active",
            GrantStatus::NeedsReauth => "needs_reauth",
        }
    }

    pub fn parse(s: &str) -> Option<GrantStatus> {
        [GrantStatus::Active, GrantStatus::NeedsReauth].into_iter().find(|g| g.as_str() == s)
    }
}

impl std::fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A grant with its tokens unsealed. `Debug` prints no token.
#[derive(Debug, Clone)]
pub struct Grant {
    pub user_id: String,
    pub status: GrantStatus,
    pub version: i64,
    pub access: SecretString,
    pub refresh: SecretString,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: DateTime<Utc>,
    pub phone: Option<String>,
    /// Astra's status of the user, as last read.
    pub user_status: Option<UserStatus>,
}

pub(super) fn unseal(k: &Keyring, s: store::SealedGrant) -> anyhow::Result<Grant> {
    let status = GrantStatus::parse(&s.status)
        .ok_or_else(|| anyhow::anyhow!("grant {}: unknown status `{}` in the store", s.user_id, s.status))?;
    let access = k.open(&s.key_id, &s.user_id, s.token_version, TokenKind::Access, &s.access_ct)?;
    let refresh = k.open(&s.key_id, &s.user_id, s.token_version, TokenKind::Refresh, &s.refresh_ct)?;
    Ok(Grant {
        user_id: s.user_id,
        status,
        version: s.token_version,
        access,
        refresh,
        access_expires_at: s.access_expires_at,
        refresh_expires_at: s.refresh_expires_at,
        phone: s.phone,
        user_status: s.user_status.as_deref().and_then(UserStatus::parse),
    })
}

pub async fn load(db: &Store, keyring: &Keyring, user_id: &str) -> anyhow::Result<Option<Grant>> {
    match store::load(db, user_id).await? {
        None => Ok(None),
        Some(s) => Ok(Some(unseal(keyring, s)?)),
    }
}

/// A pair sealed for one grant and version, with the id of its key.
pub(super) struct Sealed {
    pub(super) key_id: String,
    pub(super) access_ct: Vec<u8>,
    pub(super) refresh_ct: Vec<u8>,
}

pub(super) fn seal(k: &Keyring, user_id: &str, version: i64, access: &SecretString, refresh: &SecretString) -> Sealed {
    Sealed {
        key_id: k.current_id().to_string(),
        access_ct: k.seal(user_id, version, TokenKind::Access, access),
        refresh_ct: k.seal(user_id, version, TokenKind::Refresh, refresh),
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
