//! The authorization-code exchange: the fintech's OAuth redirect handler hands over the code a user's consent
//! produced; the worker exchanges it for a pair (with the configured `redirect_uri`), checks with
//! `GET /v1/user` that the pair belongs to the user it was handed for, and stores it like an import, which
//! closes the user's re-authorization episode. The loop the prompts open ends here.

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tracing::{info, instrument};

use super::{ImportLine, Imported, Tokens, import, store};
use crate::{
    astra::{AstraError, Call, UserStatus},
    failure::Failure,
    store::Store,
};

/// What exchanging a code did.
#[derive(Debug, Clone, Serialize)]
pub struct Exchanged {
    pub user_id: String,
    /// `new`, `replaced` (a re-authorization: the episode closed), or `unchanged`.
    pub grant: &'static str,
    /// How long the closed re-authorization episode had been open, in seconds.
    pub episode_open_for_secs: Option<i64>,
    pub access_expires_at: DateTime<Utc>,
    pub user_status: UserStatus,
}

/// Exchanges `code` for the grant of `user_id` and stores it. A code Astra refuses (unknown, used, expired) is
/// a rejection (`Failure::Rejected`): the user must authorize again; a code that turns out to be another
/// user's is refused and nothing is stored.
#[instrument(name = "exchange", skip_all, fields(user_id = %user_id))]
pub async fn exchange(
    db: &Store,
    tok: &Tokens,
    user_id: &str,
    code: &SecretString,
    now: DateTime<Utc>,
) -> anyhow::Result<Exchanged> {
    if user_id.trim().is_empty() || user_id.len() > 256 || user_id.chars().any(char::is_control) {
        return Err(Failure::rejected("user_id: must be 1 to 256 printable characters"));
    }
    let c = code.expose_secret();
    if c.trim().is_empty() || c.len() > 2048 || c.chars().any(char::is_control) {
        return Err(Failure::rejected("code: must be 1 to 2048 printable characters"));
    }
    let call = Call::for_user(user_id);
    // The key is the code's own (hashed): every retry of this exchange, and a caller's retry of its request,
    // sends the same key, so an Astra that honours it answers with the pair it already issued.
    let key = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("astra-worker:code:{c}").as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let pair = tok.client.exchange_code(call, code, &key).await.map_err(|e| match e {
        AstraError::GrantRejected { after_ambiguous_attempt, .. } => Failure::rejected(if after_ambiguous_attempt {
            "Astra refused the authorization code after an attempt whose answer was lost; the user must authorize again"
        } else {
            "Astra refused the authorization code (unknown, already used or expired); the user must authorize again"
        }),
        e => e.into(),
    })?;
    // The code is spent: the pair is the user's consent. A blip reading whose it is is retried, not fatal.
    let mut wait = std::time::Duration::from_millis(500);
    let (user, read_at) = loop {
        let read_at = Utc::now();
        match tok.client.user(call, &pair.access_token).await {
            Ok(u) => break (u, read_at),
            Err(e) if e.is_temporary() && wait <= std::time::Duration::from_secs(4) => {
                tracing::warn!(error = %e, "could not read whose grant the code issued; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if user.id != user_id {
        // Someone else's consent: storing it under this user would hand their bank to the wrong account.
        return Err(Failure::rejected(format!(
            "the authorization code belongs to another Astra user, not {user_id}: nothing was stored"
        )));
    }
    let access_expires_at = now + TimeDelta::seconds(pair.expires_in.clamp(0, 86_400 * 30));
    let line = ImportLine {
        user_id: user_id.to_string(),
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        refresh_token_issued_at: Some(now.fixed_offset()),
        refresh_token_expires_at: None,
        access_token_expires_at: Some(access_expires_at.fixed_offset()),
        phone: None,
    };
    let imported = import(db, &tok.keyring, &line, now).await?;
    store::set_user_status(db, user_id, user.status, read_at).await?;
    let (grant, open_for) = match imported {
        Imported::New => ("new", None),
        Imported::Replaced { episode_open_for } => ("replaced", episode_open_for),
        Imported::Unchanged | Imported::Stale => ("unchanged", None),
    };
    info!(grant, "authorization code exchanged and the grant stored");
    Ok(Exchanged {
        user_id: user_id.to_string(),
        grant,
        episode_open_for_secs: open_for.map(|d| d.num_seconds()),
        access_expires_at,
        user_status: user.status,
    })
}
