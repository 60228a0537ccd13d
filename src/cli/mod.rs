//! The command line: parsed once by clap, dispatched to library calls, every error mapped to the exit-code
//! contract of [`crate::exit`] with a one-line message on stderr.

#[macro_use]
mod output;
mod check_config;
mod demo;
mod grants;
mod money_side;
mod ops;
mod prompts;
mod render;
mod runs;
mod sandbox;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::{
    app::Worker,
    config::{JobName, Settings},
    exit::classify,
    failure::{Failure, Status},
    runner::{RunOptions, run_job},
    store::{self, Lives, Store},
    telemetry::{self, LogTo},
};

#[derive(Parser, Debug)]
#[command(
    name = "astra-worker",
    version,
    about = "Keeps a fintech's Astra integration healthy.",
    arg_required_else_help = true
)]
pub struct Cli {
    /// The job configuration file [default: jobs.toml; the demo uses its built-in settings when there is none].
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The store: sqlite://FILE (one host) or postgres://… (several instances).
    #[arg(long, global = true, env = "DATABASE_URL", default_value = store::DEFAULT_URL, value_name = "URL", hide_env_values = true)]
    database_url: String,
    /// Run one job (or `all`) once, on its latest slot, and exit.
    #[arg(long, value_name = "JOB|all")]
    run_once: Option<String>,
    /// With --run-once: run this slot (RFC 3339) instead of the latest.
    #[arg(long, requires = "run_once", value_name = "TIME")]
    slot: Option<DateTime<chrono::FixedOffset>>,
    /// With --run-once: run a slot again even if it already succeeded.
    #[arg(long, requires = "run_once")]
    force: bool,
    /// With --run-once: report what would be done; claim nothing, change nothing.
    #[arg(long, requires = "run_once")]
    dry_run: bool,
    /// Write Prometheus metrics here (atomically) after each run, for node_exporter's textfile collector.
    #[arg(long, global = true, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate jobs.toml and show each job's next three slots, in its zone and in UTC.
    CheckConfig,
    /// Bring the store's schema up to date.
    Migrate,
    /// List job runs, newest first.
    Runs(runs::RunsArgs),
    /// The demo: the built-in sandbox, a fresh SQLite file, seeded users, every job once, a report.
    Demo(demo::DemoArgs),
    /// Run the Astra sandbox (a local simulator of Astra) on a loopback port.
    Sandbox(sandbox::SandboxArgs),
    /// Grants in and out: import, list.
    #[command(subcommand)]
    Grants(grants::GrantsCommand),
    /// Print a valid access token for a user (refreshed first if it is about to expire).
    Token { user_id: String },
    /// Token encryption keys.
    #[command(subcommand)]
    Keys(grants::KeysCommand),
    /// The outbox of re-authorization prompts and follow-ups.
    #[command(subcommand)]
    Prompts(prompts::PromptsCommand),
    /// The registry of client-issued destinations (limits, zones, card flags) and ACH credits.
    #[command(subcommand)]
    Accounts(money_side::AccountsCommand),
    /// Freeze or unfreeze a client-issued card.
    #[command(subcommand)]
    Cards(money_side::CardsCommand),
    /// Block or unblock a user's routine requests.
    #[command(subcommand)]
    Users(money_side::UsersCommand),
    /// May this routine request go out? JSON answer; exit 0 allowed, 1 denied, 75/78 errors.
    Guard(money_side::GuardArgs),
    /// The guard's holds: release, attach to a routine, list.
    #[command(subcommand)]
    Holds(money_side::HoldsCommand),
    /// The daemon: every enabled job on its schedule, until SIGTERM (with --listen, also the HTTP service).
    Run(ops::RunArgs),
    /// The HTTP service: Astra's webhooks, and the guard, holds, access tokens and code exchange for the
    /// backend (`/v1`, bearer ASTRA_WORKER_API_KEY), until SIGTERM.
    Serve(ops::ServeArgs),
    /// Exit 0 when every enabled job's last successful slot is recent enough; 1 naming the stale ones.
    Health(ops::HealthArgs),
    /// Write the systemd units or the Kubernetes manifests for this jobs.toml.
    Render(render::RenderArgs),
}

/// Output format of listings.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Text,
    Json,
}

/// Parses the command line, runs it, and turns the result into the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                // A wrong command line will not fix itself: never retry.
                _ => Status::Config.into(),
            };
        }
    };
    let log_to = if cli.run_once.is_some()
        || matches!(cli.command, Some(Command::Migrate | Command::Run(_) | Command::Serve(_)))
    {
        LogTo::Stdout
    } else {
        LogTo::Stderr
    };
    telemetry::init(log_to);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("astra-worker: error: cannot start the async runtime: {e}");
            return Status::Bug.into();
        }
    };
    // The call log is written in the background: what is still on its way is written before the process ends.
    let result = runtime.block_on(async {
        let r = run(cli).await;
        crate::astra::flush_call_logs().await;
        r
    });
    match result {
        Ok(status) => status.into(),
        Err(e) => {
            let code = classify(&e).code();
            tracing::error!(exit_code = code, "{e:#}");
            eprintln!("astra-worker: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Status> {
    if let Some(job) = &cli.run_once {
        if cli.command.is_some() {
            return Err(Failure::config("--run-once cannot be combined with a command"));
        }
        return run_once(&cli, job).await;
    }
    match &cli.command {
        Some(Command::CheckConfig) => check_config::run(&cli.config()),
        Some(Command::Migrate) => {
            let store = Store::open(&cli.database_url).await?;
            store.close().await;
            tracing::info!(database = %crate::secrets::redact_url(&cli.database_url), "schema is up to date");
            Ok(Status::Ok)
        }
        Some(Command::Runs(args)) => runs::run(&open_store(&cli).await?, args).await,
        Some(Command::Sandbox(args)) => sandbox::run(args).await,
        Some(Command::Demo(args)) => demo::run(&cli.config(), cli.config.is_some(), args).await,
        Some(Command::Grants(cmd)) => match cmd.exchange() {
            Some((user, code)) => {
                let worker = Worker::new(Settings::load(&cli.config())?, open_store(&cli).await?);
                grants::exchange(&worker, user, code).await
            }
            None => grants::grants(&open_store(&cli).await?, cmd).await,
        },
        Some(Command::Keys(cmd)) => grants::keys(&open_store(&cli).await?, cmd).await,
        Some(Command::Prompts(cmd)) => prompts::run(&open_store(&cli).await?, cmd).await,
        Some(Command::Accounts(cmd)) => money_side::accounts(&open_store(&cli).await?, cmd).await,
        Some(Command::Users(cmd)) => money_side::users(&open_store(&cli).await?, cmd).await,
        Some(Command::Guard(args)) => money_side::guard(&open_store(&cli).await?, &cli.guard_settings()?, args).await,
        Some(Command::Holds(cmd)) => money_side::holds(&open_store(&cli).await?, cmd).await,
        Some(Command::Cards(cmd)) => {
            let settings = Settings::load(&cli.config())?;
            let worker = Worker::new(settings, open_store(&cli).await?);
            money_side::cards(&worker, cmd).await
        }
        Some(Command::Run(args)) => {
            if let Some(p) = &cli.metrics_file {
                crate::ops::metrics::check_writable(p)?;
            }
            let worker = long_lived_worker(&cli).await?;
            let Some(listen) = args.listen else { return ops::run(worker, args, cli.metrics_file.clone()).await };
            // The daemon and the service live and stop together: whichever ends first stops the other.
            let mut serving = tokio::spawn(crate::serve::serve(worker.clone(), listen));
            let daemon = ops::run(worker.clone(), args, cli.metrics_file.clone());
            tokio::pin!(daemon);
            tokio::select! {
                status = &mut daemon => {
                    worker.shutdown.trigger("daemon stopped");
                    serving.await.context("the HTTP service")??;
                    status
                }
                served = &mut serving => {
                    worker.shutdown.trigger("the HTTP service stopped");
                    let status = daemon.await;
                    served.context("the HTTP service")??;
                    status
                }
            }
        }
        Some(Command::Serve(args)) => {
            let worker = long_lived_worker(&cli).await?;
            crate::serve::serve(worker, args.listen).await?;
            Ok(Status::Ok)
        }
        Some(Command::Render(args)) => render::run(&cli.config(), args),
        Some(Command::Health(args)) => {
            let worker = Worker::new(Settings::load(&cli.config())?, open_store(&cli).await?);
            ops::health(&worker, args).await
        }
        Some(Command::Token { user_id }) => {
            let settings = Settings::load(&cli.config())?;
            let worker = Worker::new(settings, open_store(&cli).await?);
            grants::token(&worker, user_id).await
        }
        None => Err(Failure::config("nothing to do: give --run-once JOB or a command (see --help)")),
    }
}

impl Cli {
    fn config(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from("jobs.toml"))
    }

    /// The guard's settings: `[guard]` of the configuration file; the defaults when no file was named and
    /// there is no `jobs.toml` here (the guard needs no job).
    fn guard_settings(&self) -> anyhow::Result<crate::config::GuardSettings> {
        let path = self.config();
        if self.config.is_none() && !path.exists() {
            return Ok(crate::config::GuardSettings::default());
        }
        Ok(Settings::load(&path)?.guard)
    }
}

async fn open_store(cli: &Cli) -> anyhow::Result<Store> {
    Store::open(&cli.database_url).await
}

/// The worker of `serve` and the daemon: its store keeps its connections open (see [`Lives::Long`]), and it
/// listens for the shutdown signals.
async fn long_lived_worker(cli: &Cli) -> anyhow::Result<std::sync::Arc<Worker>> {
    let settings = Settings::load(&cli.config())?;
    let connections = settings.store.postgres_connections;
    let store = Store::open_for(&cli.database_url, Lives::Long { connections }).await?;
    let worker = std::sync::Arc::new(Worker::new(settings, store));
    worker.shutdown.listen_for_signals().context("installing signal handlers")?;
    Ok(worker)
}

/// The jobs a `--run-once` argument names.
fn jobs_named(arg: &str, settings: &Settings) -> anyhow::Result<Vec<JobName>> {
    if arg == "all" {
        return Ok(settings.jobs.iter().filter(|j| j.enabled).map(|j| j.name).collect());
    }
    JobName::parse(arg).map(|j| vec![j]).ok_or_else(|| {
        let known: Vec<_> = JobName::ALL.iter().map(|j| j.as_str()).collect();
        Failure::config(format!("unknown job `{arg}`; the jobs are {} (or `all`)", known.join(", ")))
    })
}

async fn run_once(cli: &Cli, job_arg: &str) -> anyhow::Result<Status> {
    let settings = Settings::load(&cli.config())?;
    let jobs = jobs_named(job_arg, &settings)?;
    if let Some(p) = &cli.metrics_file {
        crate::ops::metrics::check_writable(p)?;
    }
    let store = open_store(cli).await?;
    let worker = Worker::new(settings, store);
    worker.shutdown.listen_for_signals().context("installing signal handlers")?;
    let opts = RunOptions { slot: cli.slot.map(|s| s.with_timezone(&Utc)), force: cli.force, dry_run: cli.dry_run };
    let mut status = Status::Ok;
    for job in jobs {
        if worker.shutdown.is_triggered() {
            break;
        }
        let summary = run_job(&worker, job, &opts, Utc::now()).await?;
        status = status.worst(summary.status());
    }
    if let Some(sig) = worker.shutdown.reason() {
        tracing::warn!(signal = sig, "stopped by signal; exiting with 75 so the orchestrator may retry");
        status = status.worst(Status::Temporary);
    }
    if let Some(p) = &cli.metrics_file
        && let Err(e) = crate::ops::metrics::write_file(&worker, p).await
    {
        tracing::warn!(error = %format!("{e:#}"), "could not write the metrics file");
    }
    worker.store.close().await;
    Ok(status)
}
