//! The guard's answer: allowed or why not, with the day's figures, freshness and the hold it placed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::GuardRequest;

/// Why the guard said no. Checked in this order; the JSON spells each in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// The fintech blocked the user (`users block`).
    UserBlocked,
    /// Astra's status of the user is `suspended` or `rejected`.
    UserSuspended,
    /// No grant, or the grant died: the user must authorize again first.
    ReauthorizationRequired,
    /// The destination named belongs to another user.
    DestinationMismatch,
    /// The destination is a client-issued card its issuer froze.
    CardFrozen,
    /// The destination is a card that cannot receive pushes.
    CardNotPushEnabled,
    /// The user's transfers were last read from Astra longer ago than `guard.max_staleness` allows.
    CounterStale,
    /// A transfer of the day could not be read: the counter cannot vouch for the day (`guard.on_uncertain`).
    CounterUncertain,
    /// The amount would pass the bank's daily depository limit for the destination's bank day.
    DailyLimit,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::UserBlocked => "user_blocked",
            DenyReason::UserSuspended => "user_suspended",
            DenyReason::ReauthorizationRequired => "reauthorization_required",
            DenyReason::DestinationMismatch => "destination_mismatch",
            DenyReason::CardFrozen => "card_frozen",
            DenyReason::CardNotPushEnabled => "card_not_push_enabled",
            DenyReason::CounterStale => "counter_stale",
            DenyReason::CounterUncertain => "counter_uncertain",
            DenyReason::DailyLimit => "daily_limit",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The hold an allowed answer placed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlacedHold {
    pub key: String,
    pub amount_cents: i64,
    pub expires_at: DateTime<Utc>,
}

/// The answer, as `astra-worker guard` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuardAnswer {
    pub allowed: bool,
    /// Why not; `null` when allowed.
    pub reason: Option<DenyReason>,
    pub user_id: String,
    pub destination_id: Option<String>,
    pub amount_cents: i64,
    pub bank_day: Option<String>,
    /// Transfers counted toward the day so far.
    pub day_total_cents: Option<i64>,
    /// Amounts held open against the day by earlier allowed requests (not yet counted).
    pub held_cents: Option<i64>,
    pub daily_limit_cents: Option<i64>,
    /// How much more may come in today: limit − counted − held (− this request, if it is allowed).
    pub headroom_cents: Option<i64>,
    /// When the block lifts by itself (the next local midnight for `daily_limit`); `null` when it needs an act.
    pub block_lifts_at: Option<DateTime<Utc>>,
    /// When the user's transfers were last read from Astra; `null`: never.
    pub as_of: Option<DateTime<Utc>>,
    /// The day's counter cannot vouch for it (a transfer could not be read); allowed only under
    /// `guard.on_uncertain = "allow"`.
    pub uncertain: bool,
    /// The hold placed for this answer (with `--hold`, when allowed).
    pub hold: Option<PlacedHold>,
    pub detail: Option<String>,
}

impl GuardAnswer {
    pub(super) fn new(req: &GuardRequest<'_>) -> GuardAnswer {
        GuardAnswer {
            allowed: true,
            reason: None,
            user_id: req.user_id.to_string(),
            destination_id: req.destination_id.map(str::to_string),
            amount_cents: req.amount.0,
            bank_day: None,
            day_total_cents: None,
            held_cents: None,
            daily_limit_cents: None,
            headroom_cents: None,
            block_lifts_at: None,
            as_of: None,
            uncertain: false,
            hold: None,
            detail: None,
        }
    }

    pub(super) fn deny(mut self, reason: DenyReason, detail: Option<String>) -> GuardAnswer {
        self.allowed = false;
        self.reason = Some(reason);
        self.detail = detail;
        self
    }
}
