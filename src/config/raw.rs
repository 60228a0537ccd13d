//! The shape of `jobs.toml` as serde reads it, and its validation into [`super::Settings`] (each job's own
//! settings and their defaults are in `params`).

use std::time::Duration;

use chrono::TimeDelta;
use serde::Deserialize;
use toml::Spanned;

use super::{
    AstraSettings, JobName, JobParams, JobSettings, OutboxSettings, RunnerSettings, Settings, check_url, default_burst,
    params::{
        GuardSettings, InboundVolumeParams, MAX_HOLD_FOR, MAX_SERVICE_TIMEOUT, POSTGRES_CONNECTIONS,
        ReprocessingCheckParams, RetentionParams, ServiceSettings, StaleAuthorizationSweepParams, StoreSettings,
        TokenRotationParams, TransferSyncParams, delta, duration, opt_duration,
    },
};
use crate::domain::{Schedule, time::parse_zone};

/// Default request timeout toward the fintech's outbox endpoint.
const DEFAULT_OUTBOX_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    runner: Runner,
    astra: Astra,
    #[serde(default)]
    outbox: Outbox,
    #[serde(default)]
    guard: GuardSettings,
    #[serde(default)]
    service: ServiceSettings,
    #[serde(default)]
    store: StoreSettings,
    jobs: Jobs,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Outbox {
    endpoint: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "opt_duration")]
    request_timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Runner {
    #[serde(default = "d_grace", deserialize_with = "duration")]
    grace_period: Duration,
    #[serde(default = "d_lease", deserialize_with = "delta")]
    claim_lease: TimeDelta,
}

impl Default for Runner {
    fn default() -> Self {
        Runner { grace_period: d_grace(), claim_lease: d_lease() }
    }
}

fn d_grace() -> Duration {
    Duration::from_secs(20)
}
fn d_lease() -> TimeDelta {
    TimeDelta::minutes(2)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Astra {
    #[serde(default = "d_base_url")]
    base_url: Spanned<String>,
    #[serde(default = "d_authorize_url")]
    authorize_url: Spanned<String>,
    redirect_uri: Spanned<String>,
    requests_per_second: Spanned<u32>,
    /// Requests admitted at once; 0 or absent means about 20 ms of quota (at least 1).
    #[serde(default)]
    burst: u32,
    #[serde(default = "d_connect", deserialize_with = "duration")]
    connect_timeout: Duration,
    #[serde(default = "d_request", deserialize_with = "duration")]
    request_timeout: Duration,
    #[serde(default = "d_retries")]
    max_retries: u32,
    #[serde(default = "d_budget", deserialize_with = "duration")]
    retry_budget: Duration,
    #[serde(default = "d_margin", deserialize_with = "delta")]
    access_margin: TimeDelta,
}

fn d_margin() -> TimeDelta {
    TimeDelta::minutes(5)
}

fn d_base_url() -> Spanned<String> {
    Spanned::new(0..0, "https://api.astra.finance".into())
}
fn d_authorize_url() -> Spanned<String> {
    Spanned::new(0..0, "https://app.astra.finance/login/oauth/authorize".into())
}
fn d_connect() -> Duration {
    Duration::from_secs(5)
}
fn d_request() -> Duration {
    Duration::from_secs(30)
}
fn d_retries() -> u32 {
    3
}
fn d_budget() -> Duration {
    Duration::from_secs(30)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Jobs {
    token_rotation: Option<Job<TokenRotationParams>>,
    inbound_volume: Option<Job<InboundVolumeParams>>,
    transfer_sync: Option<Job<TransferSyncParams>>,
    reprocessing_check: Option<Job<ReprocessingCheckParams>>,
    stale_authorization_sweep: Option<Job<StaleAuthorizationSweepParams>>,
    retention: Option<Job<RetentionParams>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Job<P> {
    #[serde(default = "d_true")]
    enabled: bool,
    schedule: Spanned<String>,
    time_zone: Spanned<String>,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(deserialize_with = "delta")]
    max_lateness: TimeDelta,
    #[serde(default)]
    settings: P,
}

fn d_true() -> bool {
    true
}

/// What to do with slots missed while nothing ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CatchUp {
    /// Run only the latest slot (if it is within `max_lateness`).
    #[default]
    Latest,
    /// Run every slot within `max_lateness` that has not succeeded, oldest first.
    All,
}

/// Where a value sits: "line N" for a value read from the file.
struct Locator<'a>(&'a str);

impl Locator<'_> {
    fn at<T>(&self, key: &str, v: &Spanned<T>) -> String {
        let start = v.span().start;
        if v.span().is_empty() {
            return key.to_string();
        }
        let line = self.0[..start.min(self.0.len())].matches('\n').count() + 1;
        format!("{key} (line {line})")
    }
}

/// A TOML error on one line: where, and what, with any quoted value redacted; of the line it is on only the key
/// is quoted, cut (a secret pasted into the file must not reach a log, and a line may be any length).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let what = crate::secrets::redact_quoted(&e.message().trim_end().replace('\n', " "));
    let Some(before) = e.span().and_then(|s| text.get(..s.start)) else { return what };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    // The key or the table header the error is at; never a value, nor a line that is neither.
    let source = text.lines().nth(line - 1).unwrap_or_default().trim();
    let at = match source.split_once('=') {
        Some((key, _)) => Some(key.trim()),
        None => source.starts_with('[').then_some(source),
    };
    match at {
        Some(at) => format!("line {line}, column {column}: {what} (at {})", crate::secrets::shown(at)),
        None => format!("line {line}, column {column}: {what}"),
    }
}

pub(super) fn parse(text: &str, base_url_override: Option<&str>) -> Result<Settings, String> {
    let file: File = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let loc = Locator(text);
    let a = file.astra;

    let base_url = match base_url_override {
        Some(u) => parse_url("ASTRA_BASE_URL", u)?,
        None => parse_url(&loc.at("astra.base_url", &a.base_url), a.base_url.get_ref())?,
    };
    let authorize_url = parse_url(&loc.at("astra.authorize_url", &a.authorize_url), a.authorize_url.get_ref())?;
    let redirect_key = loc.at("astra.redirect_uri", &a.redirect_uri);
    parse_url(&redirect_key, a.redirect_uri.get_ref())?;
    let rps = *a.requests_per_second.get_ref();
    if rps == 0 {
        return Err(format!("{}: must be at least 1", loc.at("astra.requests_per_second", &a.requests_per_second)));
    }
    for (key, d) in [("astra.connect_timeout", a.connect_timeout), ("astra.request_timeout", a.request_timeout)] {
        if d.is_zero() {
            return Err(format!("{key}: must be longer than zero"));
        }
    }
    let astra = AstraSettings {
        base_url,
        authorize_url,
        redirect_uri: a.redirect_uri.into_inner(),
        requests_per_second: rps,
        burst: if a.burst == 0 { default_burst(rps) } else { a.burst },
        connect_timeout: a.connect_timeout,
        request_timeout: a.request_timeout,
        max_retries: a.max_retries,
        retry_budget: a.retry_budget,
        access_margin: a.access_margin,
    };
    let endpoint = match &file.outbox.endpoint {
        Some(e) => Some(parse_url(&loc.at("outbox.endpoint", e), e.get_ref())?),
        None => None,
    };
    let outbox =
        OutboxSettings { endpoint, request_timeout: file.outbox.request_timeout.unwrap_or(DEFAULT_OUTBOX_TIMEOUT) };
    if outbox.request_timeout.is_zero() {
        return Err("outbox.request_timeout: must be longer than zero".into());
    }
    if file.runner.claim_lease < TimeDelta::seconds(5) {
        return Err("runner.claim_lease: must be at least 5s".into());
    }

    let mut jobs = Vec::new();
    let j = file.jobs;
    push(&mut jobs, &loc, JobName::TokenRotation, j.token_rotation, |p| {
        if p.concurrency == 0 || p.batch_size == 0 {
            return Err("settings.concurrency and settings.batch_size must be at least 1".into());
        }
        Ok(JobParams::TokenRotation(p))
    })?;
    push(&mut jobs, &loc, JobName::InboundVolume, j.inbound_volume, |p| {
        if p.warn_percent == 0 || p.warn_percent > 100 {
            return Err(format!("settings.warn_percent must be between 1 and 100 (got {})", p.warn_percent));
        }
        if p.page_size == 0 || p.max_pages == 0 || p.concurrency == 0 {
            return Err("settings.page_size, settings.max_pages and settings.concurrency must be at least 1".into());
        }
        Ok(JobParams::InboundVolume(p))
    })?;
    push(&mut jobs, &loc, JobName::TransferSync, j.transfer_sync, |p| {
        if p.page_size == 0 || p.max_pages == 0 || p.concurrency == 0 {
            return Err("settings.page_size, settings.max_pages and settings.concurrency must be at least 1".into());
        }
        Ok(JobParams::TransferSync(p))
    })?;
    push(&mut jobs, &loc, JobName::ReprocessingCheck, j.reprocessing_check, |p| Ok(JobParams::ReprocessingCheck(p)))?;
    push(&mut jobs, &loc, JobName::StaleAuthorizationSweep, j.stale_authorization_sweep, |p| {
        if p.danger_window <= TimeDelta::zero() {
            return Err("settings.danger_window must be longer than zero".into());
        }
        Ok(JobParams::StaleAuthorizationSweep(p))
    })?;
    push(&mut jobs, &loc, JobName::Retention, j.retention, |p| {
        for (key, keep) in [
            ("api_calls", p.api_calls),
            ("webhooks", p.webhooks),
            ("holds", p.holds),
            ("job_runs", p.job_runs),
            ("refresh_intents", p.refresh_intents),
        ] {
            if keep < TimeDelta::days(1) {
                return Err(format!("settings.{key} must be at least 1d (got {}s)", keep.num_seconds()));
            }
        }
        // A transfer ends at most one hold because the hold it ended names it: forgotten sooner than the
        // longest hold lasts, that hold would let the transfer end a second one still open.
        let holds_min = MAX_HOLD_FOR + TimeDelta::days(1);
        if p.holds < holds_min {
            return Err(format!(
                "settings.holds must be at least {}d, longer than the longest hold (got {}s)",
                holds_min.num_days(),
                p.holds.num_seconds()
            ));
        }
        if p.batch_size == 0 {
            return Err("settings.batch_size must be at least 1".into());
        }
        Ok(JobParams::Retention(p))
    })?;
    // A slot claim is kept longer than any job could still catch its slot up.
    let latest_catch_up = jobs.iter().map(|j| j.max_lateness).max().unwrap_or_default();
    if let Some(JobParams::Retention(p)) = jobs.iter().map(|j| &j.params).find(|p| matches!(p, JobParams::Retention(_)))
        && p.job_runs <= latest_catch_up
    {
        return Err(format!(
            "jobs.retention.settings.job_runs must be longer than every job's max_lateness (the longest is {}s)",
            latest_catch_up.num_seconds()
        ));
    }

    if file.guard.hold_for <= TimeDelta::zero() || file.guard.hold_for > MAX_HOLD_FOR {
        return Err(format!("guard.hold_for: must be longer than zero and at most {}d", MAX_HOLD_FOR.num_days()));
    }
    for (key, t) in [("header_timeout", file.service.header_timeout), ("body_timeout", file.service.body_timeout)] {
        if t.is_zero() || t > MAX_SERVICE_TIMEOUT {
            return Err(format!(
                "service.{key}: must be longer than zero and at most {}s",
                MAX_SERVICE_TIMEOUT.as_secs()
            ));
        }
    }
    if !POSTGRES_CONNECTIONS.contains(&file.store.postgres_connections) {
        return Err(format!(
            "store.postgres_connections: must be from {} to {} (got {})",
            POSTGRES_CONNECTIONS.start(),
            POSTGRES_CONNECTIONS.end(),
            file.store.postgres_connections
        ));
    }
    Ok(Settings {
        guard: file.guard,
        service: file.service,
        store: file.store,
        runner: RunnerSettings { grace_period: file.runner.grace_period, claim_lease: file.runner.claim_lease },
        astra,
        outbox,
        jobs,
    })
}

fn push<P>(
    jobs: &mut Vec<JobSettings>,
    loc: &Locator<'_>,
    name: JobName,
    job: Option<Job<P>>,
    params: impl FnOnce(P) -> Result<JobParams, String>,
) -> Result<(), String> {
    let Some(job) = job else { return Ok(()) };
    let key = format!("jobs.{name}");
    let zone_key = loc.at(&format!("{key}.time_zone"), &job.time_zone);
    parse_zone(job.time_zone.get_ref()).map_err(|e| format!("{zone_key}: {e}"))?;
    let sched_key = loc.at(&format!("{key}.schedule"), &job.schedule);
    let schedule =
        Schedule::parse(job.schedule.get_ref(), job.time_zone.get_ref()).map_err(|e| format!("{sched_key}: {e}"))?;
    if job.max_lateness <= TimeDelta::zero() {
        return Err(format!("{key}.max_lateness: must be longer than zero"));
    }
    let params = params(job.settings).map_err(|e| format!("{key}.{e}"))?;
    jobs.push(JobSettings {
        name,
        enabled: job.enabled,
        schedule,
        catch_up: job.catch_up,
        max_lateness: job.max_lateness,
        params,
    });
    Ok(())
}

fn parse_url(key: &str, s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{key}: not a URL ({e})"))?;
    check_url(&url, key)?;
    Ok(url)
}
