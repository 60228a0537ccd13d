//! The fintech's registry: the client-issued destinations the bank limits apply to (with their zone, limit
//! and card flags), the ACH credits behind account-to-card routines, and the users it blocked.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{domain::money::Cents, failure::Failure, store::Store, store::with_pool};

/// A registered destination.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Destination {
    pub destination_id: String,
    pub user_id: String,
    pub kind: String,
    pub bank_time_zone: String,
    pub daily_limit_cents: i64,
    pub frozen: bool,
    pub push_enabled: Option<bool>,
    pub pull_enabled: Option<bool>,
}

impl Destination {
    pub fn zone(&self) -> Tz {
        self.bank_time_zone.parse().unwrap_or(chrono_tz::UTC)
    }

    pub fn limit(&self) -> Cents {
        Cents(self.daily_limit_cents)
    }
}

/// One line of `accounts import`: a destination, or the ACH credit of an account-to-card routine.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ImportLine {
    Destination(DestinationLine),
    AchCredit(AchCreditLine),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationLine {
    pub destination_id: String,
    pub user_id: String,
    pub kind: String,
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
        if self.destination_id.trim().is_empty() || self.user_id.trim().is_empty() {
            return Err("destination_id and user_id must not be empty".into());
        }
        if !matches!(self.kind.as_str(), "account" | "card") {
            return Err(format!("kind must be \"account\" or \"card\" (got \"{}\")", self.kind));
        }
        crate::domain::time::parse_zone(&self.bank_time_zone)?;
        if self.daily_limit_cents < 0 {
            return Err(format!("daily_limit_cents must not be negative (got {})", self.daily_limit_cents));
        }
        Ok(())
    }
}

impl AchCreditLine {
    fn validate(&self) -> Result<(), String> {
        if self.routine_id.trim().is_empty() || self.ach_credit_id.trim().is_empty() {
            return Err("routine_id and ach_credit_id must not be empty".into());
        }
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
            .bind(&d.kind)
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

pub async fn destination(store: &Store, id: &str) -> sqlx::Result<Option<Destination>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT destination_id, user_id, kind, bank_time_zone, daily_limit_cents, frozen, push_enabled, pull_enabled
         FROM destination WHERE destination_id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)
}

pub async fn destinations_of(store: &Store, user_id: &str) -> sqlx::Result<Vec<Destination>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT destination_id, user_id, kind, bank_time_zone, daily_limit_cents, frozen, push_enabled, pull_enabled
         FROM destination WHERE user_id = $1 ORDER BY destination_id"
    )
    .bind(user_id)
    .fetch_all(p)
    .await)
}

pub async fn all_destinations(store: &Store) -> sqlx::Result<Vec<Destination>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT destination_id, user_id, kind, bank_time_zone, daily_limit_cents, frozen, push_enabled, pull_enabled
         FROM destination ORDER BY destination_id"
    )
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

pub async fn ach_credit(store: &Store, routine_id: &str) -> sqlx::Result<Option<(String, String)>> {
    with_pool!(store, |p| sqlx::query_as("SELECT ach_credit_id, addenda FROM ach_credit WHERE routine_id = $1")
        .bind(routine_id)
        .fetch_optional(p)
        .await)
}

pub async fn block_user(store: &Store, user_id: &str, reason: &str, now: DateTime<Utc>) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query(
        "INSERT INTO user_block (user_id, reason, blocked_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET reason = excluded.reason"
    )
    .bind(user_id)
    .bind(reason)
    .bind(now)
    .execute(p)
    .await
    .map(|_| ()))
}

/// `false` when the user was not blocked.
pub async fn unblock_user(store: &Store, user_id: &str) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query("DELETE FROM user_block WHERE user_id = $1")
        .bind(user_id)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

pub async fn user_block(store: &Store, user_id: &str) -> sqlx::Result<Option<String>> {
    with_pool!(store, |p| sqlx::query_scalar("SELECT reason FROM user_block WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(p)
        .await)
}
