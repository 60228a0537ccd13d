//! Which slots a `--run-once` works on: the slot named, or the latest one, or every missed one the job's
//! catch-up policy asks for within `max_lateness`.

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use tracing::{info, warn};

use super::RunOptions;
use crate::{
    app::Worker,
    config::{CatchUp, JobSettings},
    failure::Failure,
    store::ledger,
};

/// Maximum slots one catch-up runs in one go.
const CATCH_UP_LIMIT: usize = 1000;

pub(super) async fn to_run(
    worker: &Worker,
    job: &JobSettings,
    opts: &RunOptions,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let s = &job.schedule;
    if let Some(slot) = opts.slot {
        if !s.is_slot(slot) {
            let prev = s.latest_at_or_before(slot).map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into());
            let next = s.next_after(slot).map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into());
            return Err(Failure::config(format!(
                "--slot {}: not a slot of {} ({} in {}); the nearest are {prev} and {next}",
                slot.to_rfc3339(),
                job.name,
                s.expr(),
                s.zone().name()
            )));
        }
        // A slot run before its time would stand as its success: the real run would find it done, and `health`
        // would call the job fresh until then.
        if slot > now {
            return Err(Failure::config(format!(
                "--slot {}: in the future (now is {}); a slot can run once its time has come",
                slot.to_rfc3339(),
                now.to_rfc3339()
            )));
        }
        return Ok(vec![slot]);
    }
    let window_start = now.checked_sub_signed(job.max_lateness).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let Some(latest) = s.latest_at_or_before(now) else {
        info!(job = %job.name, "no slot at or before now; nothing to do");
        return Ok(vec![]);
    };
    if latest < window_start {
        warn!(job = %job.name, slot = %latest, "latest slot is older than max_lateness; missed, not run");
        return Ok(vec![]);
    }
    match job.catch_up {
        CatchUp::Latest => Ok(vec![latest]),
        CatchUp::All => {
            let all = s.slots_between(window_start - TimeDelta::seconds(1), now, CATCH_UP_LIMIT);
            let done = ledger::succeeded_slots(&worker.store, job.name.as_str(), window_start, now)
                .await
                .context("reading the slot ledger")?;
            Ok(all.into_iter().filter(|t| opts.force && *t == latest || !done.contains(t)).collect())
        }
    }
}
