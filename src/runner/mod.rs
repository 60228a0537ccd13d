//! The one runner every job goes through, from `--run-once`, the daemon and tests alike: pick the slots
//! (`slots`), claim each in the ledger, run the job's body under a heartbeat and the shutdown grace period
//! (`heartbeat`), and record how it ended (`report`).

mod heartbeat;
mod report;
mod slots;

use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tracing::{Instrument, error, info, info_span, warn};

pub use report::{RunOptions, RunSummary, SlotReport, SlotResult};

use crate::{
    app::Worker,
    config::{JobName, JobSettings},
    domain::time::utc_seconds,
    exit::classify,
    failure::{Failure, Status},
    jobs::{self, RunContext},
    store::ledger::{self, Claim, Claimant, Outcome, RunStart},
};

/// Runs `job` once: the latest slot (or those its catch-up policy asks for), or the slot named in `opts`.
pub async fn run_job(
    worker: &Worker,
    job: JobName,
    opts: &RunOptions,
    now: DateTime<Utc>,
) -> anyhow::Result<RunSummary> {
    let settings = worker
        .settings
        .job_settings(job)
        .ok_or_else(|| Failure::config(format!("job {job} is not configured in jobs.toml ([jobs.{job}])")))?;
    if jobs::needs_services(job) {
        worker.checked_services().await?;
    }
    let mut summary = RunSummary::default();
    if !settings.enabled && opts.slot.is_none() {
        info!(job = %job, "job is disabled in jobs.toml; nothing to do");
        return Ok(summary);
    }
    for slot in slots::to_run(worker, &settings, opts, now).await? {
        if worker.shutdown.is_triggered() {
            break;
        }
        let report = run_slot(worker, &settings, slot, opts).await?;
        let stop = matches!(report.result, SlotResult::Ran { outcome: Outcome::Failed | Outcome::Interrupted, .. });
        summary.reports.push(report);
        if stop {
            // A failed slot stops catch-up: later slots would likely fail the same way.
            break;
        }
    }
    Ok(summary)
}

/// Claims and runs one slot.
pub async fn run_slot(
    worker: &Worker,
    job: &JobSettings,
    slot: DateTime<Utc>,
    opts: &RunOptions,
) -> anyhow::Result<SlotReport> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let name = job.name.as_str();
    let lease = worker.settings.runner.claim_lease;
    let report = |result| SlotReport { job: job.name, slot, result };

    // The claim winner owns the slot; for jobs whose items are claimed one by one, other processes join it.
    let mut owns_claim = false;
    let mut attempt = 0;
    if !opts.dry_run {
        let who = Claimant { run_id: &run_id, owner: &worker.owner, lease, force: opts.force };
        match ledger::claim(&worker.store, name, slot, &who).await.context("claiming the slot")? {
            Claim::AlreadySucceeded { run_id } => {
                info!(job = name, slot = %slot, previous_run = %run_id, "slot already ran; nothing to do (use --force to run it again)");
                return Ok(report(SlotResult::AlreadyRan { run_id }));
            }
            Claim::HeldElsewhere { owner, attempt: a, .. } if jobs::splits_work(job.name) => {
                info!(job = name, slot = %slot, owner = %owner, "slot is held by another process; joining it to share its items");
                attempt = a;
            }
            Claim::HeldElsewhere { owner, .. } => {
                info!(job = name, slot = %slot, owner = %owner, "slot is being worked by another process; nothing to do");
                return Ok(report(SlotResult::HeldElsewhere { owner }));
            }
            Claim::Acquired { attempt: a, took_over } => {
                if took_over {
                    warn!(job = name, slot = %slot, attempt = a, "took over a claim whose lease expired");
                }
                owns_claim = true;
                attempt = a;
            }
        }
        let start = RunStart {
            run_id: &run_id,
            job: name,
            slot,
            owner: &worker.owner,
            forced: opts.force,
            rate_configured: i64::from(worker.limiter.rate()),
        };
        ledger::start_run(&worker.store, &start).await.context("recording the run start")?;
    }

    let stop = worker.shutdown.child_token();
    let work_mark = format!("{name}@{}#{attempt}", slot.to_rfc3339());
    let ctx = RunContext::new(worker, job, slot, run_id.clone(), opts.dry_run, work_mark, stop.clone());
    let span = info_span!("run", run_id = %run_id, job = name, slot = %utc_seconds(slot));
    info!(parent: &span, forced = opts.force, dry_run = opts.dry_run, "run started");
    let started = Instant::now();

    let heartbeat =
        owns_claim.then(|| heartbeat::spawn(worker.store.clone(), name, slot, &run_id, lease, stop.clone()));
    // Present (dividing the Astra budget) only while calling Astra.
    let presence = if opts.dry_run || !jobs::needs_services(job.name) {
        None
    } else {
        Some(heartbeat::spawn_presence(worker).await)
    };
    let result = heartbeat::run_with_grace(&ctx).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    // The run's Astra calls are in the call log by the time its end is, unless the store is too slow to take
    // them; the claim's heartbeat still runs meanwhile.
    if tokio::time::timeout(crate::astra::FLUSH_WITHIN, worker.flush_calls()).await.is_err() {
        warn!(parent: &span, "the run's Astra calls were not all in the call log within {}s; they follow", crate::astra::FLUSH_WITHIN.as_secs());
    }
    for h in heartbeat.into_iter().chain(presence) {
        h.abort();
    }

    let counts = ctx.counts();
    let details = ctx.details();
    let interrupted = worker.shutdown.is_triggered() || (stop.is_cancelled() && result.is_ok());
    let (outcome, error) = match &result {
        Err(e) if interrupted => (Outcome::Interrupted, Some(format!("{e:#}"))),
        Err(e) => (Outcome::Failed, Some(format!("{e:#}"))),
        Ok(()) if interrupted => (Outcome::Interrupted, Some(interrupt_reason(worker))),
        Ok(()) if counts.failed > 0 => (Outcome::Partial, None),
        Ok(()) => (Outcome::Succeeded, None),
    };
    let rate = if elapsed.as_secs_f64() > 0.0 { counts.requests as f64 / elapsed.as_secs_f64() } else { 0.0 };
    let _g = span.enter();
    if let Some(e) = &error {
        error!(outcome = outcome.as_str(), error = %e, "run did not complete");
    }
    info!(
        outcome = outcome.as_str(),
        processed = counts.processed,
        failed = counts.failed,
        skipped = counts.skipped,
        requests = counts.requests,
        rate_achieved = format!("{rate:.1}"),
        rate_configured = worker.limiter.rate(),
        duration_ms = elapsed.as_millis() as u64,
        details = %details,
        "run finished"
    );
    drop(_g);

    if opts.dry_run {
        result?;
        return Ok(report(SlotResult::DryRun { counts, details }));
    }
    ledger::finish_run(&worker.store, &run_id, outcome, &counts, &details, error.as_deref())
        .await
        .context("recording the run's end")?;
    match result {
        // Errors that know their status (configuration, unreachable) decide the exit code.
        Err(e) if matches!(classify(&e), Status::Config | Status::Temporary) => Err(e),
        _ => Ok(report(SlotResult::Ran { run_id, outcome, counts, details, error })),
    }
}

fn interrupt_reason(worker: &Worker) -> String {
    match worker.shutdown.reason() {
        Some(sig) => Failure::Interrupted(sig).to_string(),
        None => "the slot's claim was taken over by another process".into(),
    }
}
