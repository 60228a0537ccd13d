//! Processing the inbox: each claimed webhook is turned into a GET of its resource with the user's token
//! (refreshed under the same lease as every other caller) and recorded as polling records it —
//! `transfer_created`/`transfer_updated` through the mirror (counters, holds, follow-ups), `user_updated` into
//! the grant's user status (a suspended or rejected user gets its `user_suspended` follow-up and is never
//! prompted), `card_updated` into the card's push/pull flags. Unknown types are recorded and ignored. A failure
//! that may pass is retried with backoff; one that cannot is recorded as `failed`.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{TimeDelta, Utc};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::store::{self, Claimed};
use crate::{
    app::{Services, Worker},
    astra::{AstraError, Call},
    exit::classify,
    failure::Status,
    outbox::{self, Message},
    reconcile::{counters, mirror, registry},
    tokens::{self, NoToken},
};

/// How long a processor's claim on a batch lasts unless renewed. It is renewed every quarter of this while the
/// batch is processed, however long its reads take (a refresh under a busy grant's lease, Astra's 429 pause),
/// so another processor takes a batch over only from one that died or lost its store for this long.
const CLAIM_FOR: TimeDelta = TimeDelta::minutes(2);
/// Webhooks claimed at once.
const BATCH: i64 = 8;
/// After this many attempts a webhook is recorded `failed` (Astra itself retries for about 5 hours, and the
/// polling jobs read the same resources).
const MAX_ATTEMPTS: i32 = 12;

/// Backoff after `attempts` failed attempts: 5 s doubling, at most 30 min.
fn backoff(attempts: i32) -> TimeDelta {
    TimeDelta::seconds(5i64.saturating_mul(1i64 << attempts.clamp(0, 20)).min(1800))
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Pass {
    pub processed: u64,
    pub ignored: u64,
    pub retried: u64,
    pub failed: u64,
}

/// What processing one webhook came to.
enum Done {
    Processed,
    Ignored(String),
    /// May pass: try again later.
    Retry(String),
    Failed(String),
}

/// Claims and processes every due webhook, a batch at a time, as `owner`.
pub async fn process_due(worker: &Worker, owner: &str) -> anyhow::Result<Pass> {
    process_due_claiming(worker, owner, CLAIM_FOR).await
}

/// [`process_due`], each batch claimed for `claim_for` and the claim renewed every quarter of it while the batch
/// is processed.
pub async fn process_due_claiming(worker: &Worker, owner: &str, claim_for: TimeDelta) -> anyhow::Result<Pass> {
    let svc = worker.services()?;
    let mut pass = Pass::default();
    loop {
        if worker.shutdown.is_triggered() {
            return Ok(pass);
        }
        let now = Utc::now();
        let batch = store::claim_due(&worker.store, owner, now, now + claim_for, BATCH).await?;
        if batch.is_empty() {
            return Ok(pass);
        }
        let ids: Vec<&str> = batch.iter().map(|w| w.webhook_id.as_str()).collect();
        // One user's webhooks one after another, different users' at once. (A user's status and a card's flags
        // carry no version from Astra: each is recorded only if no read begun later is, wherever it ran.)
        let mut by_user: BTreeMap<Option<&str>, Vec<&Claimed>> = BTreeMap::new();
        for w in &batch {
            by_user.entry(w.user_id.as_deref()).or_default().push(w);
        }
        let (svc, tally) = (&svc, &mut pass);
        let work = async move {
            let results = futures::future::join_all(by_user.into_values().map(|hooks| async move {
                let mut done = Vec::with_capacity(hooks.len());
                for w in hooks {
                    done.push((w, one(worker, svc, w).await));
                }
                done
            }))
            .await;
            // Every outcome is recorded, whatever its siblings met (one the store could not take stays claimed
            // until the claim lapses, then is processed again); an error that must stop the pass is returned
            // after.
            let mut stop = None;
            for (w, done) in results.into_iter().flatten() {
                let done = match done {
                    Ok(d) => d,
                    Err(e) => {
                        let why = format!("{e:#}");
                        if classify(&e) == Status::Config {
                            stop.get_or_insert(e);
                        }
                        Done::Retry(why)
                    }
                };
                if let Err(e) = record(&worker.store, owner, w, done, tally).await {
                    stop.get_or_insert(e);
                }
            }
            stop
        };
        // The claims are renewed until every outcome is recorded.
        if let Some(e) = holding_claim(&worker.store, owner, &ids, claim_for, work).await {
            return Err(e);
        }
    }
}

/// Runs `work` while renewing `owner`'s claims on `ids` every quarter of `claim_for`, so they do not lapse
/// however long it takes. A renewal that fails is logged and tried again at the next tick; the work is polled
/// meanwhile.
async fn holding_claim<T>(
    db: &crate::store::Store,
    owner: &str,
    ids: &[&str],
    claim_for: TimeDelta,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = (claim_for / 4).to_std().unwrap_or_default().max(std::time::Duration::from_millis(10));
    let renewing = async {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            if let Err(e) = store::renew(db, owner, ids, Utc::now() + claim_for).await {
                warn!(error = %e, "could not renew the claim on the webhooks being processed; trying again");
            }
        }
    };
    tokio::select! {
        done = work => done,
        _ = renewing => unreachable!("the renewal never ends"),
    }
}

/// Records one webhook's outcome under `owner`'s claim.
async fn record(db: &crate::store::Store, owner: &str, w: &Claimed, done: Done, pass: &mut Pass) -> anyhow::Result<()> {
    let now = Utc::now();
    let kept = match done {
        Done::Processed => {
            pass.processed += 1;
            store::finish(db, &w.webhook_id, owner, "processed", None, now).await?
        }
        Done::Ignored(why) => {
            pass.ignored += 1;
            store::finish(db, &w.webhook_id, owner, "ignored", Some(&why), now).await?
        }
        Done::Failed(why) => {
            pass.failed += 1;
            warn!(webhook_id = %w.webhook_id, error = %why, "webhook processing failed for good");
            store::finish(db, &w.webhook_id, owner, "failed", Some(&why), now).await?
        }
        Done::Retry(why) if w.attempts >= MAX_ATTEMPTS => {
            pass.failed += 1;
            warn!(webhook_id = %w.webhook_id, error = %why, "webhook processing gave up after its retries");
            store::finish(db, &w.webhook_id, owner, "failed", Some(&why), now).await?
        }
        Done::Retry(why) => {
            pass.retried += 1;
            // `attempts` counts this one (it is counted as the webhook is claimed).
            let next = now + backoff(w.attempts - 1);
            warn!(webhook_id = %w.webhook_id, error = %why, retry_at = %next, "webhook processing will be retried");
            store::reschedule(db, &w.webhook_id, owner, next, &why).await?
        }
    };
    if !kept {
        warn!(webhook_id = %w.webhook_id, "the webhook's claim was taken over; its outcome is the other processor's");
    }
    Ok(())
}

/// Processes due webhooks until shutdown: at once when `wake` is notified (a webhook was accepted here), and
/// every `every` otherwise (retries, and webhooks another process accepted).
pub async fn run(worker: Arc<Worker>, wake: Arc<tokio::sync::Notify>, every: std::time::Duration) {
    let owner = format!("{}:inbox:{}", worker.owner, &uuid::Uuid::new_v4().simple().to_string()[..8]);
    loop {
        match process_due(&worker, &owner).await {
            Ok(p) if p.processed + p.ignored + p.retried + p.failed > 0 => info!(
                processed = p.processed,
                ignored = p.ignored,
                retried = p.retried,
                failed = p.failed,
                "webhook inbox pass"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %format!("{e:#}"), "webhook inbox pass failed; will retry"),
        }
        tokio::select! {
            _ = worker.shutdown.triggered() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[instrument(name = "webhook", skip_all, fields(webhook_id = %w.webhook_id, webhook_type = %w.webhook_type))]
async fn one(worker: &Worker, svc: &Services, w: &Claimed) -> anyhow::Result<Done> {
    let (Some(user_id), Some(resource)) = (w.user_id.as_deref(), w.resource_id.as_deref()) else {
        return Ok(Done::Ignored("no user_id or resource_id".into()));
    };
    let db = &worker.store;
    let call = Call::for_user(user_id);
    let now = Utc::now();
    let read = match w.webhook_type.as_str() {
        "transfer_created" | "transfer_updated" => {
            let r = tokens::with_access(db, &svc.tokens, call, user_id, |access| async move {
                svc.client().transfer(call, &access, resource).await
            })
            .await;
            match answer(r) {
                Ok(t) => {
                    let u = mirror::upsert(db, user_id, &t, now).await?;
                    counters::clear_uncertain_transfer(db, &t.id).await?;
                    info!(
                        new = u.new,
                        changed = u.changed,
                        followups = u.followups,
                        "transfer recorded from a webhook"
                    );
                    Ok(())
                }
                Err(d) => Err(d),
            }
        }
        "user_updated" => {
            // Stamped as the read is sent (after any refresh its token needed): a read begun later stands.
            let r = tokens::with_access(db, &svc.tokens, call, user_id, |access| async move {
                let read_at = Utc::now();
                svc.client().user(call, &access).await.map(|u| (u, read_at))
            })
            .await;
            match answer(r) {
                Ok((u, _)) if u.id != user_id => {
                    Err(Done::Failed(format!("Astra answered for another user ({})", u.id)))
                }
                Ok((u, read_at)) => {
                    tokens::store::set_user_status(db, user_id, u.status, read_at).await?;
                    if u.status.is_barred() {
                        let m = Message::once(
                            "user_suspended",
                            user_id,
                            Some(user_id),
                            json!({"user_status": u.status.as_str(), "source": "webhook"}),
                            now,
                        );
                        outbox::store::insert(db, &m).await?;
                    }
                    Ok(())
                }
                Err(d) => Err(d),
            }
        }
        "card_updated" | "card_created" => {
            let r = tokens::with_access(db, &svc.tokens, call, user_id, |access| async move {
                let read_at = Utc::now();
                svc.client().card(call, &access, resource).await.map(|c| (c, read_at))
            })
            .await;
            match answer(r) {
                Ok((c, read_at)) => {
                    let recorded = registry::set_card_flags(db, &c.id, c.push_enabled, c.pull_enabled, read_at).await?;
                    if recorded == registry::CardFlags::NotRegistered {
                        return Ok(Done::Ignored(format!("card {} is not registered", c.id)));
                    }
                    Ok(())
                }
                Err(d) => Err(d),
            }
        }
        other => return Ok(Done::Ignored(format!("webhook type {other} is not used"))),
    };
    Ok(match read {
        Ok(()) => Done::Processed,
        // Astra's reads may lag its webhook: a resource just created and not found yet is tried again.
        Err(Done::Ignored(why))
            if w.webhook_type.ends_with("_created") && why.starts_with("not found") && w.attempts < 4 =>
        {
            Done::Retry(why)
        }
        Err(d) => d,
    })
}

/// The resource, or what the webhook comes to when it could not be read.
fn answer<T>(r: anyhow::Result<Result<T, AstraError>>) -> Result<T, Done> {
    match r {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(AstraError::NotFound { endpoint })) => Err(Done::Ignored(format!("not found at Astra: {endpoint}"))),
        Ok(Err(e)) if e.is_temporary() => Err(Done::Retry(e.to_string())),
        Ok(Err(e @ AstraError::ClientRejected)) => Err(Done::Retry(e.to_string())),
        Ok(Err(e)) => Err(Done::Failed(e.to_string())),
        // The grant died: its episode prompts the user; the polling backstop reads once it is back.
        Err(e) if e.downcast_ref::<NoToken>().is_some() => Err(Done::Ignored(format!("{e:#}"))),
        Err(e) => Err(Done::Retry(format!("{e:#}"))),
    }
}
