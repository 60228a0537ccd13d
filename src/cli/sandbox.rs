//! `astra-worker sandbox`: the Astra simulator, standalone, until SIGTERM/SIGINT.

use std::{net::SocketAddr, path::PathBuf};

use crate::{
    failure::{Failure, Status},
    sandbox::{Sandbox, SandboxSettings},
};

#[derive(clap::Args, Debug)]
pub(super) struct SandboxArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// JSON file of sandbox settings (unknowns and faults); defaults otherwise.
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,
}

pub(super) async fn run(args: &SandboxArgs) -> anyhow::Result<Status> {
    if !args.listen.ip().is_loopback() {
        return Err(Failure::config(format!("--listen {}: the sandbox listens on loopback only", args.listen)));
    }
    let settings = match &args.settings {
        None => SandboxSettings::default(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| Failure::Config(format!("cannot read {}: {e}", p.display())))?;
            serde_json::from_str(&text).map_err(|e| Failure::Config(format!("{}: {e}", p.display())))?
        }
    };
    let sb = Sandbox::start(args.listen, settings).await?;
    tracing::info!(url = %sb.base_url(), "Astra sandbox listening; admin under /_sandbox (loopback only)");
    outln!("{}", sb.base_url());
    let shutdown = crate::shutdown::Shutdown::new();
    shutdown.listen_for_signals()?;
    shutdown.triggered().await;
    sb.stop();
    Ok(Status::Ok)
}
