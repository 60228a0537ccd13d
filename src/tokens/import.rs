//! `grants import`: a grant the fintech obtained, stored sealed; idempotent; a newer grant replaces the
//! stored one and closes the user's re-authorization episode. Import and refresh agree on "newer": by when
//! Astra issued the pair (`refresh_token_issued_at`, else the import time), and a pair the grant already held
//! and replaced is never stored again (its fingerprint is known), so an old file cannot revive a dead grant.

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::instrument;

use super::{
    grants::{fingerprint, seal, unseal},
    keys::Keyring,
    store,
};
use crate::{astra::REFRESH_TOKEN_LIFETIME, failure::Failure, store::Store};

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
    /// Older than the stored grant (issued before it, or a pair it already held): not imported.
    Stale,
}

/// How often an import re-decides after another writer changed the grant between its read and its write.
const WRITE_RACES: usize = 5;

impl ImportLine {
    /// One line of input, parsed and checked as [`import`] checks it: the error names the field and echoes no
    /// token.
    pub fn parse_line(line: &[u8], now: DateTime<Utc>) -> Result<ImportLine, String> {
        let parsed: ImportLine = crate::secrets::parse_json(line)?;
        parsed.validate(now)?;
        Ok(parsed)
    }

    /// When the refresh token expires.
    fn validate(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        crate::secrets::check_id("user_id", &self.user_id)?;
        if self.refresh_token.expose_secret().trim().is_empty() {
            return Err("refresh_token is empty".into());
        }
        if self.access_token.expose_secret().trim().is_empty() {
            return Err("access_token is empty".into());
        }
        // Astra's refresh tokens live ten days: an expiry further out (9999-12-31) would never come due and die
        // at Astra without a prompt; an issue time in the future is a clock or a typo.
        let skew = TimeDelta::minutes(5);
        let sane_from = now - TimeDelta::days(3650);
        let expires = match (self.refresh_token_issued_at, self.refresh_token_expires_at) {
            (Some(_), Some(_)) => {
                return Err("give refresh_token_issued_at or refresh_token_expires_at, not both".into());
            }
            (None, None) => return Err("refresh_token_issued_at or refresh_token_expires_at is required".into()),
            (Some(i), None) => {
                let i = i.with_timezone(&Utc);
                if i > now + skew || i < sane_from {
                    return Err("refresh_token_issued_at: not a time Astra could have issued it (in the future, or over ten years ago)".into());
                }
                i + REFRESH_TOKEN_LIFETIME
            }
            (None, Some(e)) => e.with_timezone(&Utc),
        };
        if expires > now + REFRESH_TOKEN_LIFETIME + skew || expires < sane_from {
            return Err("refresh_token_expires_at: more than ten days ahead (Astra's refresh tokens live ten days), or over ten years ago".into());
        }
        if let Some(a) = self.access_token_expires_at
            && (a.with_timezone(&Utc) > now + TimeDelta::days(30) || a.with_timezone(&Utc) < sane_from)
        {
            return Err(
                "access_token_expires_at: outside a sane range (more than 30 days ahead, or over ten years ago)".into(),
            );
        }
        Ok(expires)
    }
}

/// Imports one grant: idempotent; a newer grant replaces the stored one (even one whose stored tokens cannot be
/// opened: that repairs it) and closes the user's episode; a refresh in flight on the replaced pair cannot
/// store its answer over it.
#[instrument(name = "import", skip_all, fields(user_id = %line.user_id))]
pub async fn import(db: &Store, keyring: &Keyring, line: &ImportLine, now: DateTime<Utc>) -> anyhow::Result<Imported> {
    let refresh_expires_at = line.validate(now).map_err(Failure::rejected)?;
    let issued_at = line.refresh_token_issued_at.map_or(now, |t| t.with_timezone(&Utc));
    let fp = fingerprint(&line.user_id, &line.refresh_token);
    for _ in 0..WRITE_RACES {
        let existing = store::load(db, &line.user_id).await?;
        let (version, expected) = match &existing {
            None => (1, None),
            Some(s) => {
                if is_stored_pair(keyring, s, &fp) {
                    match (s.status.as_str(), &s.unreadable) {
                        ("active", None) => return Ok(Imported::Unchanged),
                        // The pair that died is not revived.
                        (status, _) if status != "active" => return Ok(Imported::Stale),
                        // The same pair over a row that could not be opened: stored again, which repairs it.
                        _ => {}
                    }
                } else if store::fingerprint_known(db, &line.user_id, &fp).await? || issued_at < s.issued() {
                    // A pair the grant held and replaced, or one issued before the stored pair.
                    return Ok(Imported::Stale);
                }
                (s.token_version + 1, Some(s.token_version))
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
            issued_at,
            fingerprint: &fp,
            now,
        };
        if let Some(closed) = store::put_imported(db, &w, expected).await? {
            return Ok(match existing {
                None => Imported::New,
                Some(_) => Imported::Replaced { episode_open_for: closed },
            });
        }
    }
    Err(Failure::Unavailable(format!(
        "the grant of user {} kept changing while it was imported; try again",
        line.user_id
    ))
    .into())
}

/// Whether the line's refresh token is the stored one: by fingerprint, or (rows stored before fingerprints)
/// by opening the stored token.
fn is_stored_pair(keyring: &Keyring, s: &store::SealedGrant, fp: &str) -> bool {
    match &s.refresh_fingerprint {
        Some(f) => f == fp,
        None => unseal(keyring, s.clone()).is_ok_and(|g| fingerprint(&g.user_id, &g.refresh) == fp),
    }
}
