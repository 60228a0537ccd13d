//! What a `--run-once` was asked to do, and what each slot came to, with the exit status they add up to.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    config::JobName,
    failure::Status,
    store::ledger::{Counts, Outcome},
};

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
