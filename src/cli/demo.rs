//! `astra-worker demo`: see [`crate::demo`].

use std::path::PathBuf;

use crate::{config::Settings, demo, failure::Status};

#[derive(clap::Args, Debug)]
pub(super) struct DemoArgs {
    /// How many users to seed.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// The SQLite file the demo writes (replaced if it exists).
    #[arg(long, default_value = "astra-worker-demo.db")]
    database: PathBuf,
    /// The request rate the demo allows itself against the sandbox.
    #[arg(long, default_value_t = 200)]
    requests_per_second: u32,
}

/// The shipped `jobs.toml`: the demo's settings when no configuration file is at hand, so that it runs from
/// any directory.
const BUILT_IN: &str = include_str!("../../jobs.toml");

pub(super) async fn run(config: &std::path::Path, explicit: bool, args: &DemoArgs) -> anyhow::Result<Status> {
    let settings = if explicit || config.exists() {
        Settings::load(config)?
    } else {
        Settings::parse(BUILT_IN, None).map_err(|e| anyhow::anyhow!("the built-in settings: {e}"))?
    };
    let opts = demo::DemoOptions {
        users: args.users,
        database: args.database.clone(),
        requests_per_second: args.requests_per_second.max(1),
    };
    let report = demo::run(settings, &opts).await?;
    outln!("{}", report.trim_end());
    Ok(Status::Ok)
}
