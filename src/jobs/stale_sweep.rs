//! `stale-authorization-sweep` (daily): catches what rotation let slip. Orphaned refreshes are probed; grants
//! whose refresh token already expired open an `expired` episode (no call can save them); grants within the
//! danger window get one rescue refresh; unanswered episodes are prompted again.

use chrono::{TimeDelta, Utc};

use super::{
    ItemOutcome, RunContext,
    grant_work::{opened_figure, refresh_one, resolve_orphans},
};
use crate::{
    config::StaleAuthorizationSweepParams,
    tokens::{
        self,
        episodes::{self, DeadGrant, Reason},
        store,
    },
};

pub(super) async fn run(ctx: &RunContext<'_>, p: &StaleAuthorizationSweepParams) -> anyhow::Result<()> {
    let result = sweep(ctx, p).await;
    store::release_all(&ctx.worker.store, &ctx.run_id).await?;
    result
}

async fn sweep(ctx: &RunContext<'_>, p: &StaleAuthorizationSweepParams) -> anyhow::Result<()> {
    let svc = ctx.worker.services()?;
    let db = &ctx.worker.store;
    resolve_orphans(ctx, &svc).await?;

    let now = Utc::now();
    let lease = ctx.worker.settings.runner.claim_lease;
    for user_id in store::active_expiring_before(db, now + p.danger_window, i64::MAX).await? {
        if ctx.stopping() {
            break;
        }
        let g = match tokens::load(db, &svc.tokens.keyring, &user_id).await {
            Ok(Some(g)) => g,
            Ok(None) => continue,
            Err(e) if e.downcast_ref::<tokens::Unreadable>().is_some() => {
                ctx.tally("unreadable", 1);
                ctx.record(ItemOutcome::Retry(format!("{e:#}")));
                continue;
            }
            Err(e) => return Err(e),
        };
        let expired = g.refresh_expires_at <= Utc::now();
        if ctx.dry_run {
            ctx.tally(if expired { "would_open_expired" } else { "would_rescue" }, 1);
            continue;
        }
        let t = Utc::now();
        if !store::try_lease(db, &user_id, &ctx.run_id, t + lease, t).await? {
            continue;
        }
        if expired {
            let dead = DeadGrant {
                user_id: &user_id,
                version: g.version,
                owner: &ctx.run_id,
                phone: g.phone.as_deref(),
                user_status: g.user_status,
            };
            let opened = episodes::open(db, &dead, Reason::Expired, &svc.tokens.link, Utc::now()).await?;
            store::release(db, &user_id, &ctx.run_id).await?;
            ctx.processed(1);
            ctx.tally("dead_expired", 1);
            ctx.tally(opened_figure(opened), 1);
        } else {
            ctx.tally("rescue_attempts", 1);
            refresh_one(ctx, &svc, &user_id, Some(g.version), Some(TimeDelta::zero())).await?;
        }
    }
    if !ctx.dry_run {
        let n = episodes::reprompt_unanswered(db, p.reprompt_after, &svc.tokens.link, Utc::now()).await?;
        ctx.tally("reprompts", n as i64);
    }
    Ok(())
}
