//! Metrics in the Prometheus text format, read from the ledger (so they agree across processes): per job,
//! the last success, the last run's duration, items, requests and achieved rate. Written atomically to a file
//! for node_exporter's textfile collector, or served by the daemon on a loopback port.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;

use crate::{app::Worker, failure::Failure, store::ledger};

/// The metrics text.
pub(crate) async fn render(worker: &Worker) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str| {
        let _ = writeln!(out, "# HELP astra_worker_{name} {help}\n# TYPE astra_worker_{name} gauge");
    };
    gauge("request_rate_limit", "Requests per second this instance may send to Astra.");
    let mut lines = format!("astra_worker_request_rate_limit {}\n", worker.limiter.rate());
    for (name, help) in [
        ("last_success_timestamp_seconds", "Unix time the job last finished a run successfully."),
        ("last_run_duration_seconds", "How long the job's last run took."),
        ("last_run_items", "Items of the job's last run, by result."),
        ("last_run_requests", "Requests to Astra made by the job's last run."),
        ("last_run_request_rate", "Requests per second the job's last run achieved."),
        ("last_run_succeeded", "1 when the job's last run succeeded."),
    ] {
        gauge(name, help);
    }
    for job in worker.settings.jobs.iter().filter(|j| j.enabled) {
        let name = job.name.as_str();
        let last_ok = ledger::last_success_finished(&worker.store, name).await?;
        if let Some(t) = last_ok {
            let _ = writeln!(lines, "astra_worker_last_success_timestamp_seconds{{job=\"{name}\"}} {}", t.timestamp());
        }
        let Some(r) = ledger::list_runs(&worker.store, Some(name), 1).await?.into_iter().next() else { continue };
        let Some(end) = r.finished_at else { continue };
        let secs = (end - r.started_at).num_milliseconds().max(0) as f64 / 1000.0;
        let rate = if secs > 0.0 { r.requests as f64 / secs } else { 0.0 };
        let _ = writeln!(lines, "astra_worker_last_run_duration_seconds{{job=\"{name}\"}} {secs:.3}");
        for (result, n) in [("processed", r.processed), ("failed", r.failed), ("skipped", r.skipped)] {
            let _ = writeln!(lines, "astra_worker_last_run_items{{job=\"{name}\",result=\"{result}\"}} {n}");
        }
        let _ = writeln!(lines, "astra_worker_last_run_requests{{job=\"{name}\"}} {}", r.requests);
        let _ = writeln!(lines, "astra_worker_last_run_request_rate{{job=\"{name}\"}} {rate:.3}");
        let ok = u8::from(r.outcome == "succeeded");
        let _ = writeln!(lines, "astra_worker_last_run_succeeded{{job=\"{name}\"}} {ok}");
    }
    out.push_str(&lines);
    Ok(out)
}

/// Writes the metrics to `path` atomically (a temporary file beside it, then a rename).
pub(crate) async fn write_file(worker: &Worker, path: &Path) -> anyhow::Result<()> {
    let text = render(worker).await?;
    write_atomically(path, &text)
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        // Not left behind, one more on every run.
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::from(e).context(format!("renaming {} to {}", tmp.display(), path.display()))
    })
}

/// Refuses, at start, a metrics path that cannot be written.
pub(crate) fn check_writable(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        return Err(Failure::Config(format!("--metrics-file {}: is a directory; name a file", path.display())).into());
    }
    let probe = path.with_extension(format!("probe.{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| Failure::Config(format!("--metrics-file {}: cannot write there: {e}", path.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
