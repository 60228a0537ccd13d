//! `astra-worker check-config`: validates `jobs.toml` and prints each job's next three slots.

use std::path::Path;

use chrono::Utc;

use crate::{config::Settings, domain::time::utc_seconds, failure::Status, secrets};

pub(super) fn run(path: &Path) -> anyhow::Result<Status> {
    let settings = Settings::load(path)?;
    let a = &settings.astra;
    outln!("{}: valid", path.display());
    outln!(
        "astra: {} (rate {}/s, burst {}, timeouts {}s connect / {}s request, {} retries)",
        crate::secrets::redact_url(a.base_url.as_str()),
        a.requests_per_second,
        a.burst,
        a.connect_timeout.as_secs(),
        a.request_timeout.as_secs(),
        a.max_retries
    );
    let now = Utc::now();
    for job in &settings.jobs {
        let s = &job.schedule;
        outln!(
            "\n{} ({}): `{}` in {}, catch-up {:?}, max lateness {}",
            job.name,
            if job.enabled { "enabled" } else { "disabled" },
            s.expr(),
            s.zone().name(),
            job.catch_up,
            humantime::format_duration(job.max_lateness.to_std().unwrap_or_default())
        );
        let mut t = now;
        for _ in 0..3 {
            let Some(next) = s.next_after(t) else { break };
            outln!("  {}   {}", next.with_timezone(&s.zone()).format("%a %Y-%m-%d %H:%M:%S %Z"), utc_seconds(next));
            t = next;
        }
    }
    outln!();
    for name in ["ASTRA_CLIENT_ID", "ASTRA_CLIENT_SECRET"] {
        let state = match secrets::read(name) {
            Ok(Some(_)) => "present".to_string(),
            Ok(None) => "missing (needed by jobs that call Astra)".to_string(),
            Err(e) => format!("{e:#}"),
        };
        outln!("secret {name}: {state}");
    }
    Ok(Status::Ok)
}
