//! Keeping a claimed slot alive while its run works (a heartbeat that renews the lease, and stops the run
//! when another process took the claim over), the process's presence among those sharing Astra's request
//! budget, and the grace period after a shutdown signal.

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    app::Worker,
    astra::RequestLimiter,
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

/// How often a running process renews its presence, and how long a presence lasts without renewal.
const PRESENCE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const PRESENCE_TTL: TimeDelta = TimeDelta::seconds(30);

/// Marks this process present among those sharing the request budget and takes its share; a failure to do so
/// keeps the share last known (logged).
async fn present(store: &Store, instance: &str, limiter: &RequestLimiter) {
    let now = Utc::now();
    match ledger::presence(store, instance, now + PRESENCE_TTL, now).await {
        Ok(n) => limiter.set_share(u64::try_from(n).unwrap_or(1)),
        Err(e) => warn!(error = %e, "could not record this process's share of the request budget"),
    }
}

/// Takes this process's share of the request budget now, and keeps it current while a run works.
pub(super) async fn spawn_presence(worker: &Worker) -> tokio::task::JoinHandle<()> {
    present(&worker.store, &worker.instance, &worker.limiter).await;
    let (store, instance, limiter) = (worker.store.clone(), worker.instance.clone(), worker.limiter.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PRESENCE_EVERY).await;
            present(&store, &instance, &limiter).await;
        }
    })
}
