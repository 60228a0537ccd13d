//! The guard: before the fintech sends a routine request, may it? Reads flags and counters by primary key
//! only: the user's block, the grant's status, the destination's limit and card flags, the day's inbound
//! counter. A limit is reached exactly when allowed: a request that brings the day's total to the limit
//! passes; one cent more does not.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    bankday::BankDay,
    mirror,
    money::Cents,
    registry::{self, Destination},
    store::Store,
    with_pool,
};

#[derive(Debug, Clone)]
pub struct GuardRequest<'a> {
    pub user_id: &'a str,
    pub amount: Cents,
    pub destination_id: Option<&'a str>,
}

/// The answer, as `astra-worker guard` prints it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GuardAnswer {
    pub allowed: bool,
    /// `daily_limit`, `card_frozen`, `card_not_push_enabled`, `user_blocked`, `user_suspended`,
    /// `reauthorization_required`; `null` when allowed.
    pub reason: Option<&'static str>,
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

    fn deny(mut self, reason: &'static str, detail: Option<String>) -> GuardAnswer {
        self.allowed = false;
        self.reason = Some(reason);
        self.detail = detail;
        self
    }
}

async fn grant_flags(store: &Store, user_id: &str) -> sqlx::Result<Option<(String, Option<String>)>> {
    with_pool!(store, |p| sqlx::query_as("SELECT status, user_status FROM grant_token WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(p)
        .await)
}

pub async fn check(store: &Store, req: &GuardRequest<'_>, now: DateTime<Utc>) -> anyhow::Result<GuardAnswer> {
    let answer = GuardAnswer::new(req);
    if let Some(reason) = registry::user_block(store, req.user_id).await? {
        return Ok(answer.deny("user_blocked", Some(reason)));
    }
    match grant_flags(store, req.user_id).await? {
        Some((_, Some(s))) if s == "suspended" || s == "rejected" => {
            return Ok(answer.deny("user_suspended", Some(format!("Astra user status {s}"))));
        }
        Some((status, _)) if status != "active" => {
            return Ok(answer.deny("reauthorization_required", Some("the user's grant died".into())));
        }
        None => return Ok(answer.deny("reauthorization_required", Some("no grant for this user".into()))),
        Some(_) => {}
    }
    let destinations = match req.destination_id {
        Some(id) => match registry::destination(store, id).await? {
            Some(d) if d.user_id == req.user_id => vec![d],
            Some(_) => {
                return Ok(answer.deny("destination_mismatch", Some("the destination belongs to another user".into())));
            }
            None => {
                let mut a = answer;
                a.detail = Some("destination not registered: no limit applies".into());
                return Ok(a);
            }
        },
        None => registry::destinations_of(store, req.user_id).await?,
    };
    // Several destinations and none named: the most restrictive answer stands.
    let mut best: Option<GuardAnswer> = None;
    for d in &destinations {
        let a = check_destination(store, answer.clone(), d, req.amount, now).await?;
        best = match best {
            None => Some(a),
            Some(b) if !a.allowed && b.allowed => Some(a),
            Some(b) if a.allowed == b.allowed && a.headroom_cents < b.headroom_cents => Some(a),
            Some(b) => Some(b),
        };
    }
    Ok(best.unwrap_or(answer))
}

async fn check_destination(
    store: &Store,
    mut a: GuardAnswer,
    d: &Destination,
    amount: Cents,
    now: DateTime<Utc>,
) -> anyhow::Result<GuardAnswer> {
    a.destination_id = Some(d.destination_id.clone());
    if d.kind == "card" && d.frozen {
        return Ok(a.deny("card_frozen", Some("the card is frozen by its issuer".into())));
    }
    if d.kind == "card" && d.push_enabled == Some(false) {
        return Ok(a.deny("card_not_push_enabled", None));
    }
    let day = BankDay::of(d.zone(), now);
    let (total, _) = mirror::counter(store, &d.destination_id, &day.key()).await?.unwrap_or((0, 0));
    let limit = d.limit().0;
    a.bank_day = Some(day.key());
    a.day_total_cents = Some(total);
    a.daily_limit_cents = Some(limit);
    let room = limit - total;
    if amount.0 > room {
        a.headroom_cents = Some(room.max(0));
        a.block_lifts_at = Some(day.end());
        let detail = format!("{} today + {} would pass the daily limit of {}", Cents(total), amount, Cents(limit));
        return Ok(a.deny("daily_limit", Some(detail)));
    }
    a.headroom_cents = Some(room - amount.0);
    Ok(a)
}
