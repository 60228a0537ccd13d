//! `token-rotation` (weekly): rotates every active grant whose refresh token would expire before the next
//! slot plus a safety margin, so a second run in the same week finds nothing to do. Grants are claimed in
//! batches (several processes on PostgreSQL share them) and refreshed at the pace the shared limiter sets.
//! Claimed grants not started when the run stops are released with the rest.

use chrono::{TimeDelta, Utc};

use super::{
    RunContext,
    grant_work::{refresh_one, resolve_orphans},
    paced,
};
use crate::{config::TokenRotationParams, tokens::store};

pub(super) async fn run(ctx: &RunContext<'_>, p: &TokenRotationParams) -> anyhow::Result<()> {
    let result = rotate_due(ctx, p).await;
    // However the run ends, the grants it claimed are free for the next one.
    store::release_all(&ctx.worker.store, &ctx.run_id).await?;
    // Housekeeping: failing it neither hides the run's own result nor fails a run that did its work.
    if !ctx.dry_run {
        match store::forget_old_fingerprints(&ctx.worker.store, Utc::now()).await {
            Ok(0) => {}
            Ok(n) => ctx.tally("fingerprints_forgotten", n as i64),
            Err(e) => {
                tracing::warn!(error = %e, "could not forget old refresh-token fingerprints; the next run tries again")
            }
        }
    }
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
    let ceiling = p.concurrency;
    let read_status = p.read_user_status.then_some(p.user_status_max_age);
    let next_batch = || async {
        let now = Utc::now();
        let limit = i64::from(p.batch_size);
        Ok(store::claim_due(db, &ctx.run_id, &ctx.work_mark, due_before, now + lease, now, limit).await?)
    };
    paced::run(ctx, ceiling, next_batch, |user_id: String| {
        let svc = svc.clone();
        async move { refresh_one(ctx, &svc, &user_id, None, read_status).await }
    })
    .await
}
