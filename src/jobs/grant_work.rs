//! Work on one grant that rotation and the sweep share: refresh it under its lease and count what happened,
//! and probe grants whose refresh died between Astra's answer and the commit.

use chrono::Utc;
use tracing::warn;

use crate::{
    astra::Call,
    runner::RunContext,
    services::Services,
    tokens::{self, Refreshed, store},
};

/// Refreshes one grant whose lease `ctx.run_id` holds, records the outcome, releases the lease.
pub async fn refresh_one(
    ctx: &RunContext<'_>,
    svc: &Services,
    user_id: &str,
    read_user_status: bool,
) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let call = Call::of(ctx, user_id);
    let r = tokens::refresh_leased(db, svc, &ctx.worker.settings, call, user_id, &ctx.run_id).await;
    store::release(db, user_id, &ctx.run_id).await?;
    match r? {
        Refreshed::Rotated { access } => {
            ctx.processed(1);
            ctx.tally("rotated", 1);
            if read_user_status {
                match svc.client.user(call, &access).await {
                    Ok(u) => store::set_user_status(db, user_id, u.status.as_str(), Utc::now()).await?,
                    Err(e) => warn!(user_id, error = %e, "could not read the user's status after rotation"),
                }
            }
        }
        Refreshed::Adopted => {
            ctx.processed(1);
            ctx.tally("adopted", 1);
        }
        Refreshed::Dead { reason, opened } => {
            ctx.processed(1);
            ctx.tally(&format!("dead_{}", reason.as_str()), 1);
            ctx.tally(
                match opened {
                    crate::episodes::Opened::Episode => "episodes_opened",
                    crate::episodes::Opened::AlreadyOpen => "episodes_already_open",
                    crate::episodes::Opened::UserSuspended => "suspended_followups",
                },
                1,
            );
        }
        Refreshed::Failed { detail } => {
            warn!(user_id, error = %detail, "grant not refreshed; left for the next run");
            ctx.failed(1);
        }
        Refreshed::Inactive => ctx.skipped(1),
    }
    Ok(())
}

/// Probes every grant with an orphaned refresh intent (a process died mid-refresh): refreshing with the stored
/// token either succeeds (healthy) or is rejected (the rotation was applied, its answer lost: an episode now).
pub async fn resolve_orphans(ctx: &RunContext<'_>, svc: &Services) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let lease =
        chrono::TimeDelta::from_std(ctx.worker.settings.runner.claim_lease).unwrap_or(chrono::TimeDelta::minutes(2));
    for user_id in store::orphaned_intents(db, Utc::now()).await? {
        if ctx.stopping() {
            break;
        }
        let now = Utc::now();
        if ctx.dry_run {
            ctx.tally("would_probe", 1);
            continue;
        }
        if store::try_lease(db, &user_id, &ctx.run_id, now + lease, now).await? {
            ctx.tally("probed", 1);
            refresh_one(ctx, svc, &user_id, false).await?;
        }
    }
    Ok(())
}
