//! The one refresh every caller uses (rotation, the sweep's rescue, `token <user>`), for a grant whose lease
//! the caller holds: intent first, then Astra, then a compare-and-swap write; a rejection is checked against
//! a concurrent writer before the grant is declared dead.

use chrono::{TimeDelta, Utc};
use secrecy::SecretString;
use tracing::{info, instrument, warn};

use super::{
    GrantStatus, Tokens,
    episodes::{self, DeadGrant, Opened, Reason},
    grants::{load, seal},
    store,
};
use crate::{
    astra::{AstraError, Call, REFRESH_TOKEN_LIFETIME},
    store::Store,
};

/// What a refresh did.
#[derive(Debug)]
pub enum Refreshed {
    /// A new pair is stored.
    Rotated { access: SecretString },
    /// Another writer rotated the grant meanwhile; its tokens stand.
    Adopted,
    /// The grant is dead; an episode (or a suspended-user follow-up) was opened.
    Dead { reason: Reason, opened: Opened },
    /// Not now (Astra unavailable, rate-limited, malformed answer); left for the next run.
    Failed { detail: String },
    /// The grant is gone or no longer active.
    Inactive,
}

/// Refreshes `user_id`'s grant, whose lease `owner` holds. A refresh intent left open by a process that died
/// turns this call into a probe: a rejection then means the earlier rotation was applied and its answer lost.
/// `Err` only for what must stop the run: rejected client credentials, an undecryptable grant, the store.
#[instrument(name = "refresh", skip_all, fields(user_id = %user_id))]
pub async fn refresh_leased(
    db: &Store,
    tok: &Tokens,
    call: Call<'_>,
    user_id: &str,
    owner: &str,
) -> anyhow::Result<Refreshed> {
    let Some(g) = load(db, &tok.keyring, user_id).await? else { return Ok(Refreshed::Inactive) };
    if g.status != GrantStatus::Active {
        return Ok(Refreshed::Inactive);
    }
    let now = Utc::now();
    let (intent, probe) = match store::open_intent_of(db, user_id).await? {
        Some((id, _)) => (id, true),
        None => match store::open_intent(db, user_id, g.version, owner, now).await? {
            Some(id) => (id, false),
            None => return Ok(Refreshed::Failed { detail: "another refresh of this grant is in progress".into() }),
        },
    };
    match tok.client.refresh(call, &g.refresh).await {
        Ok(pair) => {
            let now = Utc::now();
            let mut version = g.version + 1;
            let mut old = g.version;
            loop {
                let sealed = seal(&tok.keyring, user_id, version, &pair.access_token, &pair.refresh_token);
                let w = store::GrantWrite {
                    user_id,
                    version,
                    key_id: &sealed.key_id,
                    access_ct: &sealed.access_ct,
                    refresh_ct: &sealed.refresh_ct,
                    access_expires_at: Some(now + TimeDelta::seconds(pair.expires_in)),
                    refresh_expires_at: now + REFRESH_TOKEN_LIFETIME,
                    phone: None,
                    now,
                };
                if store::put_rotated(db, &w, old, &intent).await? {
                    return Ok(Refreshed::Rotated { access: pair.access_token });
                }
                // Someone wrote the grant while we refreshed (our lease ran out). Astra answered us last,
                // so our pair is the live one: write it over theirs.
                let cur = store::load(db, user_id).await?.map(|s| s.token_version).unwrap_or(old);
                warn!("grant was written concurrently; storing the pair Astra issued last");
                old = cur;
                version = cur + 1;
            }
        }
        Err(AstraError::GrantRejected { after_ambiguous_attempt, description }) => {
            let now = Utc::now();
            let cur = store::load(db, user_id).await?;
            if cur.as_ref().is_some_and(|c| c.token_version != g.version) {
                store::close_intent(db, &intent, "adopted", now).await?;
                return Ok(Refreshed::Adopted);
            }
            let reason = if probe || after_ambiguous_attempt {
                Reason::LostRotation
            } else if g.refresh_expires_at <= now {
                Reason::Expired
            } else {
                Reason::RefreshRejected
            };
            let dead = DeadGrant { user_id, phone: g.phone.as_deref(), user_status: g.user_status };
            let opened = episodes::open(db, &dead, reason, &tok.link, now).await?;
            store::close_intent(db, &intent, "rejected", now).await?;
            info!(reason = reason.as_str(), astra = %description, ?opened, "grant is dead");
            Ok(Refreshed::Dead { reason, opened })
        }
        Err(e @ AstraError::ClientRejected) => {
            store::close_intent(db, &intent, "failed", Utc::now()).await?;
            Err(e.into())
        }
        Err(e @ (AstraError::Transient { maybe_applied: true, .. } | AstraError::Malformed { .. })) => {
            // Astra may have rotated: keep the intent open so the next run probes this grant.
            warn!(error = %e, "refresh may have been applied without an answer; the next run probes it");
            Ok(Refreshed::Failed { detail: e.to_string() })
        }
        Err(e) => {
            // A probe that met a 429 or a transient error proved nothing: its intent stays open for the next run.
            if !probe {
                store::close_intent(db, &intent, "failed", Utc::now()).await?;
            }
            Ok(Refreshed::Failed { detail: e.to_string() })
        }
    }
}
