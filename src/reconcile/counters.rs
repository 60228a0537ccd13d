//! The per-(destination, bank day) inbound counters (`inbound_day`) and the daily limit decisions
//! (`limit_decision`): moved by the mirror in the same transaction as each transfer, recomputed from the
//! mirror by `inbound-volume`, read by the guard.

use chrono::{DateTime, Utc};

use crate::{
    domain::BankDay,
    store::{Store, with_pool},
};

/// Adds `cents` and `n` transfers to a destination's bank day, on a connection or transaction (the mirror's).
/// Evaluates to `sqlx::Result<u64>`.
macro_rules! counter_add {
    ($conn:expr, $destination:expr, $day:expr, $cents:expr, $n:expr) => {
        sqlx::query(
            "INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers) VALUES ($1, $2, $3, $4)
             ON CONFLICT (destination_id, bank_day) DO UPDATE SET
                 total_cents = inbound_day.total_cents + excluded.total_cents,
                 transfers = inbound_day.transfers + excluded.transfers",
        )
        .bind($destination)
        .bind($day)
        .bind($cents)
        .bind($n)
        .execute($conn)
        .await
        .map(|r| r.rows_affected())
    };
}
pub(crate) use counter_add;

/// The counter of a destination's bank day.
pub async fn counter(store: &Store, destination_id: &str, day: &str) -> sqlx::Result<Option<(i64, i64)>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT total_cents, transfers FROM inbound_day WHERE destination_id = $1 AND bank_day = $2"
    )
    .bind(destination_id)
    .bind(day)
    .fetch_optional(p)
    .await)
}

/// The total recomputed from the mirror: (cents, transfers).
pub async fn recompute(store: &Store, destination_id: &str, day: &str) -> sqlx::Result<(i64, i64)> {
    let (sum, n): (Option<i64>, i64) = with_pool!(store, |p| sqlx::query_as(
        "SELECT CAST(SUM(amount_cents) AS BIGINT), COUNT(*) FROM transfer
         WHERE destination_id = $1 AND bank_day = $2 AND status NOT IN ('failed', 'cancelled')"
    )
    .bind(destination_id)
    .bind(day)
    .fetch_one(p)
    .await?);
    Ok((sum.unwrap_or(0), n))
}

/// Sets the counter to the recomputed total.
pub async fn set_counter(store: &Store, destination_id: &str, day: &str, cents: i64, n: i64) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query(
        "INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers) VALUES ($1, $2, $3, $4)
         ON CONFLICT (destination_id, bank_day) DO UPDATE SET total_cents = excluded.total_cents,
             transfers = excluded.transfers"
    )
    .bind(destination_id)
    .bind(day)
    .bind(cents)
    .bind(n)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Where a destination's day stands against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitState {
    Ok,
    /// At or past `warn_percent` of the limit.
    Warn,
    /// At or past the limit.
    Blocked,
}

impl LimitState {
    pub fn of(total: i64, limit: i64, warn_percent: u8) -> LimitState {
        if total >= limit {
            LimitState::Blocked
        } else if i128::from(total) * 100 >= i128::from(limit) * i128::from(warn_percent) {
            LimitState::Warn
        } else {
            LimitState::Ok
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LimitState::Ok => "ok",
            LimitState::Warn => "warn",
            LimitState::Blocked => "blocked",
        }
    }
}

/// A day's decision with its evidence.
pub struct Decision<'a> {
    pub destination_id: &'a str,
    pub day: &'a BankDay,
    pub state: LimitState,
    pub total: i64,
    pub limit: i64,
    pub drift: i64,
}

/// Records (or updates) the decision for a destination's bank day.
pub async fn record_decision(db: &Store, d: &Decision<'_>, now: DateTime<Utc>) -> sqlx::Result<()> {
    with_pool!(db, |p| sqlx::query(
        "INSERT INTO limit_decision (destination_id, bank_day, state, total_cents, limit_cents, window_start,
             window_end, drift_cents, computed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (destination_id, bank_day) DO UPDATE SET state = excluded.state,
             total_cents = excluded.total_cents, limit_cents = excluded.limit_cents, drift_cents = excluded.drift_cents,
             computed_at = excluded.computed_at"
    )
    .bind(d.destination_id)
    .bind(d.day.key())
    .bind(d.state.as_str())
    .bind(d.total)
    .bind(d.limit)
    .bind(d.day.start())
    .bind(d.day.end())
    .bind(d.drift)
    .bind(now)
    .execute(p)
    .await
    .map(|_| ()))
}
