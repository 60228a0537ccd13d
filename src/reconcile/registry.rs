//! The fintech's registry: the client-issued destinations the bank limits apply to (with their zone, limit
//! and card flags), the ACH credits behind account-to-card routines, and the users it blocked.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{
    domain::{Cents, time::parse_zone},
    failure::Failure,
    store::{Store, with_pool},
};

/// What a destination is: a bank account, or a client-issued card (which its issuer may freeze).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    Account,
    Card,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Account => "account",
            DestinationKind::Card => "card",
        }
    }

    pub fn parse(s: &str) -> Option<DestinationKind> {
        [DestinationKind::Account, DestinationKind::Card].into_iter().find(|k| k.as_str() == s)
    }
}

/// A registered destination.
#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    pub destination_id: String,
    pub user_id: String,
    pub kind: DestinationKind,
    /// The bank's zone, whose local midnights bound its business days.
    pub bank_time_zone: Tz,
    pub daily_limit_cents: i64,
    pub frozen: bool,
    pub push_enabled: Option<bool>,
    pub pull_enabled: Option<bool>,
}

impl Destination {
    pub fn zone(&self) -> Tz {
        self.bank_time_zone
    }

    pub fn limit(&self) -> Cents {
        Cents(self.daily_limit_cents)
    }
}

/// A `destination` row as stored; its kind and zone are checked on the way in and parsed on the way out.
#[derive(sqlx::FromRow)]
pub(super) struct DestinationRow {
    pub(super) destination_id: String,
    pub(super) user_id: String,
    pub(super) kind: String,
    pub(super) bank_time_zone: String,
    pub(super) daily_limit_cents: i64,
    pub(super) frozen: bool,
    pub(super) push_enabled: Option<bool>,
    pub(super) pull_enabled: Option<bool>,
}

impl DestinationRow {
    /// The typed destination; a row whose kind or zone does not parse (written by hand) is an error naming it.
    pub(super) fn parse(self) -> anyhow::Result<Destination> {
        let kind = DestinationKind::parse(&self.kind).ok_or_else(|| {
            anyhow::anyhow!("destination {}: unknown kind `{}` in the store", self.destination_id, self.kind)
        })?;
        let zone = parse_zone(&self.bank_time_zone)
            .map_err(|e| anyhow::anyhow!("destination {}: {e} in the store", self.destination_id))?;
        Ok(Destination {
            destination_id: self.destination_id,
            user_id: self.user_id,
            kind,
            bank_time_zone: zone,
            daily_limit_cents: self.daily_limit_cents,
            frozen: self.frozen,
            push_enabled: self.push_enabled,
            pull_enabled: self.pull_enabled,
        })
    }
}

/// One line of `accounts import`: a destination, or the ACH credit of an account-to-card routine.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ImportLine {
    Destination(DestinationLine),
    AchCredit(AchCreditLine),
}

impl ImportLine {
    /// One line of input: a destination when it names `destination_id`, an ACH credit when it names
    /// `routine_id`; the error names the field that does not parse (`daily_limit_cents` for `1e400`).
    pub fn parse(line: &[u8]) -> Result<ImportLine, String> {
        let text = String::from_utf8_lossy(line);
        if text.contains("\"destination_id\"") {
            crate::secrets::parse_json(line).map(ImportLine::Destination)
        } else if text.contains("\"routine_id\"") {
            crate::secrets::parse_json(line).map(ImportLine::AchCredit)
        } else {
            Err("not a destination ({destination_id, user_id, kind, bank_time_zone, daily_limit_cents, …}) nor an ACH \
                 credit ({routine_id, ach_credit_id, addenda})"
                .into())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationLine {
    pub destination_id: String,
    pub user_id: String,
    pub kind: DestinationKind,
    pub bank_time_zone: String,
    pub daily_limit_cents: i64,
    #[serde(default)]
    pub frozen: Option<bool>,
    #[serde(default)]
    pub push_enabled: Option<bool>,
    #[serde(default)]
    pub pull_enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AchCreditLine {
    pub routine_id: String,
    pub ach_credit_id: String,
    pub addenda: String,
}

impl DestinationLine {
    fn validate(&self) -> Result<(), String> {
        crate::secrets::check_id("destination_id", &self.destination_id)?;
        crate::secrets::check_id("user_id", &self.user_id)?;
        parse_zone(&self.bank_time_zone).map_err(|e| format!("bank_time_zone: {e}"))?;
        if self.daily_limit_cents < 0 {
            return Err(format!("daily_limit_cents must not be negative (got {})", self.daily_limit_cents));
        }
        Ok(())
    }
}

impl AchCreditLine {
    fn validate(&self) -> Result<(), String> {
        crate::secrets::check_id("routine_id", &self.routine_id)?;
        crate::secrets::check_id("ach_credit_id", &self.ach_credit_id)?;
        if !(8..=80).contains(&self.addenda.chars().count()) {
            return Err("addenda must be 8 to 80 characters".into());
        }
        Ok(())
    }
}

/// Imports (or updates) one line; a field left out keeps its stored value. `Err` explains a bad line.
pub async fn import(store: &Store, line: &ImportLine, now: DateTime<Utc>) -> anyhow::Result<()> {
    match line {
        ImportLine::Destination(d) => {
            d.validate().map_err(Failure::rejected)?;
            with_pool!(store, |p| sqlx::query(
                "INSERT INTO destination (destination_id, user_id, kind, bank_time_zone, daily_limit_cents, frozen,
                     push_enabled, pull_enabled, updated_at)
                 VALUES ($1, $2, $3, $4, $5, COALESCE($6, FALSE), $7, $8, $9)
                 ON CONFLICT (destination_id) DO UPDATE SET user_id = excluded.user_id, kind = excluded.kind,
                     bank_time_zone = excluded.bank_time_zone, daily_limit_cents = excluded.daily_limit_cents,
                     frozen = COALESCE($6, destination.frozen),
                     push_enabled = COALESCE(excluded.push_enabled, destination.push_enabled),
                     pull_enabled = COALESCE(excluded.pull_enabled, destination.pull_enabled),
                     updated_at = excluded.updated_at"
            )
            .bind(&d.destination_id)
            .bind(&d.user_id)
            .bind(d.kind.as_str())
            .bind(&d.bank_time_zone)
            .bind(d.daily_limit_cents)
            .bind(d.frozen)
            .bind(d.push_enabled)
            .bind(d.pull_enabled)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ()))?;
        }
        ImportLine::AchCredit(a) => {
            a.validate().map_err(Failure::rejected)?;
            with_pool!(store, |p| {
                sqlx::query(
                "INSERT INTO ach_credit (routine_id, ach_credit_id, addenda) VALUES ($1, $2, $3)
                 ON CONFLICT (routine_id) DO UPDATE SET ach_credit_id = excluded.ach_credit_id, addenda = excluded.addenda"
            )
            .bind(&a.routine_id)
            .bind(&a.ach_credit_id)
            .bind(&a.addenda)
            .execute(p)
            .await
            .map(|_| ())
            })?;
        }
    }
    Ok(())
}

pub async fn destination(store: &Store, id: &str) -> anyhow::Result<Option<Destination>> {
    let row: Option<DestinationRow> = with_pool!(store, |p| {
        sqlx::query_as(
        "SELECT destination_id, user_id, kind, bank_time_zone, daily_limit_cents, frozen, push_enabled, pull_enabled
         FROM destination WHERE destination_id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await
    })?;
    row.map(DestinationRow::parse).transpose()
}

/// The destinations registered for a user.
pub async fn destinations_of(store: &Store, user_id: &str) -> anyhow::Result<Vec<Destination>> {
    let rows: Vec<DestinationRow> = with_pool!(store, |p| {
        sqlx::query_as(
        "SELECT destination_id, user_id, kind, bank_time_zone, daily_limit_cents, frozen, push_enabled, pull_enabled
         FROM destination WHERE user_id = $1 ORDER BY destination_id"
    )
    .bind(user_id)
    .fetch_all(p)
    .await
    })?;
    rows.into_iter().map(DestinationRow::parse).collect()
}

pub async fn all_destinations(store: &Store) -> anyhow::Result<Vec<Destination>> {
    let rows: Vec<DestinationRow> = with_pool!(store, |p| {
        sqlx::query_as(
        "SELECT destination_id, user_id, kind, bank_time_zone, daily_limit_cents, frozen, push_enabled, pull_enabled
         FROM destination ORDER BY destination_id"
    )
    .fetch_all(p)
    .await
    })?;
    rows.into_iter().map(DestinationRow::parse).collect()
}

/// The bank time zones of the registered destinations, each once.
pub async fn zones(store: &Store) -> sqlx::Result<Vec<String>> {
    with_pool!(store, |p| sqlx::query_scalar("SELECT DISTINCT bank_time_zone FROM destination ORDER BY 1")
        .fetch_all(p)
        .await)
}

/// Freezes or unfreezes a card; `false` when no such card is registered.
pub async fn set_frozen(store: &Store, card_id: &str, frozen: bool, now: DateTime<Utc>) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE destination SET frozen = $1, updated_at = $2 WHERE destination_id = $3 AND kind = 'card'"
    )
    .bind(frozen)
    .bind(now)
    .bind(card_id)
    .execute(p)
    .await
    .map(|r| r.rows_affected() == 1))
}

/// What recording a card's flags came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardFlags {
    Recorded,
    /// A read begun later is recorded already: it stands.
    Superseded,
    /// No such card is registered.
    NotRegistered,
}

/// Records a card's push and pull flags as Astra reported them to a read begun at `read_at` (a flag Astra left
/// out is kept), unless a read begun later is recorded already.
pub async fn set_card_flags(
    store: &Store,
    card_id: &str,
    push: Option<bool>,
    pull: Option<bool>,
    read_at: DateTime<Utc>,
) -> sqlx::Result<CardFlags> {
    with_pool!(store, |p| {
        let n = sqlx::query(
            "UPDATE destination SET push_enabled = COALESCE($1, push_enabled), pull_enabled = COALESCE($2, pull_enabled),
                    flags_read_at = $3, updated_at = $3
             WHERE destination_id = $4 AND kind = 'card' AND (flags_read_at IS NULL OR flags_read_at <= $3)",
        )
        .bind(push)
        .bind(pull)
        .bind(read_at)
        .bind(card_id)
        .execute(p)
        .await?
        .rows_affected();
        if n == 1 {
            return Ok(CardFlags::Recorded);
        }
        let registered: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM destination WHERE destination_id = $1 AND kind = 'card'")
                .bind(card_id)
                .fetch_optional(p)
                .await?;
        Ok(if registered.is_some() { CardFlags::Superseded } else { CardFlags::NotRegistered })
    })
}

pub async fn ach_credit(store: &Store, routine_id: &str) -> sqlx::Result<Option<(String, String)>> {
    with_pool!(store, |p| sqlx::query_as("SELECT ach_credit_id, addenda FROM ach_credit WHERE routine_id = $1")
        .bind(routine_id)
        .fetch_optional(p)
        .await)
}

/// Blocks the user's routine requests. `Err` (configuration) for an id no import would take (empty, a control
/// character, over-long) or an empty reason: such a block would stand for no user, and the user meant would
/// stay unblocked.
pub async fn block_user(store: &Store, user_id: &str, reason: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
    crate::secrets::check_id("user_id", user_id).map_err(Failure::Config)?;
    if reason.trim().is_empty() {
        return Err(Failure::config("the reason is empty"));
    }
    Ok(with_pool!(store, |p| sqlx::query(
        "INSERT INTO user_block (user_id, reason, blocked_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET reason = excluded.reason"
    )
    .bind(user_id)
    .bind(reason)
    .bind(now)
    .execute(p)
    .await
    .map(|_| ()))?)
}

/// Whether the store knows the user: a grant or a destination of theirs.
pub async fn user_known(store: &Store, user_id: &str) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM grant_token WHERE user_id = $1)
             OR EXISTS (SELECT 1 FROM destination WHERE user_id = $1)"
    )
    .bind(user_id)
    .fetch_one(p)
    .await)
}

/// `false` when the user was not blocked.
pub async fn unblock_user(store: &Store, user_id: &str) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query("DELETE FROM user_block WHERE user_id = $1")
        .bind(user_id)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}
