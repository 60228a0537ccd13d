//! Work on one grant that rotation and the sweep share: refresh it under its lease and count what happened,
//! and probe grants whose refresh died between Astra's answer and the commit.

use chrono::{TimeDelta, Utc};
use tracing::{instrument, warn};

use super::{ItemOutcome, RunContext};
use crate::{
    app::Services,
    tokens::{self, Refreshed, episodes::Opened, intents, store},
};

/// Refreshes one grant whose lease `ctx.run_id` holds (only if still at `seen_version`, when given), records
/// the outcome, releases the lease. After a
/// rotation, reads the user's status from Astra when it was last read more than `read_status` ago (`None`:
/// not at all). A grant whose tokens cannot be opened is flagged and counted as a retry; `Err` only for what
/// the caller decides on (the store failing before Astra was called, rejected client credentials).
#[instrument(name = "grant", skip_all, fields(user_id = %user_id))]
pub(super) async fn refresh_one(
    ctx: &RunContext<'_>,
    svc: &Services,
    user_id: &str,
    seen_version: Option<i64>,
    read_status: Option<TimeDelta>,
) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let call = ctx.call(user_id);
    let r = tokens::refresh_leased(db, &svc.tokens, call, user_id, &ctx.run_id, seen_version).await;
    let r = match r {
        Err(e) if e.downcast_ref::<tokens::Unreadable>().is_some() => {
            ctx.tally("unreadable", 1);
            ctx.record(ItemOutcome::Retry(format!("{e:#}")));
            return Ok(());
        }
        r => r?,
    };
    let outcome = match r {
        Refreshed::Rotated { access, user_status_at, .. } => {
            ctx.tally("rotated", 1);
            let stale = |max_age| user_status_at.is_none_or(|at| at < Utc::now() - max_age);
            if read_status.is_some_and(stale) {
                ctx.tally("user_status_read", 1);
                let read_at = Utc::now();
                match svc.client().user(call, &access).await {
                    Ok(u) => store::set_user_status(db, user_id, u.status, read_at).await?,
                    Err(e) => warn!(error = %e, "could not read the user's status after rotation"),
                }
            }
            ItemOutcome::Done
        }
        Refreshed::Adopted => {
            ctx.tally("adopted", 1);
            ItemOutcome::Done
        }
        Refreshed::Dead { reason, opened } => {
            ctx.tally(&format!("dead_{}", reason.as_str()), 1);
            ctx.tally(opened_figure(opened), 1);
            ItemOutcome::Done
        }
        Refreshed::Failed { detail } => ItemOutcome::Retry(format!("grant not refreshed: {detail}")),
        Refreshed::Inactive => ItemOutcome::Skip,
        Refreshed::NotLeased => {
            ctx.tally("lease_taken_over", 1);
            ItemOutcome::Skip
        }
    };
    ctx.record(outcome);
    Ok(())
}

/// The run figure that counts what opening an episode did.
pub(super) fn opened_figure(opened: Opened) -> &'static str {
    match opened {
        Opened::Episode => "episodes_opened",
        Opened::AlreadyOpen => "episodes_already_open",
        Opened::UserSuspended => "suspended_followups",
        Opened::Superseded => "superseded",
    }
}

/// Probes every grant with an orphaned refresh intent (a process died mid-refresh): refreshing with the stored
/// token either succeeds (healthy) or is rejected (the rotation was applied, its answer lost: an episode now).
pub(super) async fn resolve_orphans(ctx: &RunContext<'_>, svc: &Services) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let lease = ctx.worker.settings.runner.claim_lease;
    for user_id in intents::orphaned_intents(db, Utc::now()).await? {
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
            refresh_one(ctx, svc, &user_id, None, None).await?;
        }
    }
    Ok(())
}
