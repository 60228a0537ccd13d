//! The guard: before the fintech sends a routine request, may it? One query, by primary keys only: the
//! user's block, the grant's status, the destination's limit and card flags, the day's inbound counter (for
//! the three dates the bank's day can be, read in its zone afterwards). A limit is reached exactly when allowed: a request that brings the day's total to the limit
//! passes; one cent more does not.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::instrument;

use super::registry::{Destination, DestinationKind, DestinationRow};
use crate::{
    astra::UserStatus,
    domain::{BankDay, Cents},
    store::{Store, with_pool},
    tokens::GrantStatus,
};

#[derive(Debug, Clone)]
pub struct GuardRequest<'a> {
    pub user_id: &'a str,
    pub amount: Cents,
    pub destination_id: Option<&'a str>,
}

/// Why the guard said no. Checked in this order; the JSON spells each in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
            DenyReason::DailyLimit => "daily_limit",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The answer, as `astra-worker guard` prints it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GuardAnswer {
    pub allowed: bool,
    /// Why not; `null` when allowed.
    pub reason: Option<DenyReason>,
    pub user_id: String,
    pub destination_id: Option<String>,
    pub amount_cents: i64,
    pub bank_day: Option<String>,
    pub day_total_cents: Option<i64>,
    pub daily_limit_cents: Option<i64>,
    /// How much more may come in today (after this request if it is allowed).
    pub headroom_cents: Option<i64>,
    /// When the block lifts by itself (the next local midnight for `daily_limit`); `null` when it needs an act.
    pub block_lifts_at: Option<DateTime<Utc>>,
    pub detail: Option<String>,
}

impl GuardAnswer {
    fn new(req: &GuardRequest<'_>) -> GuardAnswer {
        GuardAnswer {
            allowed: true,
            reason: None,
            user_id: req.user_id.to_string(),
            destination_id: req.destination_id.map(str::to_string),
            amount_cents: req.amount.0,
            bank_day: None,
            day_total_cents: None,
            daily_limit_cents: None,
            headroom_cents: None,
            block_lifts_at: None,
            detail: None,
        }
    }

    fn deny(mut self, reason: DenyReason, detail: Option<String>) -> GuardAnswer {
        self.allowed = false;
        self.reason = Some(reason);
        self.detail = detail;
        self
    }
}

/// Everything the guard needs about one user (and each destination considered), in one round trip.
#[derive(Debug, sqlx::FromRow)]
struct Facts {
    grant_status: Option<String>,
    user_status: Option<String>,
    block_reason: Option<String>,
    destination_id: Option<String>,
    dest_user_id: Option<String>,
    kind: Option<String>,
    bank_time_zone: Option<String>,
    daily_limit_cents: Option<i64>,
    frozen: Option<bool>,
    push_enabled: Option<bool>,
    pull_enabled: Option<bool>,
    bank_day: Option<String>,
    total_cents: Option<i64>,
}

async fn facts(store: &Store, user_id: &str, destination: Option<&str>, days: [String; 3]) -> sqlx::Result<Vec<Facts>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT g.status AS grant_status, g.user_status, b.reason AS block_reason, d.destination_id,
                d.user_id AS dest_user_id, d.kind, d.bank_time_zone, d.daily_limit_cents, d.frozen, d.push_enabled,
                d.pull_enabled, i.bank_day, i.total_cents
         FROM (SELECT CAST($1 AS TEXT) AS user_id) u
         LEFT JOIN grant_token g ON g.user_id = u.user_id
         LEFT JOIN user_block b ON b.user_id = u.user_id
         LEFT JOIN destination d ON (($2 IS NULL AND d.user_id = u.user_id) OR d.destination_id = $2)
         LEFT JOIN inbound_day i ON i.destination_id = d.destination_id AND i.bank_day IN ($3, $4, $5)"
    )
    .bind(user_id)
    .bind(destination)
    .bind(&days[0])
    .bind(&days[1])
    .bind(&days[2])
    .fetch_all(p)
    .await)
}

#[instrument(name = "guard", skip_all, fields(user_id = %req.user_id))]
pub async fn check(store: &Store, req: &GuardRequest<'_>, now: DateTime<Utc>) -> anyhow::Result<GuardAnswer> {
    let answer = GuardAnswer::new(req);
    // The bank's day is the UTC date, the day before, or the day after, whatever its zone.
    let today = now.date_naive();
    let days = [today.pred_opt().unwrap_or(today), today, today.succ_opt().unwrap_or(today)]
        .map(|d| d.format("%Y-%m-%d").to_string());
    let rows = facts(store, req.user_id, req.destination_id, days).await?;
    let Some(first) = rows.first() else {
        return Ok(answer.deny(DenyReason::ReauthorizationRequired, Some("no grant for this user".into())));
    };
    if let Some(reason) = &first.block_reason {
        return Ok(answer.deny(DenyReason::UserBlocked, Some(reason.clone())));
    }
    match (&first.grant_status, &first.user_status) {
        (Some(_), Some(s)) if UserStatus::parse(s).is_some_and(UserStatus::is_barred) => {
            return Ok(answer.deny(DenyReason::UserSuspended, Some(format!("Astra user status {s}"))));
        }
        (Some(status), _) if GrantStatus::parse(status) != Some(GrantStatus::Active) => {
            return Ok(answer.deny(DenyReason::ReauthorizationRequired, Some("the user's grant died".into())));
        }
        (None, _) => return Ok(answer.deny(DenyReason::ReauthorizationRequired, Some("no grant for this user".into()))),
        _ => {}
    }
    // One destination per id, with the counter of its own bank day.
    let mut destinations: Vec<(Destination, i64)> = Vec::new();
    for r in &rows {
        let Some(id) = &r.destination_id else { continue };
        let d = DestinationRow {
            destination_id: id.clone(),
            user_id: r.dest_user_id.clone().unwrap_or_default(),
            kind: r.kind.clone().unwrap_or_default(),
            bank_time_zone: r.bank_time_zone.clone().unwrap_or_default(),
            daily_limit_cents: r.daily_limit_cents.unwrap_or(0),
            frozen: r.frozen.unwrap_or(false),
            push_enabled: r.push_enabled,
            pull_enabled: r.pull_enabled,
        }
        .parse()?;
        let day = BankDay::of(d.zone(), now).key();
        let total = if r.bank_day.as_deref() == Some(day.as_str()) { r.total_cents.unwrap_or(0) } else { 0 };
        match destinations.iter_mut().find(|(x, _)| x.destination_id == *id) {
            Some((_, t)) => *t = (*t).max(total),
            None => destinations.push((d, total)),
        }
    }
    if let Some(id) = req.destination_id {
        match destinations.first() {
            Some((d, _)) if d.user_id != req.user_id => {
                return Ok(answer
                    .deny(DenyReason::DestinationMismatch, Some("the destination belongs to another user".into())));
            }
            None => {
                let mut a = answer;
                a.detail = Some(format!("destination {id} not registered: no limit applies"));
                return Ok(a);
            }
            Some(_) => {}
        }
    }
    // Several destinations and none named: the most restrictive answer stands.
    let mut best: Option<GuardAnswer> = None;
    for (d, total) in &destinations {
        let a = check_destination(answer.clone(), d, *total, req.amount, now);
        best = match best {
            None => Some(a),
            Some(b) if !a.allowed && b.allowed => Some(a),
            Some(b) if a.allowed == b.allowed && a.headroom_cents < b.headroom_cents => Some(a),
            Some(b) => Some(b),
        };
    }
    Ok(best.unwrap_or(answer))
}

fn check_destination(
    mut a: GuardAnswer,
    d: &Destination,
    total: i64,
    amount: Cents,
    now: DateTime<Utc>,
) -> GuardAnswer {
    a.destination_id = Some(d.destination_id.clone());
    if d.kind == DestinationKind::Card && d.frozen {
        return a.deny(DenyReason::CardFrozen, Some("the card is frozen by its issuer".into()));
    }
    if d.kind == DestinationKind::Card && d.push_enabled == Some(false) {
        return a.deny(DenyReason::CardNotPushEnabled, None);
    }
    let day = BankDay::of(d.zone(), now);
    let limit = d.limit().0;
    a.bank_day = Some(day.key());
    a.day_total_cents = Some(total);
    a.daily_limit_cents = Some(limit);
    let room = limit - total;
    if amount.0 > room {
        a.headroom_cents = Some(room.max(0));
        a.block_lifts_at = Some(day.end());
        let detail = format!("{} today + {} would pass the daily limit of {}", Cents(total), amount, Cents(limit));
        return a.deny(DenyReason::DailyLimit, Some(detail));
    }
    a.headroom_cents = Some(room - amount.0);
    a
}
