//! `token-rotation` (weekly): rotates every active grant whose refresh token would expire before the next
//! slot plus a safety margin, so a second run in the same week finds nothing to do. Grants are claimed in
//! batches (several processes on PostgreSQL share them) and refreshed concurrently under the shared limiter.

use chrono::{TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};

use super::RunContext;
use super::grant_work::{refresh_one, resolve_orphans};
use crate::{config::TokenRotationParams, tokens::store};

pub(super) async fn run(ctx: &RunContext<'_>, p: &TokenRotationParams) -> anyhow::Result<()> {
    let result = rotate_due(ctx, p).await;
    // However the run ends, the grants it claimed are free for the next one.
    store::release_all(&ctx.worker.store, &ctx.run_id).await?;
    result
}

async fn rotate_due(ctx: &RunContext<'_>, p: &TokenRotationParams) -> anyhow::Result<()> {
    let svc = ctx.worker.services()?;
    let db = &ctx.worker.store;
    resolve_orphans(ctx, &svc).await?;

    let next = ctx.job.schedule.next_after(ctx.slot).unwrap_or(ctx.slot + TimeDelta::days(7));
    let due_before = next + p.safety_margin;
    ctx.tally("due_before_unix", due_before.timestamp());
    let lease = ctx.worker.settings.runner.claim_lease;

    if ctx.dry_run {
        let due = store::active_expiring_before(db, due_before, i64::MAX).await?;
        ctx.tally("would_rotate", due.len() as i64);
        return Ok(());
    }
    while !ctx.stopping() {
        let now = Utc::now();
        let batch =
            store::claim_due(db, &ctx.run_id, &ctx.work_mark, due_before, now + lease, now, i64::from(p.batch_size))
                .await?;
        if batch.is_empty() {
            break;
        }
        futures::stream::iter(batch)
            .map(Ok::<_, anyhow::Error>)
            .try_for_each_concurrent(p.concurrency as usize, |user_id| {
                let svc = svc.clone();
                async move {
                    if ctx.stopping() {
                        // Claimed but not started: give the lease back for the next run.
                        store::release(&ctx.worker.store, &user_id, &ctx.run_id).await?;
                        ctx.skipped(1);
                        return Ok(());
                    }
                    refresh_one(ctx, &svc, &user_id, p.read_user_status).await
                }
            })
            .await?;
    }
    Ok(())
}
