//! `reprocessing-check` (daily): re-reads every transfer Astra debited but could not credit, records what
//! changed, notes when a held one clears, and raises one `transfer_stuck` follow-up for a transfer held past
//! `stuck_after` (from what the mirror knows, even when the transfer can no longer be read). It also reads
//! again, by id, each transfer that landed within `watch_landed_for` (60 days: ACH returns come that late), on
//! a widening schedule (1, 2, 3, 5, 8, 13, 21, 34, 55 days after landing): about nine requests per landed
//! transfer in all, whatever the number of users. A failure after landing produces its follow-ups through the
//! mirror's upsert, exactly once.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use tracing::{instrument, warn};

use super::{ItemOutcome, RunContext};
use crate::{
    app::{Services, Worker},
    astra::{AstraError, Transfer, TransferStatus},
    config::{JobName, JobParams, ReprocessingCheckParams},
    exit::classify,
    failure::Status,
    outbox::{self, Message},
    reconcile::mirror::{self, LandedDue, Watched},
    tokens::{self, NoToken},
};

pub(super) async fn run(ctx: &RunContext<'_>, p: &ReprocessingCheckParams) -> anyhow::Result<()> {
    let svc = ctx.worker.services()?;
    let db = &ctx.worker.store;
    let now = Utc::now();
    let held = mirror::watched(db, None).await?;
    if ctx.dry_run {
        ctx.tally("would_check", held.len() as i64);
        let due = mirror::rechecks_due(db, now, p.watch_landed_for, i64::MAX).await?;
        ctx.tally("would_reread_landed", due.len() as i64);
        return Ok(());
    }
    for w in held {
        if ctx.stopping() {
            break;
        }
        check(ctx, &svc, &w, p.stuck_after).await?;
    }
    // Landed transfers, read again by id on a widening schedule: a failure after landing, however late within
    // `watch_landed_for`, produces its follow-ups (once) through the mirror.
    loop {
        let due = mirror::rechecks_due(db, Utc::now(), p.watch_landed_for, RECHECK_BATCH).await?;
        if due.is_empty() || ctx.stopping() {
            break;
        }
        for r in due {
            if ctx.stopping() {
                break;
            }
            reread_landed(ctx, &svc, &r).await?;
        }
    }
    Ok(())
}

/// Landed transfers taken per batch.
const RECHECK_BATCH: i64 = 500;

/// Reads one transfer by id with the user's token. `None` when it was not read; the outcome is recorded.
async fn read(ctx: &RunContext<'_>, svc: &Services, user_id: &str, id: &str) -> anyhow::Result<Option<Transfer>> {
    let db = &ctx.worker.store;
    let call = ctx.call(user_id);
    let read = tokens::with_access(db, &svc.tokens, call, user_id, |access| async move {
        svc.client().transfer(call, &access, id).await
    })
    .await;
    match read {
        Ok(Ok(t)) => Ok(Some(t)),
        Ok(Err(e @ AstraError::ClientRejected)) => Err(e.into()),
        Ok(Err(AstraError::NotFound { .. })) => {
            ctx.record(ItemOutcome::Skip);
            Ok(None)
        }
        Ok(Err(e)) => {
            ctx.record(ItemOutcome::Retry(format!("could not re-read transfer {id}: {e}")));
            Ok(None)
        }
        Err(e) if e.downcast_ref::<NoToken>().is_some() => {
            warn!(error = %format!("{e:#}"), "no access token: transfer not re-read");
            ctx.record(ItemOutcome::Skip);
            Ok(None)
        }
        Err(e) if classify(&e) == Status::Config => Err(e),
        Err(e) => {
            ctx.record(ItemOutcome::Retry(format!("no usable access token: {e:#}")));
            Ok(None)
        }
    }
}

/// Re-reads one watched transfer and acts on what it became. A transfer held past `stuck_after` gets its
/// `transfer_stuck` follow-up from what the mirror knows, even when it cannot be read (a dead grant).
#[instrument(name = "transfer", skip_all, fields(user_id = %w.user_id, transfer = %w.id))]
async fn check(ctx: &RunContext<'_>, svc: &Services, w: &Watched, stuck_after: TimeDelta) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let now = Utc::now();
    let still_pending = match read(ctx, svc, &w.user_id, &w.id).await? {
        Some(t) => {
            let u = mirror::upsert(db, &w.user_id, &t, now).await?;
            ctx.record(ItemOutcome::Done);
            ctx.tally("followups", i64::from(u.followups));
            if u.cleared {
                ctx.tally("cleared", 1);
            }
            t.status == TransferStatus::Pending
        }
        None => true,
    };
    let Some(held_since) = w.held_since.filter(|_| still_pending) else { return Ok(()) };
    if now - held_since > stuck_after {
        if outbox::store::insert(db, &stuck_message(w, held_since, now)).await? {
            ctx.tally("stuck_followups", 1);
        }
    } else {
        ctx.tally("still_held", 1);
    }
    Ok(())
}

/// Re-reads one landed transfer and schedules its next reading.
#[instrument(name = "transfer", skip_all, fields(user_id = %r.user_id, transfer = %r.id))]
async fn reread_landed(ctx: &RunContext<'_>, svc: &Services, r: &LandedDue) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let now = Utc::now();
    let Some(t) = read(ctx, svc, &r.user_id, &r.id).await? else {
        // Not read now: still due, tried again by the next run (until it leaves `watch_landed_for`).
        return Ok(());
    };
    let u = mirror::upsert(db, &r.user_id, &t, now).await?;
    ctx.record(ItemOutcome::Done);
    ctx.tally("landed_reread", 1);
    ctx.tally("followups", i64::from(u.followups));
    let next = (t.status == TransferStatus::Processed).then(|| mirror::next_recheck(r.landed_at, now)).flatten();
    mirror::set_recheck(db, &r.id, next).await?;
    Ok(())
}

fn stuck_message(w: &Watched, held_since: DateTime<Utc>, now: DateTime<Utc>) -> Message {
    Message::once(
        "transfer_stuck",
        &w.id,
        Some(&w.user_id),
        json!({
            "transfer_id": w.id,
            "destination_id": w.destination_id,
            "amount_cents": w.amount_cents,
            "astra_settlement_reason": w.settlement_reason,
            "held_since": held_since,
            "initiated": w.initiated_at,
        }),
        now,
    )
}

/// What re-checking an unfrozen card's held transfers did.
pub(crate) enum Recheck {
    NothingHeld,
    /// Not now: the next `reprocessing-check` run will (`why` says why not now).
    Later {
        held: usize,
        why: &'static str,
    },
    Done {
        held: usize,
        details: serde_json::Value,
    },
}

/// Re-reads the transfers a card held, right after it is unfrozen (left for the next run without Astra
/// credentials or without the job configured).
pub(crate) async fn recheck_card(worker: &Worker, card: &str) -> anyhow::Result<Recheck> {
    let held = mirror::watched(&worker.store, Some(card)).await?;
    if held.is_empty() {
        return Ok(Recheck::NothingHeld);
    }
    let Ok(svc) = worker.services() else {
        return Ok(Recheck::Later { held: held.len(), why: "the next reprocessing-check run re-checks them" });
    };
    let Some(job) = worker.settings.job(JobName::ReprocessingCheck) else {
        return Ok(Recheck::Later { held: held.len(), why: "reprocessing-check is not configured; not re-checked" });
    };
    let JobParams::ReprocessingCheck(p) = &job.params else { unreachable!("the job's own parameters") };
    let ctx = RunContext::adhoc(worker, job);
    for w in &held {
        check(&ctx, &svc, w, p.stuck_after).await?;
    }
    Ok(Recheck::Done { held: held.len(), details: ctx.details() })
}
