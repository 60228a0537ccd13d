//! `reprocessing-check` (daily): re-reads every transfer Astra debited but could not credit, records what
//! changed, notes when a held one clears, and raises one `transfer_stuck` follow-up for a transfer held past
//! `stuck_after`. It also re-lists the transfers of users whose transfers landed within `watch_landed_for`
//! (one paged listing per user, not one call per transfer): a failure after landing produces its follow-ups
//! through the mirror's upsert, exactly once.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use tracing::{instrument, warn};

use super::{ItemOutcome, RunContext, inbound_volume};
use crate::{
    app::{Services, Worker},
    astra::{AstraError, Transfer, TransferStatus},
    config::{JobName, JobParams, ReprocessingCheckParams},
    exit::classify,
    failure::Status,
    outbox::{self, Message},
    reconcile::mirror::{self, Watched},
    tokens,
};

pub(super) async fn run(ctx: &RunContext<'_>, p: &ReprocessingCheckParams) -> anyhow::Result<()> {
    let svc = ctx.worker.services()?;
    let db = &ctx.worker.store;
    let landed_since = Utc::now() - p.watch_landed_for;
    let held = mirror::watched(db, None).await?;
    let landed_users = mirror::users_with_landed_since(db, landed_since).await?;
    if ctx.dry_run {
        ctx.tally("would_check", held.len() as i64);
        ctx.tally("would_relist_users", landed_users.len() as i64);
        return Ok(());
    }
    for w in held {
        if ctx.stopping() {
            break;
        }
        check(ctx, &svc, &w, p.stuck_after).await?;
    }
    for user in landed_users {
        if ctx.stopping() {
            break;
        }
        inbound_volume::mirror_user(ctx, &svc, &user, landed_since, LIST_PAGE).await?;
    }
    Ok(())
}

/// Page size of the re-listing.
const LIST_PAGE: u32 = 100;

/// Re-reads one watched transfer and acts on what it became.
#[instrument(name = "transfer", skip_all, fields(user_id = %w.user_id, transfer = %w.id))]
async fn check(ctx: &RunContext<'_>, svc: &Services, w: &Watched, stuck_after: TimeDelta) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let call = ctx.call(&w.user_id);
    let id = w.id.as_str();
    let read = tokens::with_access(db, &svc.tokens, call, &w.user_id, |access| async move {
        svc.client().transfer(call, &access, id).await
    })
    .await;
    let t = match read {
        Ok(Ok(t)) => t,
        Ok(Err(e @ AstraError::ClientRejected)) => return Err(e.into()),
        Ok(Err(AstraError::NotFound { .. })) => {
            ctx.record(ItemOutcome::Skip);
            return Ok(());
        }
        Ok(Err(e)) => {
            ctx.record(ItemOutcome::Retry(format!("could not re-read transfer {id}: {e}")));
            return Ok(());
        }
        Err(e) if classify(&e) == Status::Config => return Err(e),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "no usable access token; transfer not re-read");
            ctx.record(ItemOutcome::Skip);
            return Ok(());
        }
    };
    let now = Utc::now();
    let u = mirror::upsert(db, &w.user_id, &t, now).await?;
    ctx.record(ItemOutcome::Done);
    ctx.tally("followups", i64::from(u.followups));
    if u.cleared {
        ctx.tally("cleared", 1);
    }
    let held_for = now - w.held_since.unwrap_or(w.initiated_at);
    if t.status == TransferStatus::Pending && w.held_since.is_some() && held_for > stuck_after {
        let msg = stuck_message(&w.user_id, &t, w.held_since, now);
        if outbox::store::insert(db, &msg).await? {
            ctx.tally("stuck_followups", 1);
        }
    } else if t.status == TransferStatus::Pending && w.held_since.is_some() {
        ctx.tally("still_held", 1);
    }
    Ok(())
}

fn stuck_message(user_id: &str, t: &Transfer, held_since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Message {
    Message::once(
        "transfer_stuck",
        &t.id,
        Some(user_id),
        json!({
            "transfer_id": t.id,
            "destination_id": t.destination_id,
            "amount_cents": t.amount.0,
            "astra_settlement_reason": t.astra_settlement_reason,
            "held_since": held_since,
            "initiated": t.initiated,
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
