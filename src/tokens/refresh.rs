//! The one refresh every caller uses (rotation, the sweep's rescue, `token <user>`), for a grant whose lease
//! the caller holds: intent first, then Astra (with the intent's id as `Idempotency-Key`), then a write fenced
//! on the version read and the lease held, retried until stored; a rejection is checked against a concurrent
//! writer before the grant is declared dead, and the episode opens only on the version found dead.
//!
//! An intent is owned through the grant's lease: the lease is taken for longer than one refresh can take
//! ([`super::refresh_worst_case`]), and Astra is called only while the rest of it covers the call and storing
//! its answer, so an intent found open by whoever holds the lease now was left by an owner that died (or
//! stalled past every bound): only then is it probed.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::SecretString;
use tracing::{error, info, instrument, warn};

use super::{
    GrantStatus, Tokens,
    episodes::{self, DeadGrant, Opened, Reason},
    grants::{Grant, fingerprint, renew_and_load, seal},
    intents, store,
};
use crate::{
    astra::{AstraError, Call, REFRESH_TOKEN_LIFETIME, TokenPair},
    store::Store,
};

/// What a refresh did.
#[derive(Debug)]
pub enum Refreshed {
    /// A new pair is stored (and the lease released with it), its access token good until `access_expires_at`;
    /// `user_status_at` is when the user's status was last read.
    Rotated { access: SecretString, access_expires_at: DateTime<Utc>, user_status_at: Option<DateTime<Utc>> },
    /// Another writer rotated or replaced the grant meanwhile; its tokens stand.
    Adopted,
    /// The grant is dead; an episode (or a suspended-user follow-up) was opened.
    Dead { reason: Reason, opened: Opened },
    /// Not now (Astra unavailable, rate-limited, malformed answer, the store unable to take the new pair); left
    /// for the next run, which probes the grant when Astra may have rotated it.
    Failed { detail: String },
    /// The grant is no longer active.
    Inactive,
    /// The grant is gone, or its lease was taken over (it lapsed and another process took it): not refreshed.
    NotLeased,
}

/// Refreshes `user_id`'s grant, whose lease `owner` holds, and gives the lease back; with `seen_version`, only if the grant is still at
/// the version the caller found in need of a refresh (otherwise another process refreshed it meanwhile: its
/// pair is adopted, and its access token, which that process may be using, is not revoked by a second
/// refresh). A refresh intent left open by a process that died
/// turns this call into a probe: a rejection then means the earlier rotation was applied and its answer lost.
/// `Err` only for what must stop the run (rejected client credentials) or skip this grant (an unreadable row,
/// the store failing before Astra was called).
#[instrument(name = "refresh", skip_all, fields(user_id = %user_id))]
pub async fn refresh_leased(
    db: &Store,
    tok: &Tokens,
    call: Call<'_>,
    user_id: &str,
    owner: &str,
    seen_version: Option<i64>,
) -> anyhow::Result<Refreshed> {
    let r = refresh(db, tok, call, user_id, owner, seen_version).await;
    // A rotated pair was stored with the lease released in the same write; every other outcome gives it back.
    if !matches!(r, Ok(Refreshed::Rotated { .. })) {
        store::release(db, user_id, owner).await?;
    }
    r
}

async fn refresh(
    db: &Store,
    tok: &Tokens,
    call: Call<'_>,
    user_id: &str,
    owner: &str,
    seen_version: Option<i64>,
) -> anyhow::Result<Refreshed> {
    // The lease may have lapsed since it was taken (a batch waiting its turn): it is extended for the whole call
    // as the grant is read, or the grant is left to whoever took it over.
    let until = Utc::now() + tok.lease;
    let Some(g) = renew_and_load(db, &tok.keyring, user_id, owner, until).await? else {
        return Ok(Refreshed::NotLeased);
    };
    if g.status != GrantStatus::Active {
        return Ok(Refreshed::Inactive);
    }
    if seen_version.is_some_and(|v| v != g.version) {
        return Ok(Refreshed::Adopted);
    }
    // Once Astra is called it may rotate: the rest of the lease must cover the call and storing its answer. A
    // store too slow for that (checked before the intent is opened and again after) leaves the grant for the
    // next run, Astra not called.
    let too_slow = || Utc::now() + tok.after_the_call > until;
    if too_slow() {
        return Ok(too_slow_to_call());
    }
    let Some((intent, probe)) = intents::open_or_find(db, user_id, g.version, owner, Utc::now()).await? else {
        return Ok(Refreshed::Failed { detail: "another refresh of this grant is in progress".into() });
    };
    if too_slow() {
        // A probe's intent stays open: the outcome it stands for is still unknown.
        if !probe {
            intents::close_intent(db, &intent, "failed", Utc::now()).await?;
        }
        return Ok(too_slow_to_call());
    }
    match tok.client.refresh(call, &g.refresh, &intent).await {
        Ok(pair) => Ok(store_issued(db, tok, &g, owner, &intent, pair).await),
        Err(AstraError::GrantRejected { after_ambiguous_attempt, description }) => {
            let now = Utc::now();
            let cur = store::load(db, user_id).await?;
            if cur.as_ref().is_some_and(|c| c.token_version != g.version) {
                intents::close_intent(db, &intent, "adopted", now).await?;
                return Ok(Refreshed::Adopted);
            }
            let reason = if probe || after_ambiguous_attempt {
                Reason::LostRotation
            } else if g.refresh_expires_at <= now {
                Reason::Expired
            } else {
                Reason::RefreshRejected
            };
            let dead =
                DeadGrant { user_id, version: g.version, owner, phone: g.phone.as_deref(), user_status: g.user_status };
            let opened = episodes::open(db, &dead, reason, &tok.link, now).await?;
            if opened == Opened::Superseded {
                intents::close_intent(db, &intent, "superseded", now).await?;
                return Ok(Refreshed::Adopted);
            }
            intents::close_intent(db, &intent, "rejected", now).await?;
            info!(reason = reason.as_str(), astra = %description, ?opened, "grant is dead");
            Ok(Refreshed::Dead { reason, opened })
        }
        Err(e @ AstraError::ClientRejected) => {
            intents::close_intent(db, &intent, "failed", Utc::now()).await?;
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
                intents::close_intent(db, &intent, "failed", Utc::now()).await?;
            }
            Ok(Refreshed::Failed { detail: e.to_string() })
        }
    }
}

/// A refresh the store was too slow to start within its lease (see [`super::BEFORE_THE_CALL`]).
fn too_slow_to_call() -> Refreshed {
    warn!("the store was too slow to start the refresh within its lease; Astra not called, left for the next run");
    Refreshed::Failed {
        detail: "the store was too slow: the rest of the grant's lease would not cover the refresh; not called".into(),
    }
}

/// Stores the pair Astra issued, fenced on the version read and the lease held. The store failing is retried
/// with backoff for `Tokens::commit_retry`: this pair is the only copy of the grant's live refresh token.
async fn store_issued(db: &Store, tok: &Tokens, g: &Grant, owner: &str, intent: &str, pair: TokenPair) -> Refreshed {
    let issued_at = Utc::now();
    let access_expires_at = issued_at + TimeDelta::seconds(pair.expires_in);
    let version = g.version + 1;
    let sealed = seal(&tok.keyring, &g.user_id, version, &pair.access_token, &pair.refresh_token);
    let fp = fingerprint(&g.user_id, &pair.refresh_token);
    let w = store::GrantWrite {
        user_id: &g.user_id,
        version,
        key_id: &sealed.key_id,
        access_ct: &sealed.access_ct,
        refresh_ct: &sealed.refresh_ct,
        access_expires_at: Some(access_expires_at),
        refresh_expires_at: issued_at + REFRESH_TOKEN_LIFETIME,
        phone: None,
        issued_at,
        fingerprint: &fp,
        now: issued_at,
    };
    let give_up = tokio::time::Instant::now() + tok.commit_retry;
    let mut wait = Duration::from_millis(50);
    loop {
        match store::put_rotated(db, &w, g.version, owner, intent).await {
            Ok(true) => {
                let (access, user_status_at) = (pair.access_token, g.user_status_at);
                return Refreshed::Rotated { access, access_expires_at, user_status_at };
            }
            Ok(false) => return superseded(db, &g.user_id, g.version).await,
            Err(e) if tokio::time::Instant::now() + wait < give_up => {
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "could not store the new pair; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                // The intent stays open: the next run probes the grant (and, where Astra honours the
                // intent's Idempotency-Key, gets this pair again).
                error!(error = %e, "Astra issued a new pair that could not be stored; the grant is probed next run");
                return Refreshed::Failed {
                    detail: format!("Astra issued a new pair that could not be stored: {e}; probed next run"),
                };
            }
        }
    }
}

/// The fenced write found the grant replaced (a new grant imported, which closed the intent) or its lease taken
/// over (whoever took it owns the intent now): the pair Astra issued for the old grant is not written.
async fn superseded(db: &Store, user_id: &str, version: i64) -> Refreshed {
    match store::load(db, user_id).await {
        Ok(Some(cur)) if cur.token_version != version => {
            info!("the grant was replaced while its refresh was in flight")
        }
        _ => error!("the grant's lease was taken over while its refresh was in flight; the pair issued is dropped"),
    }
    Refreshed::Adopted
}
