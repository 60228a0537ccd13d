//! The jobs: each is a plain `async fn` over a [`RunContext`], called only through the runner; one file per
//! job, and `grant_work` for what rotation and the sweep share.

mod context;
mod grant_work;
mod inbound_volume;
mod paced;
pub(crate) mod reprocessing_check;
mod retention;
mod stale_sweep;
mod test_hold;
mod token_rotation;
mod transfer_sync;
mod transfers;

pub(crate) use context::{ItemOutcome, RunContext};

use crate::{
    app::Worker,
    config::{JobName, JobParams},
    outbox,
};

/// Jobs that call Astra or read tokens (they need the secrets).
pub(crate) fn needs_services(job: JobName) -> bool {
    !matches!(job, JobName::TestHold | JobName::Retention)
}

/// Jobs whose items are claimed one by one, so several processes can share one slot.
pub(crate) fn splits_work(job: JobName) -> bool {
    matches!(job, JobName::TokenRotation)
}

/// Runs the body of the job the context names, then delivers whatever it (or earlier runs) left in the outbox.
pub(crate) async fn execute(ctx: &RunContext<'_>) -> anyhow::Result<()> {
    match &ctx.job.params {
        JobParams::TestHold { items, hold } => return test_hold::run(ctx, *items, *hold).await,
        JobParams::TokenRotation(p) => token_rotation::run(ctx, p).await?,
        JobParams::StaleAuthorizationSweep(p) => stale_sweep::run(ctx, p).await?,
        JobParams::InboundVolume(p) => inbound_volume::run(ctx, p).await?,
        JobParams::TransferSync(p) => transfer_sync::run(ctx, p).await?,
        JobParams::ReprocessingCheck(p) => reprocessing_check::run(ctx, p).await?,
        JobParams::Retention(p) => return retention::run(ctx, p).await,
    }
    if !ctx.dry_run && !ctx.worker.outbox_in_background.load(std::sync::atomic::Ordering::Relaxed) {
        let svc = ctx.worker.services()?;
        let d =
            outbox::deliver_if_configured(svc.deliverer.as_ref(), &ctx.worker.store, outbox::Bound::ForARun).await?;
        ctx.tally("outbox_delivered", d.delivered as i64);
        ctx.tally("outbox_failed", d.failed as i64);
        ctx.tally("outbox_left", i64::from(d.left));
        ctx.tally("outbox_endpoint_down", i64::from(d.endpoint_down_until.is_some()));
    }
    Ok(())
}

/// How often the background deliverer looks at the outbox.
const OUTBOX_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts delivering the outbox in the background until shutdown (the daemon and the service: job runs then
/// deliver nothing themselves, so a dead endpoint slows no run). At most one per process; should the task end
/// for any reason, job runs deliver again.
pub(crate) fn deliver_outbox_in_background(worker: std::sync::Arc<Worker>) {
    use std::sync::atomic::Ordering;
    if worker.outbox_in_background.swap(true, Ordering::SeqCst) {
        return;
    }
    /// Gives delivery back to the job runs when the task ends, even by a panic.
    struct Handback(std::sync::Arc<Worker>);
    impl Drop for Handback {
        fn drop(&mut self) {
            self.0.outbox_in_background.store(false, Ordering::SeqCst);
        }
    }
    tokio::spawn(async move {
        let guard = Handback(worker);
        let worker = &guard.0;
        loop {
            match worker.services() {
                Ok(svc) => {
                    let pass =
                        outbox::deliver_if_configured(svc.deliverer.as_ref(), &worker.store, outbox::Bound::Everything);
                    tokio::select! {
                        r = pass => if let Err(e) = r {
                            tracing::warn!(error = %format!("{e:#}"), "outbox delivery pass failed; will retry");
                        },
                        _ = worker.shutdown.triggered() => return,
                    }
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "no outbox deliverer"),
            }
            tokio::select! {
                _ = worker.shutdown.triggered() => return,
                _ = tokio::time::sleep(OUTBOX_EVERY) => {}
            }
        }
    });
}
