//! `reprocessing-check` (daily): re-reads every transfer Astra debited but could not credit, records what
//! changed, notes when a held one clears, and raises one `transfer_stuck` follow-up for a transfer held past
//! `stuck_after`. It also re-lists the transfers of users whose transfers landed within `watch_landed_for`
//! (one paged listing per user, not one call per transfer): a failure after landing produces its follow-ups
//! through the mirror's upsert, exactly once.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use tracing::warn;

use crate::{
    astra::{AstraError, Call, TransferStatus},
    config::ReprocessingCheckParams,
    jobs::inbound_volume,
    mirror::{self, Watched},
    outbox::{self, Message},
    runner::RunContext,
    services::Services,
    tokens,
};

pub async fn run(ctx: &RunContext<'_>, p: &ReprocessingCheckParams) -> anyhow::Result<()> {
    let svc = ctx.worker.services()?;
    let db = &ctx.worker.store;
    let stuck_after = TimeDelta::from_std(p.stuck_after).unwrap_or(TimeDelta::hours(72));
    let landed_since = Utc::now() - TimeDelta::from_std(p.watch_landed_for).unwrap_or(TimeDelta::days(5));
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
        check(ctx, &svc, &w, stuck_after).await?;
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
pub async fn check(ctx: &RunContext<'_>, svc: &Services, w: &Watched, stuck_after: TimeDelta) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let call = Call::of(ctx, &w.user_id);
    let id = w.id.as_str();
    let read = tokens::with_access(db, svc, &ctx.worker.settings, call, &w.user_id, |access| async move {
        svc.client.transfer(call, &access, id).await
    })
    .await;
    let t = match read {
        Ok(Ok(t)) => t,
        Ok(Err(e @ AstraError::ClientRejected)) => return Err(e.into()),
        Ok(Err(AstraError::NotFound { .. })) => {
            ctx.skipped(1);
            return Ok(());
        }
        Ok(Err(e)) => {
            warn!(transfer = id, error = %e, "could not re-read the transfer; left for the next run");
            ctx.failed(1);
            return Ok(());
        }
        Err(e) if crate::exit::classify(&e) == crate::exit::Status::Config => return Err(e),
        Err(e) => {
            warn!(transfer = id, error = %format!("{e:#}"), "no usable access token; transfer not re-read");
            ctx.skipped(1);
            return Ok(());
        }
    };
    let now = Utc::now();
    let u = mirror::upsert(db, &w.user_id, &t, now).await?;
    ctx.processed(1);
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

fn stuck_message(
    user_id: &str,
    t: &crate::astra::Transfer,
    held_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Message {
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
