//! `astra-worker health`: a dead-man's switch. Each enabled job's last successful slot must be recent enough
//! (by default two of its periods), or the command names the stale job and exits 1.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    app::Worker, config::JobName, domain::time::parse_duration, failure::Failure, secrets::shown, store::ledger,
};

/// One job's verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct JobHealth {
    pub job: JobName,
    pub last_success_slot: Option<DateTime<Utc>>,
    pub max_age_seconds: i64,
    pub healthy: bool,
}

/// Parses `job=duration` pairs.
pub(crate) fn parse_max_ages(args: &[String]) -> anyhow::Result<HashMap<JobName, TimeDelta>> {
    let mut out = HashMap::new();
    for a in args {
        let arg = shown(a);
        let (job, d) = a
            .split_once('=')
            .ok_or_else(|| Failure::config(format!("--max-age {arg}: write JOB=DURATION, e.g. token-rotation=8d")))?;
        let job = JobName::parse(job)
            .ok_or_else(|| Failure::config(format!("--max-age {arg}: unknown job {}", shown(job))))?;
        let d = parse_duration(d).map_err(|e| Failure::Config(format!("--max-age: {e}")))?;
        out.insert(job, d);
    }
    Ok(out)
}

pub(crate) async fn check(
    worker: &Worker,
    max_ages: &HashMap<JobName, TimeDelta>,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<JobHealth>> {
    let mut out = Vec::new();
    for job in worker.settings.jobs.iter().filter(|j| j.enabled) {
        let last = ledger::last_succeeded_slot(&worker.store, job.name.as_str()).await?;
        let max_age = match max_ages.get(&job.name) {
            Some(d) => *d,
            None => default_max_age(job, now),
        };
        let healthy = last.is_some_and(|t| now - t <= max_age);
        out.push(JobHealth { job: job.name, last_success_slot: last, max_age_seconds: max_age.num_seconds(), healthy });
    }
    Ok(out)
}

/// Two periods of the job's schedule (the time between its last two slots).
fn default_max_age(job: &crate::config::JobSettings, now: DateTime<Utc>) -> TimeDelta {
    let s = &job.schedule;
    match s.latest_at_or_before(now).and_then(|l| s.latest_at_or_before(l - TimeDelta::seconds(1)).map(|p| l - p)) {
        Some(period) => period * 2,
        None => TimeDelta::days(14),
    }
}
