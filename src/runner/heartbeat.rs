//! Keeping a claimed slot alive while its run works (a heartbeat that renews the lease, and stops the run
//! when another process took the claim over), and the grace period after a shutdown signal.

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    jobs::{self, RunContext},
    store::{Store, ledger},
};

/// Runs the job's body; after a shutdown signal, gives in-flight work the grace period, then abandons it.
pub(super) async fn run_with_grace(ctx: &RunContext<'_>) -> anyhow::Result<()> {
    let body = jobs::execute(ctx);
    tokio::pin!(body);
    tokio::select! {
        r = &mut body => r,
        _ = ctx.worker.shutdown.triggered() => {
            let grace = ctx.worker.settings.runner.grace_period;
            match tokio::time::timeout(grace, &mut body).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!(
                    "in-flight work did not finish within the grace period of {}s; abandoned",
                    grace.as_secs()
                )),
            }
        }
    }
}

pub(super) fn spawn(
    store: Store,
    job: &str,
    slot: DateTime<Utc>,
    run_id: &str,
    lease: TimeDelta,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (job, run_id) = (job.to_string(), run_id.to_string());
    let every = (lease / 3).to_std().unwrap_or(std::time::Duration::from_secs(10));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match ledger::renew(&store, &job, slot, &run_id, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(job, slot = %slot, run_id, "lost the slot's claim to another process; stopping");
                    stop.cancel();
                    return;
                }
                Err(e) => warn!(job, slot = %slot, error = %e, "could not renew the slot's lease; will retry"),
            }
        }
    })
}
