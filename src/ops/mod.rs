//! Running the worker for real: the daemon (`run`), the dead-man's switch (`health`), Prometheus metrics,
//! and the systemd units and Kubernetes manifests rendered from `jobs.toml`.

pub(crate) mod daemon;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod render;
