//! Each job's own settings and the guard's, with their defaults: the one place a default is written.

use std::time::Duration;

use chrono::TimeDelta;
use serde::{Deserialize, Deserializer};

use crate::domain::time::parse_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenRotationParams {
    /// Rotate grants whose refresh token expires before the next slot plus this margin.
    #[serde(deserialize_with = "delta")]
    pub safety_margin: TimeDelta,
    /// The most grants refreshed at once: the limiter's pace keeps fewer in flight when fewer use the rate.
    pub concurrency: u32,
    /// Grants claimed per batch.
    pub batch_size: u32,
    /// After a rotation, read `GET /v1/user` to learn whether the user is suspended or rejected…
    pub read_user_status: bool,
    /// …when the status was last read longer ago than this (the request budget goes to rotations first).
    #[serde(deserialize_with = "delta")]
    pub user_status_max_age: TimeDelta,
}

impl Default for TokenRotationParams {
    fn default() -> Self {
        TokenRotationParams {
            safety_margin: TimeDelta::hours(72),
            concurrency: 512,
            batch_size: 200,
            read_user_status: true,
            user_status_max_age: TimeDelta::days(3),
        }
    }
}

/// The longest a hold may last (`--hold-for`, `hold_for`).
pub const MAX_HOLD_FOR: TimeDelta = TimeDelta::days(7);

/// `[guard]`: how the guard answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    /// Deny with `counter_stale` when the user's transfers were last read from Astra longer ago than this (or
    /// never). Off when absent.
    #[serde(deserialize_with = "opt_delta")]
    pub max_staleness: Option<TimeDelta>,
    /// What to answer when the day's counter is uncertain (a transfer could not be read): `deny` (the
    /// default, with `counter_uncertain`) or `allow` (flagged `uncertain`).
    pub on_uncertain: OnUncertain,
    /// How long a hold lasts when the caller gives no `--hold-for`.
    #[serde(deserialize_with = "delta")]
    pub hold_for: TimeDelta,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings { max_staleness: None, on_uncertain: OnUncertain::Deny, hold_for: TimeDelta::hours(1) }
    }
}

/// `[service]`: how long the HTTP service (`serve`, `run --listen`) waits for a client. A connection is closed
/// when a request's head (its line and headers) has not arrived within `header_timeout` of the first wait for it,
/// an idle kept-alive connection included (so the default, 75 s, is longer than the idle timeout of the proxies
/// usually in front, 60 s for nginx's upstream keep-alive and AWS's load balancers: a proxy must never send a
/// request on a connection the service is closing); a request whose body has not arrived within `body_timeout`
/// of its head is answered 408. So a client that opens connections and sends slowly, or not at all, holds none
/// of them for long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings { header_timeout: Duration::from_secs(75), body_timeout: Duration::from_secs(30) }
    }
}

/// `[store]`: how a process that lives long (`serve`, the daemon) keeps its PostgreSQL connections. It opens
/// `postgres_connections` at its start and keeps them (see [`crate::store::Lives::Long`]). PostgreSQL runs each
/// connection's statement on one core: where its CPU is what limits, connections beyond a few per core only
/// queue in its scheduler, and the guard's answers wait there (README, "Performance": on a 2-core host running
/// the service and the database, 6 served more than 16 at saturation, with a lower p99 at half the load); a
/// database across a network needs more, to cover the round trips. The store's URL is named apart (`--database-url`, `DATABASE_URL`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub postgres_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings { postgres_connections: crate::store::PG_CONNECTIONS }
    }
}

/// The fewest and the most connections `store.postgres_connections` may name. No path holds a connection while
/// it waits for another, so one would not deadlock; two let a job's statement and a guard's read run at once.
/// Nothing is kept back for the guard: in `run --listen` the jobs and the service share the pool, first come,
/// first served.
pub(super) const POSTGRES_CONNECTIONS: std::ops::RangeInclusive<u32> = 2..=200;

/// The longest a `[service]` timeout may be.
pub(super) const MAX_SERVICE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUncertain {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferSyncParams {
    /// Read back this far before the newest transfer already seen (a transfer Astra lists late still counts).
    #[serde(deserialize_with = "delta")]
    pub overlap: TimeDelta,
    /// How far back a user never read before is read.
    #[serde(deserialize_with = "delta")]
    pub lookback: TimeDelta,
    /// Transfers asked for per page.
    pub page_size: u32,
    /// Pages read per user at most (the run is partial when a listing is cut there).
    pub max_pages: u32,
    /// The most users read at once (the limiter's pace keeps fewer in flight when fewer use the rate).
    pub concurrency: u32,
}

impl Default for TransferSyncParams {
    fn default() -> Self {
        TransferSyncParams {
            overlap: TimeDelta::hours(1),
            lookback: TimeDelta::days(1),
            page_size: 100,
            max_pages: 50,
            concurrency: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundVolumeParams {
    /// Warn when a day's inbound total reaches this share of the limit, in percent.
    pub warn_percent: u8,
    /// How far back each user's transfers are mirrored.
    #[serde(deserialize_with = "delta")]
    pub lookback: TimeDelta,
    /// Transfers asked for per page.
    pub page_size: u32,
    /// Pages read per user at most (the run is partial when a listing is cut there).
    pub max_pages: u32,
    /// The most users mirrored at once (the limiter's pace keeps fewer in flight when fewer use the rate).
    pub concurrency: u32,
}

impl Default for InboundVolumeParams {
    fn default() -> Self {
        InboundVolumeParams {
            warn_percent: 80,
            lookback: TimeDelta::days(3),
            page_size: 100,
            max_pages: 50,
            concurrency: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReprocessingCheckParams {
    /// A transfer debited but not credited for longer than this gets one `transfer_stuck` follow-up.
    #[serde(deserialize_with = "delta")]
    pub stuck_after: TimeDelta,
    /// Transfers that landed within this are re-read too, to catch a failure after landing.
    #[serde(deserialize_with = "delta")]
    pub watch_landed_for: TimeDelta,
}

impl Default for ReprocessingCheckParams {
    fn default() -> Self {
        ReprocessingCheckParams { stuck_after: TimeDelta::hours(72), watch_landed_for: TimeDelta::days(60) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaleAuthorizationSweepParams {
    /// Grants this close to expiry that rotation has not renewed get one rescue attempt.
    #[serde(deserialize_with = "delta")]
    pub danger_window: TimeDelta,
    /// An unanswered re-authorization prompt is sent again after this long.
    #[serde(deserialize_with = "delta")]
    pub reprompt_after: TimeDelta,
}

impl Default for StaleAuthorizationSweepParams {
    fn default() -> Self {
        StaleAuthorizationSweepParams { danger_window: TimeDelta::hours(48), reprompt_after: TimeDelta::hours(72) }
    }
}

/// `retention`: how long rows whose work is over are kept before the job forgets them. Money records (the
/// transfer mirror, its events, the day counters and decisions) and the outbox (its keys keep each follow-up
/// to one) are never forgotten.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionParams {
    /// Astra calls in the call log (`api_call`).
    #[serde(deserialize_with = "delta")]
    pub api_calls: TimeDelta,
    /// Processed webhooks (`webhook_inbox`): a redelivery of one forgotten is processed again, idempotently.
    #[serde(deserialize_with = "delta")]
    pub webhooks: TimeDelta,
    /// Ended holds (`guard_hold`): a hold key used again after this places a new hold.
    #[serde(deserialize_with = "delta")]
    pub holds: TimeDelta,
    /// Finished job runs and their slot claims (longer than every job's `max_lateness`, so no slot it could
    /// still catch up is forgotten).
    #[serde(deserialize_with = "delta")]
    pub job_runs: TimeDelta,
    /// Closed refresh intents (`refresh_intent`).
    #[serde(deserialize_with = "delta")]
    pub refresh_intents: TimeDelta,
    /// Rows deleted per statement (and commit), so no lock is held long.
    pub batch_size: u32,
}

impl Default for RetentionParams {
    fn default() -> Self {
        RetentionParams {
            api_calls: TimeDelta::days(30),
            webhooks: TimeDelta::days(14),
            holds: TimeDelta::days(30),
            job_runs: TimeDelta::days(90),
            refresh_intents: TimeDelta::days(90),
            batch_size: 5000,
        }
    }
}

pub(super) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let t = delta(d)?;
    t.to_std().map_err(|_| serde::de::Error::custom("a duration must not be negative"))
}

fn opt_delta<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TimeDelta>, D::Error> {
    delta(d).map(Some)
}

pub(super) fn delta<'de, D: Deserializer<'de>>(d: D) -> Result<TimeDelta, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}
