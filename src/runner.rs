//! The one runner every job goes through, from `--run-once`, the daemon and tests alike: pick the slots,
//! claim each in the ledger, run the job's body under a heartbeat and the shutdown grace period, and record
//! how it ended.

mod shutdown;

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

pub use shutdown::Shutdown;

use crate::{
    config::{CatchUp, JobName, JobSettings, Settings},
    exit::{Failure, Status, classify},
    jobs,
    limiter::RequestLimiter,
    services::Services,
    store::{
        Store,
        ledger::{self, Claim, Claimant, Counts, Outcome, RunStart},
    },
};

/// What every run in this process shares: settings, store, limiter, shutdown signal, and the services built
/// from secrets (loaded on first use, so jobs that need none run without them).
pub struct Worker {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub limiter: Arc<RequestLimiter>,
    pub shutdown: Shutdown,
    /// `host:pid`, recorded on claims and runs.
    pub owner: String,
    services: OnceLock<Arc<Services>>,
}

impl Worker {
    pub fn new(settings: Settings, store: Store) -> Worker {
        let limiter = RequestLimiter::new(settings.astra.requests_per_second, settings.astra.burst);
        Worker {
            settings: Arc::new(settings),
            store,
            limiter: Arc::new(limiter),
            shutdown: Shutdown::new(),
            owner: format!("{}:{}", hostname(), std::process::id()),
            services: OnceLock::new(),
        }
    }

    /// A worker with services given (tests, the demo, a backend embedding the library).
    pub fn with_services(
        settings: Settings,
        store: Store,
        build: impl FnOnce(&Settings, Arc<RequestLimiter>, &Store) -> anyhow::Result<Services>,
    ) -> anyhow::Result<Worker> {
        let w = Worker::new(settings, store);
        let svc = build(&w.settings, w.limiter.clone(), &w.store)?;
        let _ = w.services.set(Arc::new(svc));
        Ok(w)
    }

    /// The Astra client, keyring and outbox deliverer; built from the environment on first use.
    pub fn services(&self) -> anyhow::Result<Arc<Services>> {
        if let Some(s) = self.services.get() {
            return Ok(s.clone());
        }
        let svc = Arc::new(Services::from_env(&self.settings, self.limiter.clone(), &self.store)?);
        Ok(self.services.get_or_init(|| svc).clone())
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// How `--run-once` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run this slot (a backfill) instead of the latest one.
    pub slot: Option<DateTime<Utc>>,
    /// Run a slot that already succeeded again.
    pub force: bool,
    /// Report what would be done; claim nothing, change nothing.
    pub dry_run: bool,
}

/// The state one run of one job on one slot works with.
pub struct RunContext<'a> {
    pub worker: &'a Worker,
    pub job: &'a JobSettings,
    pub slot: DateTime<Utc>,
    pub run_id: String,
    pub dry_run: bool,
    /// Marks the items tried in this attempt at the slot, by every process that works on it.
    pub work_mark: String,
    /// Cancelled on shutdown or when the claim was lost: stop claiming new items.
    stop: CancellationToken,
    processed: AtomicI64,
    failed: AtomicI64,
    skipped: AtomicI64,
    requests: AtomicI64,
    details: Mutex<serde_json::Map<String, serde_json::Value>>,
}

impl RunContext<'_> {
    /// True once the run should stop taking new work (signal received, or the claim was taken over).
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub fn processed(&self, n: i64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }
    pub fn failed(&self, n: i64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }
    pub fn skipped(&self, n: i64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts one HTTP request made on this run's behalf.
    pub fn request_made(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to the job's own figure `key` (shown in `runs` and the demo report).
    pub fn tally(&self, key: &str, n: i64) {
        let mut d = self.details.lock().unwrap_or_else(|p| p.into_inner());
        let cur = d.get(key).and_then(|v| v.as_i64()).unwrap_or(0);
        d.insert(key.to_string(), (cur + n).into());
    }

    /// The job's own figures so far, as JSON.
    pub fn details_json(&self) -> serde_json::Value {
        self.details()
    }

    fn counts(&self) -> Counts {
        Counts {
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    fn details(&self) -> serde_json::Value {
        serde_json::Value::Object(self.details.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl Worker {
    /// A context for work done outside a slot (a command acting at once), with its own run id.
    pub fn adhoc_context<'a>(&'a self, job: &'a JobSettings) -> RunContext<'a> {
        RunContext {
            worker: self,
            job,
            slot: Utc::now(),
            run_id: uuid::Uuid::new_v4().to_string(),
            dry_run: false,
            work_mark: format!("adhoc:{}", uuid::Uuid::new_v4()),
            stop: self.shutdown.child_token(),
            processed: AtomicI64::new(0),
            failed: AtomicI64::new(0),
            skipped: AtomicI64::new(0),
            requests: AtomicI64::new(0),
            details: Mutex::new(serde_json::Map::new()),
        }
    }
}

/// What happened to one slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    pub job: JobName,
    pub slot: DateTime<Utc>,
    pub result: SlotResult,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SlotResult {
    Ran { run_id: String, outcome: Outcome, counts: Counts, details: serde_json::Value, error: Option<String> },
    DryRun { counts: Counts, details: serde_json::Value },
    AlreadyRan { run_id: String },
    HeldElsewhere { owner: String },
}

impl Serialize for JobName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl SlotReport {
    /// The exit status this slot contributes.
    pub fn status(&self) -> Status {
        match &self.result {
            SlotResult::Ran { outcome: Outcome::Succeeded, .. } => Status::Ok,
            SlotResult::Ran { outcome: Outcome::Partial | Outcome::Interrupted, .. } => Status::Temporary,
            SlotResult::Ran { outcome: Outcome::Failed, .. } => Status::Bug,
            _ => Status::Ok,
        }
    }
}

/// The reports of a `--run-once`, and the exit status they add up to.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub reports: Vec<SlotReport>,
}

impl RunSummary {
    pub fn status(&self) -> Status {
        self.reports.iter().map(SlotReport::status).fold(Status::Ok, Status::worst)
    }
}

/// Maximum slots one catch-up runs in one go.
const CATCH_UP_LIMIT: usize = 1000;

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
        worker.services()?;
    }
    let mut summary = RunSummary::default();
    if !settings.enabled && opts.slot.is_none() {
        info!(job = %job, "job is disabled in jobs.toml; nothing to do");
        return Ok(summary);
    }
    for slot in slots_to_run(worker, &settings, opts, now).await? {
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

async fn slots_to_run(
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
        return Ok(vec![slot]);
    }
    let lateness = TimeDelta::from_std(job.max_lateness).unwrap_or(TimeDelta::MAX);
    let window_start = now.checked_sub_signed(lateness).unwrap_or(DateTime::<Utc>::MIN_UTC);
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

/// Claims and runs one slot.
pub async fn run_slot(
    worker: &Worker,
    job: &JobSettings,
    slot: DateTime<Utc>,
    opts: &RunOptions,
) -> anyhow::Result<SlotReport> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let name = job.name.as_str();
    let lease = TimeDelta::from_std(worker.settings.runner.claim_lease).unwrap_or(TimeDelta::minutes(2));
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
    let ctx = RunContext {
        worker,
        job,
        slot,
        run_id: run_id.clone(),
        dry_run: opts.dry_run,
        work_mark: format!("{name}@{}#{attempt}", slot.to_rfc3339()),
        stop: stop.clone(),
        processed: AtomicI64::new(0),
        failed: AtomicI64::new(0),
        skipped: AtomicI64::new(0),
        requests: AtomicI64::new(0),
        details: Mutex::new(serde_json::Map::new()),
    };
    let span = info_span!("run", run_id = %run_id, job = name, slot = %slot.format("%Y-%m-%dT%H:%M:%SZ"));
    info!(parent: &span, forced = opts.force, dry_run = opts.dry_run, "run started");
    let started = Instant::now();

    let heartbeat = owns_claim.then(|| spawn_heartbeat(worker.store.clone(), name, slot, &run_id, lease, stop.clone()));
    let result = run_with_grace(&ctx).instrument(span.clone()).await;
    if let Some(h) = heartbeat {
        h.abort();
    }

    let elapsed = started.elapsed();
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

/// Runs the job's body; after a shutdown signal, gives in-flight work the grace period, then abandons it.
async fn run_with_grace(ctx: &RunContext<'_>) -> anyhow::Result<()> {
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

fn spawn_heartbeat(
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
