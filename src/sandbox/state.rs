//! The sandbox's world: users, grants with strict rotation, transfers with reprocessing, cards, its clock,
//! and the log of every call. All behaviour lives here; the HTTP layer only translates.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ClearingFormat, CountSemantics, SandboxSettings};
use crate::{
    astra::{TransferStatus, UserStatus, model::format_time},
    domain::money::Cents,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRec {
    pub id: String,
    pub status: UserStatus,
    pub phone: Option<String>,
    pub email: Option<String>,
}

#[derive(Debug, Clone)]
struct GrantRec {
    refresh_token: String,
    refresh_expires: DateTime<Utc>,
    access_token: String,
    access_expires: DateTime<Utc>,
    refreshes: u32,
    revoked: bool,
}

/// A refresh token the sandbox still knows: whose, and until when.
#[derive(Debug, Clone)]
struct RefreshRec {
    user_id: String,
    expires: DateTime<Utc>,
}

/// Why a pending transfer is held: Astra debited the source but cannot credit the destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// The bank's daily depository limit: credited once this bank day ends.
    DailyLimit { clears_at: DateTime<Utc> },
    /// A frozen client-issued card: credited once it is unfrozen.
    CardFrozen { card_id: String },
}

#[derive(Debug, Clone)]
pub struct TransferRec {
    pub id: String,
    pub user_id: String,
    pub routine_id: Option<String>,
    pub routine_type: Option<String>,
    /// The integrator's id, as given when the routine was created.
    pub client_correlation_id: Option<String>,
    pub source_id: Option<String>,
    pub destination_id: Option<String>,
    pub amount: Cents,
    pub payment_type: String,
    pub initiated: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub estimated_clearing_date: NaiveDate,
    pub status: TransferStatus,
    pub hold: Option<Hold>,
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CardRec {
    pub id: String,
    pub user_id: String,
    pub status: String,
    pub push_enabled: bool,
    pub pull_enabled: bool,
    #[serde(skip)]
    pub frozen: bool,
}

/// One call the sandbox answered, for tests to count.
#[derive(Debug, Clone, Serialize)]
pub struct CallRec {
    pub at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub user_id: Option<String>,
}

/// What the admin surface tells about one user's grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantInfo {
    pub user_id: String,
    pub refreshes: u32,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
    pub access_token: String,
    pub access_expires_at: DateTime<Utc>,
    pub revoked: bool,
}

mod oauth;
mod webhooks;
pub use oauth::{CODE_LIFETIME, TokenAnswer};

/// The maps are `BTreeMap`s: a `HashMap` grows by rehashing every entry at once (at 229,376 refresh tokens,
/// 100 ms and more here), and with the state locked that stalls every request, so arrivals are counted in a
/// bunch afterwards; a B-tree grows a node at a time.
pub struct State {
    pub settings: SandboxSettings,
    clock_offset: TimeDelta,
    users: BTreeMap<String, UserRec>,
    grants: BTreeMap<String, GrantRec>,
    refresh_index: BTreeMap<String, RefreshRec>,
    access_index: BTreeMap<String, String>,
    transfers: Vec<TransferRec>,
    transfer_index: BTreeMap<String, usize>,
    cards: BTreeMap<String, CardRec>,
    /// Token answers by `Idempotency-Key` (with the refresh token they answered), with `honor_idempotency_key`.
    idempotent_answers: BTreeMap<String, (String, Value)>,
    /// Authorization codes minted by the admin: the user, and when the code stops working (once used, gone).
    codes: BTreeMap<String, (String, DateTime<Utc>)>,
    /// Webhooks waiting to be sent (with `webhook_url`).
    outgoing: Vec<Value>,
    pub calls: Vec<CallRec>,
    window: VecDeque<std::time::Instant>,
    pub max_in_one_second: usize,
    /// The longest this state was held locked by one request of the HTTP surface (every other request waits).
    pub longest_hold: std::time::Duration,
    /// The users of refreshes applied whose answer never reached the caller whole (lost, or its body spoiled):
    /// the only grants a caller may have lost.
    pub spoiled_token_answers: Vec<String>,
    /// Every token and code ever issued, live or dead: what must never show in a caller's logs.
    pub issued_tokens: Vec<String>,
    pub rng: StdRng,
    next_id: u64,
}

impl State {
    pub fn new(settings: SandboxSettings) -> State {
        let rng = StdRng::seed_from_u64(settings.seed);
        State {
            settings,
            clock_offset: TimeDelta::zero(),
            users: BTreeMap::new(),
            grants: BTreeMap::new(),
            refresh_index: BTreeMap::new(),
            idempotent_answers: BTreeMap::new(),
            codes: BTreeMap::new(),
            outgoing: Vec::new(),
            access_index: BTreeMap::new(),
            transfers: Vec::new(),
            transfer_index: BTreeMap::new(),
            cards: BTreeMap::new(),
            calls: Vec::new(),
            window: VecDeque::new(),
            max_in_one_second: 0,
            longest_hold: std::time::Duration::ZERO,
            spoiled_token_answers: Vec::new(),
            issued_tokens: Vec::new(),
            rng,
            next_id: 0,
        }
    }

    /// The sandbox's clock: real time plus what the admin moved it by.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    pub fn advance_clock(&mut self, by: TimeDelta) -> DateTime<Utc> {
        self.clock_offset += by;
        self.now()
    }

    fn token(&mut self, prefix: &str) -> String {
        let a: u128 = self.rng.random();
        let t = format!("{prefix}_{a:032x}");
        self.issued_tokens.push(t.clone());
        t
    }

    pub fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        let r: u32 = self.rng.random();
        format!("{prefix}{:08x}{:08x}", self.next_id, r)
    }

    /// Counts an arriving API request; true when it is over the configured rate (answer 429).
    pub fn arrive(&mut self) -> bool {
        let now = std::time::Instant::now();
        while self.window.front().is_some_and(|t| now.duration_since(*t) >= std::time::Duration::from_secs(1)) {
            self.window.pop_front();
        }
        let over = self.settings.rate_limit.is_some_and(|r| self.window.len() >= r as usize);
        self.window.push_back(now);
        self.max_in_one_second = self.max_in_one_second.max(self.window.len());
        over
    }

    pub fn log_call(&mut self, method: &str, path: &str, status: u16, user_id: Option<String>) {
        let at = self.now();
        self.calls.push(CallRec { at, method: method.into(), path: path.into(), status, user_id });
    }

    pub fn upsert_user(&mut self, u: UserRec) {
        self.users.insert(u.id.clone(), u);
    }

    /// An approved user with a grant whose refresh token was issued at `issued_at`.
    pub fn add_approved_user(&mut self, id: &str, phone: Option<String>, issued_at: DateTime<Utc>) -> GrantInfo {
        self.upsert_user(UserRec { id: id.into(), status: UserStatus::Approved, phone, email: None });
        self.issue_grant(id, issued_at)
    }

    pub fn set_user_status(&mut self, id: &str, status: UserStatus) -> bool {
        let known = self.users.get_mut(id).map(|u| u.status = status).is_some();
        if known {
            self.emit("user_updated", id, id);
        }
        known
    }

    /// Issues a grant for `user_id` whose refresh token was issued at `issued_at` (so it expires ten days
    /// later); replaces the user's previous grant.
    pub fn issue_grant(&mut self, user_id: &str, issued_at: DateTime<Utc>) -> GrantInfo {
        if let Some(old) = self.grants.remove(user_id) {
            self.refresh_index.remove(&old.refresh_token);
            self.access_index.remove(&old.access_token);
        }
        let g = GrantRec {
            refresh_token: self.token("rt"),
            refresh_expires: issued_at + crate::astra::REFRESH_TOKEN_LIFETIME,
            access_token: self.token("at"),
            access_expires: issued_at + TimeDelta::seconds(self.settings.access_ttl_secs),
            refreshes: 0,
            revoked: false,
        };
        self.refresh_index
            .insert(g.refresh_token.clone(), RefreshRec { user_id: user_id.into(), expires: g.refresh_expires });
        self.access_index.insert(g.access_token.clone(), user_id.into());
        self.grants.insert(user_id.into(), g);
        self.grant_info(user_id).expect("just issued")
    }

    pub fn revoke_grant(&mut self, user_id: &str) -> bool {
        let Some(g) = self.grants.get_mut(user_id) else { return false };
        g.revoked = true;
        self.refresh_index.remove(&g.refresh_token);
        self.access_index.remove(&g.access_token);
        true
    }

    pub fn grant_info(&self, user_id: &str) -> Option<GrantInfo> {
        self.grants.get(user_id).map(|g| GrantInfo {
            user_id: user_id.into(),
            refreshes: g.refreshes,
            refresh_token: g.refresh_token.clone(),
            refresh_expires_at: g.refresh_expires,
            access_token: g.access_token.clone(),
            access_expires_at: g.access_expires,
            revoked: g.revoked,
        })
    }

    pub fn total_refreshes(&self) -> u64 {
        self.grants.values().map(|g| u64::from(g.refreshes)).sum()
    }

    pub fn check_client(&self, id: &str, secret: &str) -> bool {
        id == self.settings.client_id && secret == self.settings.client_secret
    }

    /// The user whose live, unexpired access token this is.
    pub fn user_for_access(&self, access: &str) -> Option<String> {
        let user_id = self.access_index.get(access)?;
        let g = self.grants.get(user_id)?;
        (g.access_expires > self.now() && !g.revoked).then(|| user_id.clone())
    }

    pub fn user_json(&self, id: &str) -> Option<Value> {
        let u = self.users.get(id)?;
        Some(without_nulls(json!({
            "id": u.id, "status": u.status.as_str(), "email": u.email, "phone": u.phone,
            "first_name": "Sandbox", "last_name": "User",
        })))
    }

    pub fn add_card(&mut self, c: CardRec) {
        self.cards.insert(c.id.clone(), c);
    }

    /// Freezes or unfreezes a client-issued card; the transfers it held clear when next read.
    pub fn set_card_frozen(&mut self, id: &str, frozen: bool) -> bool {
        let Some(c) = self.cards.get_mut(id) else { return false };
        c.frozen = frozen;
        true
    }

    pub fn is_card_frozen(&self, id: &str) -> bool {
        self.cards.get(id).is_some_and(|c| c.frozen)
    }

    pub fn cards_of(&self, user_id: &str) -> Vec<Value> {
        let mut v: Vec<&CardRec> = self.cards.values().filter(|c| c.user_id == user_id).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter().map(card_json).collect()
    }

    pub fn card_json(&self, user_id: &str, id: &str) -> Option<Value> {
        self.cards.get(id).filter(|c| c.user_id == user_id).map(card_json)
    }

    /// The end of the bank day (in the sandbox's bank zone) that `t` falls on.
    pub fn bank_day_end(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let zone: Tz = self.settings.bank_time_zone;
        let next = t.with_timezone(&zone).date_naive().succ_opt().unwrap_or(NaiveDate::MAX);
        zone.from_local_datetime(&next.and_hms_opt(0, 0, 0).unwrap_or_default())
            .earliest()
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(t + TimeDelta::days(1))
    }

    pub fn add_transfer(&mut self, t: TransferRec) {
        self.emit("transfer_created", &t.user_id, &t.id);
        self.transfer_index.insert(t.id.clone(), self.transfers.len());
        self.transfers.push(t);
    }

    pub fn set_transfer_status(&mut self, id: &str, status: TransferStatus, failure: Option<String>) -> bool {
        let now = self.now();
        let Some(&i) = self.transfer_index.get(id) else { return false };
        let t = &mut self.transfers[i];
        t.status = status;
        t.failure_reason = failure;
        t.hold = None;
        t.updated = now;
        let (user, id) = (t.user_id.clone(), t.id.clone());
        self.emit("transfer_updated", &user, &id);
        true
    }

    /// Credits held transfers whose condition cleared (the bank day ended, the card was unfrozen).
    fn settle(&mut self, i: usize) {
        let now = self.now();
        let cleared = match &self.transfers[i].hold {
            Some(Hold::DailyLimit { clears_at }) => now >= *clears_at,
            Some(Hold::CardFrozen { card_id }) => !self.is_card_frozen(card_id),
            None => false,
        };
        let t = &mut self.transfers[i];
        if cleared && t.status == TransferStatus::Pending {
            t.status = TransferStatus::Processed;
            t.hold = None;
            t.updated = now;
        }
    }

    /// One user's transfers, newest first, filtered by status and source, one page (`limit`, `offset`), with
    /// `count` as the settings say (the page's size, as Astra's spec words it, or the total).
    pub fn transfers_page(&mut self, user_id: &str, q: &PageQuery) -> (usize, Vec<Value>) {
        let mut idx: Vec<usize> = (0..self.transfers.len()).filter(|&i| self.transfers[i].user_id == user_id).collect();
        for &i in &idx {
            self.settle(i);
        }
        idx.retain(|&i| {
            let t = &self.transfers[i];
            q.status
                .as_deref()
                .is_none_or(|s| t.status.as_str() == s || (s == "canceled" && t.status == TransferStatus::Cancelled))
                && q.source_id.as_deref().is_none_or(|s| t.source_id.as_deref() == Some(s))
        });
        idx.sort_by(|&a, &b| self.transfers[b].initiated.cmp(&self.transfers[a].initiated));
        let total = idx.len();
        let offset = if self.settings.faults.ignore_offset { 0 } else { q.offset.unwrap_or(0) };
        let page: Vec<usize> = idx.into_iter().skip(offset).take(q.limit.unwrap_or(25).clamp(1, 100_000)).collect();
        let out: Vec<Value> = page.iter().map(|&i| self.transfer_value(i)).collect();
        let count = match self.settings.count_semantics {
            CountSemantics::Page => out.len(),
            CountSemantics::Total => total,
        };
        (count, out)
    }

    fn transfer_value(&self, i: usize) -> Value {
        let t = &self.transfers[i];
        let mut v = transfer_json(t, self.settings.clearing_format);
        if self.settings.faults.unreadable_transfers.contains(&t.id) {
            v["amount"] = Value::String("not a number".into());
        }
        v
    }

    pub fn transfer_json(&mut self, user_id: &str, id: &str) -> Option<Value> {
        let i = *self.transfer_index.get(id)?;
        if self.transfers[i].user_id != user_id {
            return None;
        }
        self.settle(i);
        Some(self.transfer_value(i))
    }
}

/// A card as Astra's spec documents it (id, company, expiry, last four) with the flags public clients read.
fn card_json(c: &CardRec) -> Value {
    json!({
        "id": c.id,
        "card_company": "Visa",
        "expiration_date": "12/2030",
        "last_four_digits": "4242",
        "status": c.status,
        "push_enabled": c.push_enabled,
        "pull_enabled": c.pull_enabled,
    })
}

/// The query of `GET /v1/transfers`: Astra's documented filters and the paging public clients send.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    pub status: Option<String>,
    pub source_id: Option<String>,
}

/// A JSON object without its null members: Astra's spec types every field as a string, so an absent value
/// is left out rather than written `null`.
pub(super) fn without_nulls(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
    }
    v
}

fn transfer_json(t: &TransferRec, clearing: ClearingFormat) -> Value {
    let reason = match &t.hold {
        Some(Hold::DailyLimit { .. }) => Some("daily_limit_exceeded"),
        Some(Hold::CardFrozen { .. }) => Some("card_frozen"),
        None => None,
    };
    without_nulls(json!({
        "id": t.id,
        "routine_id": t.routine_id,
        "routine_name": t.routine_id.as_ref().map(|_| "Sandbox routine"),
        "routine_type": t.routine_type,
        "source_id": t.source_id,
        "destination_id": t.destination_id,
        "destination_user_id": t.user_id,
        "amount": t.amount.to_json_dollars(),
        "payment_type": t.payment_type,
        "initiated": format_time(t.initiated),
        "updated": format_time(t.updated),
        "estimated_clearing_date": match clearing {
            // As Astra's spec types it (date-time) and its fixtures write it: no offset, meaning UTC.
            ClearingFormat::DateTime => t.estimated_clearing_date.and_time(t.initiated.time()).format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            ClearingFormat::Date => t.estimated_clearing_date.to_string(),
        },
        "client_correlation_id": t.client_correlation_id,
        "status": t.status.as_str(),
        "astra_settlement_reason": reason,
        "failure_reason": t.failure_reason,
    }))
}
