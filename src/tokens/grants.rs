//! A grant as the rest of the worker sees it: its status, and its tokens unsealed from the store (a row that
//! cannot be opened is flagged, not fatal); sealing a pair for a grant and version; the refresh token's
//! fingerprint; refusing a keyring that cannot open what is stored; re-sealing every grant under the current key.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{
    keys::{CryptoError, Keyring, TokenKind},
    store,
};
use crate::{astra::UserStatus, failure::Failure, store::Store};

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
    /// Astra's status of the user, as last read, and when.
    pub user_status: Option<UserStatus>,
    pub user_status_at: Option<DateTime<Utc>>,
    /// When Astra issued the stored pair.
    pub issued_at: DateTime<Utc>,
}

pub(super) fn unseal(k: &Keyring, s: store::SealedGrant) -> anyhow::Result<Grant> {
    let status = GrantStatus::parse(&s.status)
        .ok_or_else(|| anyhow::anyhow!("grant {}: unknown status `{}` in the store", s.user_id, s.status))?;
    let issued_at = s.issued();
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
        user_status_at: s.user_status_at,
        issued_at,
    })
}

/// The user's grant with its tokens open. A row whose tokens this keyring cannot open is flagged in the store
/// (shown by `grants list` and `health`) and comes back as [`Unreadable`]; a re-import of the user repairs it.
pub async fn load(db: &Store, keyring: &Keyring, user_id: &str) -> anyhow::Result<Option<Grant>> {
    let Some(s) = store::load(db, user_id).await? else { return Ok(None) };
    open_or_flag(db, keyring, s).await.map(Some)
}

/// The grant whose lease `owner` holds, the lease extended to `until` in the same statement, its tokens open
/// (or [`Unreadable`], flagged, as with [`load`]). `None`: the grant is gone or its lease was taken over.
pub(super) async fn renew_and_load(
    db: &Store,
    keyring: &Keyring,
    user_id: &str,
    owner: &str,
    until: DateTime<Utc>,
) -> anyhow::Result<Option<Grant>> {
    let Some(s) = store::renew_and_load(db, user_id, owner, until).await? else { return Ok(None) };
    open_or_flag(db, keyring, s).await.map(Some)
}

async fn open_or_flag(db: &Store, keyring: &Keyring, s: store::SealedGrant) -> anyhow::Result<Grant> {
    let user_id = s.user_id.clone();
    match unseal(keyring, s) {
        Err(e) if e.downcast_ref::<CryptoError>().is_some() => {
            let detail = e.to_string();
            store::mark_unreadable(db, &user_id, &detail).await?;
            Err(Unreadable { user_id, detail }.into())
        }
        other => other,
    }
}

/// A stored grant whose tokens cannot be opened: that grant is skipped (its run is partial), the others go on.
#[derive(Debug, thiserror::Error)]
#[error("{detail}; the grant is flagged and skipped until the user is imported again with the right key")]
pub struct Unreadable {
    pub user_id: String,
    detail: String,
}

impl crate::failure::Classify for Unreadable {
    fn status(&self) -> crate::failure::Status {
        crate::failure::Status::Temporary
    }
}

/// Refuses (configuration, exit 78) a keyring that cannot open the grants already stored: sealed under a key
/// that is neither `ASTRA_WORKER_TOKEN_KEY` nor in `ASTRA_WORKER_TOKEN_KEY_PREVIOUS`. Every command that reads
/// or writes grants calls it before writing anything.
pub async fn check_keyring(db: &Store, keyring: &Keyring) -> anyhow::Result<()> {
    let unknown: Vec<String> = store::stored_key_ids(db).await?.into_iter().filter(|id| !keyring.holds(id)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Failure::config(format!(
        "the store holds grants sealed under key id(s) {} that neither ASTRA_WORKER_TOKEN_KEY (key id {}) nor \
         ASTRA_WORKER_TOKEN_KEY_PREVIOUS holds; set the key the store was written with (or list it in \
         ASTRA_WORKER_TOKEN_KEY_PREVIOUS while rotating). Nothing was written",
        unknown.join(", "),
        keyring.current_id()
    )))
}

/// The fingerprint of a refresh token: SHA-256 over the user and the token, hex. Tokens are long random strings,
/// so it cannot be turned back into the token; it proves an imported pair is one the grant already held.
pub(super) fn fingerprint(user_id: &str, refresh: &SecretString) -> String {
    let d = Sha256::digest(format!("astra-worker refresh|{user_id}|{}", refresh.expose_secret()).as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
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
            let g = match load(db, keyring, &u).await {
                Ok(Some(g)) => g,
                Ok(None) => continue,
                Err(e) if e.downcast_ref::<Unreadable>().is_some() => {
                    tracing::error!(user_id = %u, error = %e, "cannot re-seal an unreadable grant; skipped");
                    skipped.insert(u);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let sealed = seal(keyring, &g.user_id, g.version, &g.access, &g.refresh);
            if store::reseal(db, &g.user_id, g.version, &sealed.key_id, &sealed.access_ct, &sealed.refresh_ct).await? {
                done += 1;
            } else {
                skipped.insert(u);
            }
        }
    }
}
