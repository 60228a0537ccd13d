//! The per-(destination, bank day) inbound counters (`inbound_day`), the days they cannot vouch for
//! (`uncertain_day`), and the daily limit decisions (`limit_decision`): moved by the mirror in the same transaction as each transfer, recomputed from the
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

/// The day's total summed from the mirror, on a pool or a transaction. Evaluates to
/// `sqlx::Result<(Option<i64>, i64)>`: (cents, transfers).
macro_rules! day_sum {
    ($conn:expr, $destination:expr, $day:expr) => {
        sqlx::query_as::<_, (Option<i64>, i64)>(
            "SELECT CAST(SUM(amount_cents) AS BIGINT), COUNT(*) FROM transfer
             WHERE destination_id = $1 AND bank_day = $2 AND status NOT IN ('failed', 'cancelled')",
        )
        .bind($destination)
        .bind($day)
        .fetch_one($conn)
        .await
    };
}

/// The total recomputed from the mirror: (cents, transfers).
pub async fn recompute(store: &Store, destination_id: &str, day: &str) -> sqlx::Result<(i64, i64)> {
    let (sum, n) = with_pool!(store, |p| day_sum!(p, destination_id, day))?;
    Ok((sum.unwrap_or(0), n))
}

/// Takes the lock of a destination's bank day and reads its counter, on a transaction: the first statement
/// writes (SQLite takes its write lock at once; PostgreSQL locks the row), creating the row if needed.
/// Evaluates to `sqlx::Result<(i64, i64)>`: (cents, transfers).
macro_rules! day_lock {
    ($conn:expr, $destination:expr, $day:expr) => {
        sqlx::query_as::<_, (i64, i64)>(
            "INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers) VALUES ($1, $2, 0, 0)
             ON CONFLICT (destination_id, bank_day) DO UPDATE SET total_cents = inbound_day.total_cents
             RETURNING total_cents, transfers",
        )
        .bind($destination)
        .bind($day)
        .fetch_one($conn)
        .await
    };
}
pub(crate) use day_lock;

/// What fixing a day found: the counter before, and the total recomputed from the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayFix {
    pub counter: i64,
    pub total: i64,
    pub transfers: i64,
}

impl DayFix {
    /// Counter minus recomputed total, before the fix.
    pub fn drift(&self) -> i64 {
        self.counter - self.total
    }
}

/// Recomputes a destination's bank day from the mirror and sets its counter, in one transaction that holds
/// the day's lock: a mirror write racing it either lands before (and is in the sum) or waits (and adds to the
/// fixed counter). Nothing is erased.
pub async fn fix_day(store: &Store, destination_id: &str, day: &str) -> sqlx::Result<DayFix> {
    with_pool!(store, |p| {
        let mut tx = p.begin().await?;
        let (counter, _) = day_lock!(&mut *tx, destination_id, day)?;
        let (sum, n) = day_sum!(&mut *tx, destination_id, day)?;
        let total = sum.unwrap_or(0);
        if total != counter {
            sqlx::query(
                "UPDATE inbound_day SET total_cents = $1, transfers = $2 WHERE destination_id = $3 AND bank_day = $4",
            )
            .bind(total)
            .bind(n)
            .bind(destination_id)
            .bind(day)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(DayFix { counter, total, transfers: n })
    })
}

/// What made a day uncertain: the transfer that could not be read (by id, when it had a readable one).
pub struct Unreadable<'a> {
    pub transfer_id: Option<&'a str>,
    pub user_id: &'a str,
    pub detail: &'a str,
}

/// Marks a destination's bank day uncertain: a transfer that may count there could not be read.
pub async fn mark_uncertain(
    store: &Store,
    destination_id: &str,
    day: &str,
    u: &Unreadable<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let detail: String = u.detail.chars().take(300).collect();
    with_pool!(store, |p| sqlx::query(
        "INSERT INTO uncertain_day (destination_id, bank_day, transfer_id, user_id, detail, since)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (destination_id, bank_day, transfer_id) DO UPDATE SET detail = excluded.detail,
             since = excluded.since"
    )
    .bind(destination_id)
    .bind(day)
    .bind(u.transfer_id.unwrap_or(""))
    .bind(u.user_id)
    .bind(detail)
    .bind(now)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Clears what the transfer `id` left uncertain: it reads now.
pub async fn clear_uncertain_transfer(store: &Store, id: &str) -> sqlx::Result<u64> {
    with_pool!(store, |p| sqlx::query("DELETE FROM uncertain_day WHERE transfer_id = $1")
        .bind(id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
}

/// Clears, from `first_day` on, the marks of a user's transfers that had no readable id and were made before
/// `read_started`: a later reading of those days found every transfer readable.
pub async fn clear_uncertain_without_id(
    store: &Store,
    user_id: &str,
    first_day: &str,
    read_started: DateTime<Utc>,
) -> sqlx::Result<u64> {
    with_pool!(store, |p| sqlx::query(
        "DELETE FROM uncertain_day WHERE user_id = $1 AND transfer_id = '' AND bank_day >= $2 AND since < $3"
    )
    .bind(user_id)
    .bind(first_day)
    .bind(read_started)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
}

/// Why a destination's bank day is uncertain, if it is.
pub async fn uncertainty(store: &Store, destination_id: &str, day: &str) -> sqlx::Result<Option<String>> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT detail FROM uncertain_day WHERE destination_id = $1 AND bank_day = $2 ORDER BY detail LIMIT 1"
    )
    .bind(destination_id)
    .bind(day)
    .fetch_optional(p)
    .await)
}

/// Sets a day's counter outright, without the day's lock: for seeding a store (the benchmark); the jobs fix a
/// day with [`fix_day`].
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

/// One destination's bank day as the recompute's one pass reads it: its limit, its counter, what the mirror
/// sums to, whether a transfer of the day could not be read, and the decision recorded last.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ZoneDay {
    pub destination_id: String,
    pub limit_cents: i64,
    pub counter: i64,
    pub total: i64,
    pub transfers: i64,
    pub uncertain: bool,
    pub decided_state: Option<String>,
    pub decided_total: Option<i64>,
    pub decided_limit: Option<i64>,
    pub decided_drift: Option<i64>,
}

impl ZoneDay {
    /// Whether `d` would record what is recorded already (a drift found by an earlier run stays as evidence
    /// while nothing else changes).
    pub fn decided(&self, d: &Decision<'_>) -> bool {
        self.decided_state.as_deref() == Some(d.state.as_str())
            && self.decided_total == Some(d.total)
            && self.decided_limit == Some(d.limit)
            && (self.decided_drift == Some(d.drift) || d.drift == 0)
    }
}

/// Bank day `day` of every destination in `zone`, in one read (one `GROUP BY` over the day's transfers, joined
/// with the counters, the uncertain days and the decisions): the recompute's pass. A counter found to differ is
/// then fixed under its lock by [`fix_day`], which decides again what it is.
pub async fn zone_day(store: &Store, zone: &str, day: &str) -> sqlx::Result<Vec<ZoneDay>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT d.destination_id, d.daily_limit_cents AS limit_cents,
                CAST(COALESCE(i.total_cents, 0) AS BIGINT) AS counter, CAST(COALESCE(s.total, 0) AS BIGINT) AS total,
                CAST(COALESCE(s.n, 0) AS BIGINT) AS transfers,
                EXISTS (SELECT 1 FROM uncertain_day u WHERE u.destination_id = d.destination_id AND u.bank_day = $1)
                    AS uncertain,
                l.state AS decided_state, l.total_cents AS decided_total, l.limit_cents AS decided_limit,
                l.drift_cents AS decided_drift
         FROM destination d
         LEFT JOIN (SELECT destination_id, SUM(amount_cents) AS total, COUNT(*) AS n FROM transfer
                    WHERE bank_day = $1 AND status NOT IN ('failed', 'cancelled') GROUP BY destination_id) s
             ON s.destination_id = d.destination_id
         LEFT JOIN inbound_day i ON i.destination_id = d.destination_id AND i.bank_day = $1
         LEFT JOIN limit_decision l ON l.destination_id = d.destination_id AND l.bank_day = $1
         WHERE d.bank_time_zone = $2
         ORDER BY d.destination_id"
    )
    .bind(day)
    .bind(zone)
    .fetch_all(p)
    .await)
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

/// Records (or updates) the decisions for destinations' bank days, a thousand rows a statement.
pub async fn record_decisions(db: &Store, decisions: &[Decision<'_>], now: DateTime<Utc>) -> sqlx::Result<()> {
    for chunk in decisions.chunks(1_000) {
        with_pool!(db, |p| {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO limit_decision (destination_id, bank_day, state, total_cents, limit_cents, window_start,
                     window_end, drift_cents, computed_at) ",
            );
            q.push_values(chunk, |mut row, d| {
                row.push_bind(d.destination_id)
                    .push_bind(d.day.key())
                    .push_bind(d.state.as_str())
                    .push_bind(d.total)
                    .push_bind(d.limit)
                    .push_bind(d.day.start())
                    .push_bind(d.day.end())
                    .push_bind(d.drift)
                    .push_bind(now);
            });
            q.push(
                " ON CONFLICT (destination_id, bank_day) DO UPDATE SET state = excluded.state,
                     total_cents = excluded.total_cents, limit_cents = excluded.limit_cents,
                     drift_cents = excluded.drift_cents, computed_at = excluded.computed_at",
            );
            q.build().execute(p).await.map(|_| ())
        })?;
    }
    Ok(())
}
