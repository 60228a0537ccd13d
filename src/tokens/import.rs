//! `grants import`: a grant the fintech obtained, stored sealed; idempotent; a newer grant replaces the
//! stored one and closes the user's re-authorization episode.

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::instrument;

use super::{
    grants::{GrantStatus, seal, unseal},
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
            (Some(i), None) => Ok(i.with_timezone(&Utc) + REFRESH_TOKEN_LIFETIME),
            (None, Some(e)) => Ok(e.with_timezone(&Utc)),
        }
    }
}

/// Imports one grant: idempotent; a newer grant replaces the stored one and closes the user's episode.
#[instrument(name = "import", skip_all, fields(user_id = %line.user_id))]
pub async fn import(db: &Store, keyring: &Keyring, line: &ImportLine, now: DateTime<Utc>) -> anyhow::Result<Imported> {
    let refresh_expires_at = line.validate().map_err(Failure::rejected)?;
    let existing = store::load(db, &line.user_id).await?;
    let (version, outcome) = match existing {
        None => (1, Imported::New),
        Some(s) => {
            let old = unseal(keyring, s)?;
            if old.refresh.expose_secret() == line.refresh_token.expose_secret() {
                return Ok(Imported::Unchanged);
            }
            if refresh_expires_at < old.refresh_expires_at && old.status == GrantStatus::Active {
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
