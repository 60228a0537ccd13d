//! `astra-worker run`: one process that runs every enabled job on its schedule through the same runner and
//! slot ledger as `--run-once` (a daemon and a CronJob on one database never double a slot).
//!
//! tokio-cron-scheduler is the tick source, but only for one-shot ticks at instants computed by
//! [`crate::domain::schedule::Schedule`]: its own cron jobs keep the UTC offset they were created with, an hour off
//! after a daylight-saving change. Each job has one driver task; a tick that arrives while the job runs is
//! folded into the next run, so a job never overlaps itself. On start every job runs once, which applies its
//! catch-up policy to slots missed while nothing ran.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::{error, info, warn};

use crate::{
    app::Worker,
    config::{JobName, JobSettings},
    domain::schedule::Schedule,
    domain::time::utc_seconds,
    exit::classify,
    failure::{Failure, Status},
    ops::metrics,
    runner::{RunOptions, run_job},
};

/// When the daemon next fires a job whose schedule is `s`, seen at `now`: the next slot.
pub(crate) fn next_fire(s: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.next_after(now)
}

pub(crate) struct DaemonOptions {
    pub metrics_file: Option<std::path::PathBuf>,
}

/// Runs until SIGTERM/SIGINT; drains in-flight work within the grace period and returns `Ok` (exit 0).
/// A configuration failure met by a run (rejected credentials) stops the daemon with exit 78.
pub(crate) async fn run(worker: Arc<Worker>, opts: DaemonOptions) -> anyhow::Result<Status> {
    let jobs: Vec<JobSettings> = worker.settings.jobs.iter().filter(|j| j.enabled).cloned().collect();
    if jobs.is_empty() {
        return Err(Failure::config("no job is enabled in jobs.toml: the daemon would do nothing"));
    }
    for j in &jobs {
        if crate::jobs::needs_services(j.name) {
            worker.checked_services().await?;
        }
    }
    crate::jobs::deliver_outbox_in_background(worker.clone());
    let mut sched = JobScheduler::new().await.map_err(|e| anyhow::anyhow!("starting the scheduler: {e}"))?;
    sched.start().await.map_err(|e| anyhow::anyhow!("starting the scheduler: {e}"))?;
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<anyhow::Error>(1);
    let mut drivers = Vec::new();
    for job in jobs {
        let (tick_tx, tick_rx) = mpsc::channel::<()>(1);
        let _ = tick_tx.try_send(()); // run once at start: catch-up
        let d = Driver {
            worker: worker.clone(),
            job,
            sched: sched.clone(),
            tick_tx,
            metrics_file: opts.metrics_file.clone(),
        };
        drivers.push(tokio::spawn(d.run(tick_rx, fatal_tx.clone())));
    }
    drop(fatal_tx);
    info!("daemon started");
    let outcome = tokio::select! {
        _ = worker.shutdown.triggered() => Ok(Status::Ok),
        Some(e) = fatal_rx.recv() => {
            worker.shutdown.trigger("a configuration error");
            Err(e)
        }
    };
    let _ = sched.shutdown().await;
    // Drivers finish their in-flight run (the runner enforces the grace period), then stop.
    let grace = worker.settings.runner.grace_period + Duration::from_secs(5);
    for d in drivers {
        if tokio::time::timeout(grace, d).await.is_err() {
            warn!("a job did not stop within the grace period");
        }
    }
    info!("daemon stopped");
    outcome
}

struct Driver {
    worker: Arc<Worker>,
    job: JobSettings,
    sched: JobScheduler,
    tick_tx: mpsc::Sender<()>,
    metrics_file: Option<std::path::PathBuf>,
}

impl Driver {
    async fn run(self, mut ticks: mpsc::Receiver<()>, fatal: mpsc::Sender<anyhow::Error>) {
        let name = self.job.name;
        loop {
            tokio::select! {
                t = ticks.recv() => if t.is_none() { return },
                _ = self.worker.shutdown.triggered() => return,
            }
            if self.worker.shutdown.is_triggered() {
                return;
            }
            match run_job(&self.worker, name, &RunOptions::default(), Utc::now()).await {
                Ok(summary) => {
                    if summary.status() != Status::Ok {
                        warn!(job = %name, status = summary.status().code(), "run did not fully succeed; the daemon goes on");
                    }
                }
                Err(e) if classify(&e) == Status::Config => {
                    error!(job = %name, error = %format!("{e:#}"), "configuration error: stopping the daemon");
                    let _ = fatal.send(e).await;
                    return;
                }
                Err(e) => error!(job = %name, error = %format!("{e:#}"), "run failed; the daemon goes on"),
            }
            if let Some(path) = &self.metrics_file
                && let Err(e) = metrics::write_file(&self.worker, path).await
            {
                warn!(error = %format!("{e:#}"), "could not write the metrics file");
            }
            if let Err(e) = self.schedule_next(name).await {
                error!(job = %name, error = %format!("{e:#}"), "could not schedule the next run; the job stops");
                return;
            }
        }
    }

    async fn schedule_next(&self, name: JobName) -> anyhow::Result<()> {
        let now = Utc::now();
        let Some(next) = next_fire(&self.job.schedule, now) else {
            anyhow::bail!("the schedule of {name} never fires again");
        };
        let wait = (next - now).to_std().unwrap_or_default();
        let at = std::time::Instant::now() + wait;
        let tx = self.tick_tx.clone();
        let tick = Job::new_one_shot_at_instant(at, move |_, _| {
            let _ = tx.try_send(());
        })
        .map_err(|e| anyhow::anyhow!("scheduling {name}: {e}"))?;
        self.sched.add(tick).await.map_err(|e| anyhow::anyhow!("scheduling {name}: {e}"))?;
        info!(job = %name, next = %utc_seconds(next), "next run scheduled");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_fire_times_across_both_new_york_changes_are_the_slots() {
        let s = Schedule::parse("0 30 2 * * *", "America/New_York").unwrap();
        // Spring forward: 02:30 does not exist on Mar 8; it fires at 03:00 EDT, then at 02:30 EDT.
        let mut t = utc("2026-03-06T12:00:00Z");
        let mut fired = Vec::new();
        for _ in 0..4 {
            t = next_fire(&s, t).unwrap();
            fired.push(t);
        }
        let expect = ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z"];
        assert_eq!(fired, expect.map(utc));
        // Fall back: 01:30 happens twice on Nov 1; it fires once, at the first.
        let s = Schedule::parse("0 30 1 * * *", "America/New_York").unwrap();
        let mut t = utc("2026-10-31T12:00:00Z");
        let mut fired = Vec::new();
        for _ in 0..3 {
            t = next_fire(&s, t).unwrap();
            fired.push(t);
        }
        assert_eq!(fired, ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z", "2026-11-03T06:30:00Z"].map(utc));
    }
}
