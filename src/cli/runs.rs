//! `astra-worker runs`: the ledger of job runs, newest first, as a table or JSON.

use super::Format;
use crate::{
    domain::time::utc_seconds,
    failure::Status,
    store::{Store, ledger},
};

#[derive(clap::Args, Debug)]
pub(super) struct RunsArgs {
    /// Only this job's runs.
    #[arg(long)]
    job: Option<String>,
    /// How many runs at most.
    #[arg(long, default_value_t = 20)]
    limit: i64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub(super) async fn run(store: &Store, args: &RunsArgs) -> anyhow::Result<Status> {
    let rows = ledger::list_runs(store, args.job.as_deref(), args.limit.max(1)).await?;
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Text => {
            outln!(
                "{:<26} {:<21} {:<11} {:<20} {:>7} {:>6} {:>6} {:>8}  details / error",
                "job",
                "slot (UTC)",
                "outcome",
                "started (UTC)",
                "done",
                "failed",
                "skip",
                "requests"
            );
            for r in rows {
                outln!(
                    "{:<26} {:<21} {:<11} {:<20} {:>7} {:>6} {:>6} {:>8}  {}",
                    r.job,
                    utc_seconds(r.slot),
                    r.outcome,
                    r.started_at.format("%Y-%m-%d %H:%M:%S"),
                    r.processed,
                    r.failed,
                    r.skipped,
                    r.requests,
                    r.error.or(r.details).unwrap_or_default()
                );
            }
        }
    }
    Ok(Status::Ok)
}
