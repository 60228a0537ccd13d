//! How the sandbox behaves where Astra's documentation is silent, and the faults it injects.

use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How the sandbox behaves where Astra's documentation is silent, and what faults it injects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    pub client_id: String,
    pub client_secret: String,
    /// When set, refreshes must carry this `redirect_uri`.
    pub redirect_uri: Option<String>,
    /// A refresh invalidates the old refresh token (Astra: undocumented; default yes).
    pub strict_rotation: bool,
    /// A new refresh token lives ten days from its refresh (Astra: undocumented; default yes).
    pub fresh_refresh_lifetime: bool,
    /// Access token lifetime (Astra: undocumented; default 7200 s).
    pub access_ttl_secs: i64,
    /// A refresh repeated with the same `Idempotency-Key` gets the pair the first one issued (Astra:
    /// undocumented for its token endpoint; default no).
    pub honor_idempotency_key: bool,
    /// Requests per second before 429 (`None`: no limit).
    pub rate_limit: Option<u32>,
    pub retry_after_secs: u64,
    /// The bank's zone, whose midnight ends a daily-limit hold.
    pub bank_time_zone: Tz,
    /// Seeds every random draw (tokens, faults).
    pub seed: u64,
    /// What `count` of `GET /v1/transfers` means (Astra: "the number of transfers returned"; undocumented
    /// whether that is the page or the total; default: the page).
    pub count_semantics: CountSemantics,
    /// How `estimated_clearing_date` is written (Astra's spec: a date-time; some answers: a date).
    pub clearing_format: ClearingFormat,
    /// Where the sandbox sends Astra's webhooks (signed with `client_secret`) when a transfer or user changes;
    /// `None`: it sends none.
    pub webhook_url: Option<String>,
    pub faults: Faults,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            client_id: "sandbox-client".into(),
            client_secret: "sandbox-secret".into(),
            redirect_uri: None,
            strict_rotation: true,
            fresh_refresh_lifetime: true,
            access_ttl_secs: 7200,
            honor_idempotency_key: false,
            rate_limit: None,
            retry_after_secs: 1,
            bank_time_zone: chrono_tz::America::New_York,
            seed: 7,
            count_semantics: CountSemantics::Page,
            clearing_format: ClearingFormat::DateTime,
            webhook_url: None,
            faults: Faults::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountSemantics {
    /// The number of transfers on this page.
    Page,
    /// The number of the user's transfers in all.
    Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearingFormat {
    /// `2020-09-17T15:12:04.746260` (no offset: UTC), as the spec types it.
    DateTime,
    /// `2020-09-17`.
    Date,
}

/// Faults, each a share of API requests (0.0 to 1.0).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fixed latency added to each request, and a uniform random extra up to `latency_jitter_ms`.
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    /// Answer 500/503 instead.
    pub error_rate: f64,
    /// Hang past any client timeout (for `hang_ms`), then answer 504.
    pub hang_rate: f64,
    pub hang_ms: u64,
    /// Apply a refresh's rotation, then lose its answer (hang, as above).
    pub lost_refresh_rate: f64,
    /// Replace a successful body with a malformed one, of one of `malformed_kinds`.
    pub malformed_rate: f64,
    pub malformed_kinds: Vec<MalformedKind>,
    /// Transfers (by id) served with an amount that is not a number, wherever they are listed or read.
    pub unreadable_transfers: Vec<String>,
    /// `GET /v1/transfers` ignores `offset`: every page repeats the first.
    pub ignore_offset: bool,
    /// Each answer is held back up to this long after the request was applied (uniformly drawn): answers
    /// return late and out of order.
    pub late_answer_ms: u64,
    /// …and at least this long (`late_answer_ms` equal to it: every answer exactly this late).
    pub late_answer_min_ms: u64,
    /// Each webhook is sent this many extra times (Astra retries with the same `webhook_id`).
    pub webhook_duplicates: u32,
    /// Each copy of a webhook is sent after a random delay up to this long: webhooks arrive late and out of order.
    pub webhook_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// The JSON cut in half.
    Truncated,
    /// An HTML error page with status 200.
    Html,
    /// An empty body.
    Empty,
    /// `{}`: every field missing.
    MissingFields,
}

/// A hang long enough to pass any sane client timeout, unless configured.
pub(super) fn hang_for(f: &Faults) -> Duration {
    Duration::from_millis(if f.hang_ms == 0 { 60_000 } else { f.hang_ms })
}
