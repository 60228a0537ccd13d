//! The jobs: each is a plain `async fn` over a [`RunContext`], called only through the runner.

mod test_hold;

use crate::{
    config::{JobName, JobParams},
    exit::Failure,
    runner::RunContext,
};

/// Refuses, before any slot is claimed, a job this build cannot run yet.
pub fn ensure_available(job: JobName) -> anyhow::Result<()> {
    match job {
        JobName::TestHold => Ok(()),
        other => Err(Failure::config(format!(
            "job {other} is not available in this build of astra-worker yet; disable it in jobs.toml"
        ))),
    }
}

/// Runs the body of the job the context names.
pub async fn execute(ctx: &RunContext<'_>) -> anyhow::Result<()> {
    match &ctx.job.params {
        JobParams::TestHold { items, hold } => test_hold::run(ctx, *items, *hold).await,
        _ => {
            ensure_available(ctx.job.name)?;
            Ok(())
        }
    }
}
