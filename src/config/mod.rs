//! `jobs.toml`: read once into validated [`Settings`]; every refusal names the key, its line and the reason.
//! Secrets never live here (see [`crate::secrets`]).

mod params;
mod raw;

use std::{path::Path, time::Duration};

use chrono::TimeDelta;
use reqwest::Url;

use crate::{
    domain::Schedule,
    failure::Failure,
    secrets::{redact_url, shown},
};

pub use raw::CatchUp;

/// Everything the worker needs from `jobs.toml`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runner: RunnerSettings,
    pub astra: AstraSettings,
    pub outbox: OutboxSettings,
    pub guard: GuardSettings,
    pub service: ServiceSettings,
    pub store: StoreSettings,
    pub jobs: Vec<JobSettings>,
}

/// Where prompts and follow-ups go.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// The fintech's HTTPS endpoint; `None`: messages stay in the outbox (listable) until one is set.
    pub endpoint: Option<Url>,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// How long in-flight work may take to finish after SIGTERM/SIGINT.
    pub grace_period: Duration,
    /// How long a slot claim (or a grant's lease) lives without renewal before another process may take
    /// it over.
    pub claim_lease: TimeDelta,
}

#[derive(Debug, Clone)]
pub struct AstraSettings {
    pub base_url: Url,
    pub authorize_url: Url,
    pub redirect_uri: String,
    pub requests_per_second: u32,
    pub burst: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub retry_budget: Duration,
    /// `token <user>` refreshes first when the access token expires within this margin.
    pub access_margin: TimeDelta,
}

/// The jobs this worker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobName {
    TokenRotation,
    InboundVolume,
    TransferSync,
    ReprocessingCheck,
    StaleAuthorizationSweep,
    Retention,
    /// A job that only holds work in flight, for tests of the runner; accepted only with
    /// `ASTRA_WORKER_TEST_HOOKS=1`.
    TestHold,
}

impl JobName {
    pub const ALL: [JobName; 6] = [
        JobName::TokenRotation,
        JobName::InboundVolume,
        JobName::TransferSync,
        JobName::ReprocessingCheck,
        JobName::StaleAuthorizationSweep,
        JobName::Retention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobName::TokenRotation => "token-rotation",
            JobName::InboundVolume => "inbound-volume",
            JobName::TransferSync => "transfer-sync",
            JobName::ReprocessingCheck => "reprocessing-check",
            JobName::StaleAuthorizationSweep => "stale-authorization-sweep",
            JobName::Retention => "retention",
            JobName::TestHold => "test-hold",
        }
    }

    pub fn parse(s: &str) -> Option<JobName> {
        if s == "test-hold" && test_hooks_enabled() {
            return Some(JobName::TestHold);
        }
        JobName::ALL.into_iter().find(|j| j.as_str() == s)
    }
}

impl std::fmt::Display for JobName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Test hooks (the `test-hold` job) exist only when this variable is `1`.
pub fn test_hooks_enabled() -> bool {
    std::env::var("ASTRA_WORKER_TEST_HOOKS").is_ok_and(|v| v == "1")
}

#[derive(Debug, Clone)]
pub struct JobSettings {
    pub name: JobName,
    pub enabled: bool,
    pub schedule: Schedule,
    pub catch_up: CatchUp,
    /// A slot older than this when its run would start is missed, not run.
    pub max_lateness: TimeDelta,
    pub params: JobParams,
}

/// Each job's own settings.
#[derive(Debug, Clone)]
pub enum JobParams {
    TokenRotation(params::TokenRotationParams),
    InboundVolume(params::InboundVolumeParams),
    TransferSync(params::TransferSyncParams),
    ReprocessingCheck(params::ReprocessingCheckParams),
    StaleAuthorizationSweep(params::StaleAuthorizationSweepParams),
    Retention(params::RetentionParams),
    TestHold { items: u32, hold: Duration },
}

pub use params::{
    GuardSettings, InboundVolumeParams, MAX_HOLD_FOR, OnUncertain, ReprocessingCheckParams, RetentionParams,
    ServiceSettings, StaleAuthorizationSweepParams, StoreSettings, TokenRotationParams, TransferSyncParams,
};

impl Settings {
    /// Reads and validates the file; a missing or broken file is a configuration failure naming it.
    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Config(format!("cannot read {}: {e}", path.display())))?;
        let base_url_override = std::env::var("ASTRA_BASE_URL").ok();
        Settings::parse(&text, base_url_override.as_deref())
            .map_err(|msg| Failure::Config(format!("{}: {msg}", path.display())).into())
    }

    /// Parses `jobs.toml` text; `base_url_override` stands for `ASTRA_BASE_URL`.
    pub fn parse(text: &str, base_url_override: Option<&str>) -> Result<Settings, String> {
        raw::parse(text, base_url_override)
    }

    pub fn job(&self, name: JobName) -> Option<&JobSettings> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// Settings of `name`, including the test-hold job when test hooks are on.
    pub fn job_settings(&self, name: JobName) -> Option<JobSettings> {
        if name == JobName::TestHold {
            return Some(test_hold_settings());
        }
        self.job(name).cloned()
    }
}

fn test_hold_settings() -> JobSettings {
    let var = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    JobSettings {
        name: JobName::TestHold,
        enabled: true,
        schedule: Schedule::parse("0 * * * * *", "UTC").expect("a valid fixed schedule"),
        catch_up: CatchUp::Latest,
        max_lateness: TimeDelta::hours(1),
        params: JobParams::TestHold {
            items: var("ASTRA_WORKER_TEST_HOLD_ITEMS", 3) as u32,
            hold: Duration::from_millis(var("ASTRA_WORKER_TEST_HOLD_MS", 100)),
        },
    }
}

/// `http://` is allowed only toward this machine (the sandbox); Astra itself is HTTPS only.
pub(crate) fn check_url(url: &Url, key: &str) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "{key}: plain http:// is refused unless the host is loopback (got {})",
            redact_url(url.as_str())
        )),
        other => Err(format!("{key}: unsupported scheme {} in {}", shown(other), redact_url(url.as_str()))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// About 20 ms of quota, at least four requests (at most the rate): the burst when `astra.burst` is not set.
/// The limiter releases half of it and leaves half to the jitter of arrivals (`astra::limiter`).
pub fn default_burst(requests_per_second: u32) -> u32 {
    requests_per_second.div_ceil(50).max(requests_per_second.clamp(1, 4))
}

#[cfg(test)]
mod tests;
