//! Operations commands: `run` (the daemon), `health`, and the metrics file and endpoint.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use chrono::Utc;

use super::Format;
use crate::{
    app::Worker,
    domain::time::utc_seconds,
    failure::{Failure, Status},
    ops::daemon::{self, DaemonOptions},
    ops::health,
    ops::metrics,
};

#[derive(clap::Args, Debug)]
pub(super) struct RunArgs {
    /// Also serve the metrics at http://ADDR/metrics (loopback only).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Also serve the HTTP service (`serve`) on ADDR: webhooks, the guard, holds, tokens.
    #[arg(long, value_name = "ADDR")]
    pub(super) listen: Option<SocketAddr>,
}

#[derive(clap::Args, Debug)]
pub(super) struct ServeArgs {
    /// Where to listen (plain HTTP: put a TLS-terminating proxy or ingress in front).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub(super) listen: SocketAddr,
}

#[derive(clap::Args, Debug)]
pub(super) struct HealthArgs {
    /// How old a job's last successful slot may be, e.g. token-rotation=8d (default: two periods).
    #[arg(long = "max-age", value_name = "JOB=DURATION")]
    max_age: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub(super) async fn run(worker: Arc<Worker>, args: &RunArgs, metrics_file: Option<PathBuf>) -> anyhow::Result<Status> {
    if let Some(addr) = args.metrics_listen {
        serve_metrics(worker.clone(), addr).await?;
    }
    daemon::run(worker, DaemonOptions { metrics_file }).await
}

async fn serve_metrics(worker: Arc<Worker>, addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        return Err(Failure::config(format!("--metrics-listen {addr}: metrics are served on loopback only")));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Config(format!("--metrics-listen {addr}: {e}")))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let w = worker.clone();
            async move {
                match metrics::render(&w).await {
                    Ok(t) => (axum::http::StatusCode::OK, t),
                    Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(())
}

pub(super) async fn health(worker: &Worker, args: &HealthArgs) -> anyhow::Result<Status> {
    let max_ages = health::parse_max_ages(&args.max_age)?;
    let report = health::check(worker, &max_ages, Utc::now()).await?;
    let unreadable = crate::tokens::store::count_unreadable(&worker.store).await?;
    match args.format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"jobs": report, "unreadable_grants": unreadable}))?
        ),
        Format::Text => {
            for h in &report {
                let last = h.last_success_slot.map(utc_seconds).unwrap_or_else(|| "never".into());
                let verdict = if h.healthy { "ok" } else { "STALE" };
                outln!("{:<26} {verdict:<6} last successful slot {last} (max age {}s)", h.job, h.max_age_seconds);
            }
            let verdict = if unreadable == 0 { "ok" } else { "BAD" };
            outln!("{:<26} {verdict:<6} {unreadable} grants whose tokens cannot be opened", "grants");
        }
    }
    let stale: Vec<String> = report.iter().filter(|h| !h.healthy).map(|h| h.job.to_string()).collect();
    if unreadable > 0 {
        eprintln!(
            "astra-worker: {unreadable} grants cannot be decrypted (see `grants list`); import those users again"
        );
    }
    if stale.is_empty() && unreadable == 0 {
        Ok(Status::Ok)
    } else {
        if !stale.is_empty() {
            eprintln!("astra-worker: stale: {}", stale.join(", "));
        }
        Ok(Status::No)
    }
}
