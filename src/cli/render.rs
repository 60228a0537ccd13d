//! `astra-worker render systemd|kubernetes`: see [`crate::ops::render`].

use std::path::{Path, PathBuf};

use crate::{
    config::Settings,
    failure::{Failure, Status},
    ops::render::{self, RenderOptions},
};

#[derive(clap::Args, Debug)]
pub(super) struct RenderArgs {
    /// `systemd` or `kubernetes`.
    #[arg(value_parser = ["systemd", "kubernetes"])]
    target: String,
    /// Where to write (default: systemd/ or deploy/kubernetes/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The binary's path in the systemd units.
    #[arg(long, default_value = "/usr/local/bin/astra-worker")]
    bin: String,
    /// The container image in the Kubernetes manifests.
    #[arg(long)]
    image: Option<String>,
}

pub(super) fn run(config: &Path, args: &RenderArgs) -> anyhow::Result<Status> {
    let settings = Settings::load(config)?;
    let text = std::fs::read_to_string(config)
        .map_err(|e| Failure::Config(format!("cannot read {}: {e}", config.display())))?;
    let mut o = RenderOptions { bin: args.bin.clone(), ..Default::default() };
    if let Some(i) = &args.image {
        o.image = i.clone();
    }
    let (files, default_dir) = match args.target.as_str() {
        "systemd" => (render::systemd(&settings, &o)?, "systemd"),
        _ => (render::kubernetes(&settings, &text, &o)?, "deploy/kubernetes"),
    };
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from(default_dir));
    render::write(&dir, &files)?;
    for (name, _) in &files {
        outln!("{}", dir.join(name).display());
    }
    Ok(Status::Ok)
}
