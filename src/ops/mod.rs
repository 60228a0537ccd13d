//! Running the worker for real: the daemon (`run`), the dead-man's switch (`health`), Prometheus metrics,
//! and the systemd units and Kubernetes manifests rendered from `jobs.toml`.

pub mod daemon;
pub mod health;
pub mod metrics;
pub mod render;
