//! The state one run of one job on one slot works with, and what each item of it came to.

use std::sync::{
    Mutex,
    atomic::{AtomicI64, Ordering},
};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{app::Worker, astra::Call, config::JobSettings, store::ledger::Counts};

/// The state one run of one job on one slot works with.
pub(crate) struct RunContext<'a> {
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

/// What one item of a run came to; the jobs share it, and [`RunContext::record`] counts it.
#[derive(Debug)]
pub(crate) enum ItemOutcome {
    /// Done: counted as processed.
    Done,
    /// Nothing to do for it now (gone, no longer due): counted as skipped.
    Skip,
    /// Not done for a reason that may pass (Astra unavailable, a token not to be had): counted as failed,
    /// which makes the run partial (exit 75) so the next run tries again.
    Retry(String),
}

impl<'a> RunContext<'a> {
    pub(crate) fn new(
        worker: &'a Worker,
        job: &'a JobSettings,
        slot: DateTime<Utc>,
        run_id: String,
        dry_run: bool,
        work_mark: String,
        stop: CancellationToken,
    ) -> RunContext<'a> {
        RunContext {
            worker,
            job,
            slot,
            run_id,
            dry_run,
            work_mark,
            stop,
            processed: AtomicI64::new(0),
            failed: AtomicI64::new(0),
            skipped: AtomicI64::new(0),
            requests: AtomicI64::new(0),
            details: Mutex::new(serde_json::Map::new()),
        }
    }

    /// A context for work done outside a slot (a command acting at once), with its own run id.
    pub(crate) fn adhoc(worker: &'a Worker, job: &'a JobSettings) -> RunContext<'a> {
        let stop = worker.shutdown.child_token();
        RunContext::new(
            worker,
            job,
            Utc::now(),
            uuid::Uuid::new_v4().to_string(),
            false,
            format!("adhoc:{}", uuid::Uuid::new_v4()),
            stop,
        )
    }

    /// An Astra call on behalf of `user_id`, recorded under this run and counted toward its requests.
    pub(crate) fn call<'c>(&'c self, user_id: &'c str) -> Call<'c> {
        Call { run_id: Some(&self.run_id), user_id: Some(user_id), requests: Some(&self.requests) }
    }

    /// True once the run should stop taking new work (signal received, or the claim was taken over).
    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Counts one item's outcome; a retry is logged (the item's span names the user).
    pub(crate) fn record(&self, outcome: ItemOutcome) {
        match outcome {
            ItemOutcome::Done => self.processed(1),
            ItemOutcome::Skip => self.skipped(1),
            ItemOutcome::Retry(why) => {
                tracing::warn!(error = %why, "item not done; left for the next run");
                self.failed(1);
            }
        }
    }

    pub(crate) fn processed(&self, n: i64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn failed(&self, n: i64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn skipped(&self, n: i64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` to the job's own figure `key` (shown in `runs` and the demo report).
    pub(crate) fn tally(&self, key: &str, n: i64) {
        let mut d = self.details.lock().unwrap_or_else(|p| p.into_inner());
        let cur = d.get(key).and_then(|v| v.as_i64()).unwrap_or(0);
        d.insert(key.to_string(), (cur + n).into());
    }

    /// Raises the job's own figure `key` to `n` if it is below.
    pub(crate) fn tally_max(&self, key: &str, n: i64) {
        let mut d = self.details.lock().unwrap_or_else(|p| p.into_inner());
        let cur = d.get(key).and_then(|v| v.as_i64()).unwrap_or(i64::MIN);
        d.insert(key.to_string(), cur.max(n).into());
    }

    /// The items counted so far.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    /// The job's own figures so far, as JSON.
    pub(crate) fn details(&self) -> serde_json::Value {
        serde_json::Value::Object(self.details.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}
