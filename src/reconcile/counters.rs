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
/// Evaluates to `sqlx::Result<(i64, i64)>`: (cents, holds placed on the day: see [`crate::reconcile::holds::Figures`]).
macro_rules! day_lock {
    ($conn:expr, $destination:expr, $day:expr) => {
        sqlx::query_as::<_, (i64, i64)>(
            "INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers) VALUES ($1, $2, 0, 0)
             ON CONFLICT (destination_id, bank_day) DO UPDATE SET total_cents = inbound_day.total_cents
             RETURNING total_cents, holds_placed",
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
    let _turn = store.write_turn().await?;
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

/// A destination's bank day that the recompute's pass found needing attention: its counter differs from what
/// the mirror sums to (drift), or a transfer that may count there could not be read (uncertain).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DayFinding {
    pub destination_id: String,
    pub counter: i64,
    pub total: i64,
    pub transfers: i64,
    pub uncertain: bool,
}

/// The recompute's pass over bank day `day` of every destination in `zone`: one `GROUP BY` over the day's
/// transfers joined with the counters and the uncertain days. Only the findings come back; a day whose counter
/// is what the mirror sums to, and is certain, needs nothing. A drifted counter is then fixed under its lock by
/// [`fix_day`], which decides again what it is.
pub async fn zone_day_findings(store: &Store, zone: &str, day: &str) -> sqlx::Result<Vec<DayFinding>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT * FROM (
             SELECT d.destination_id, CAST(COALESCE(i.total_cents, 0) AS BIGINT) AS counter,
                    CAST(COALESCE(s.total, 0) AS BIGINT) AS total, CAST(COALESCE(s.n, 0) AS BIGINT) AS transfers,
                    EXISTS (SELECT 1 FROM uncertain_day u WHERE u.destination_id = d.destination_id
                                AND u.bank_day = $1) AS uncertain
             FROM destination d
             LEFT JOIN (SELECT destination_id, SUM(amount_cents) AS total, COUNT(*) AS n FROM transfer
                        WHERE bank_day = $1 AND status NOT IN ('failed', 'cancelled') GROUP BY destination_id) s
                 ON s.destination_id = d.destination_id
             LEFT JOIN inbound_day i ON i.destination_id = d.destination_id AND i.bank_day = $1
             WHERE d.bank_time_zone = $2) z
         WHERE counter <> total OR uncertain
         ORDER BY destination_id"
    )
    .bind(day)
    .bind(zone)
    .fetch_all(p)
    .await)
}

/// Which destinations one decision statement covers.
enum Scope<'a> {
    /// One destination whose counter drifted, with the drift as its decision's evidence.
    Drifted(&'a str, i64),
    /// The zone's destinations after `.0` up to and including `.1`, in id order.
    Range(&'a str, &'a str),
    /// Every destination of the zone.
    Zone,
}

/// Destinations a decision statement covers at most on SQLite, whose write lock is the whole database's: a
/// statement holds it only while it reads and writes this many. PostgreSQL locks only the rows a statement
/// writes, and decides a zone in one.
const DECISION_CHUNK: i64 = 1_000;

/// Records the decision of every destination in `zone` on `day` whose figures changed since its last one:
/// `blocked` when the day's counter has reached the limit, `warn` from `warn_percent` of it, else `ok`. A
/// decision is taken again when its total, its limit or `warn_percent` changed; `computed_at` is when it last
/// changed. Each drift the recompute fixed is recorded with its day's decision as evidence (counter minus
/// recomputed total, before the fix), and stays while the state, total and limit stay. Run after the fixes: the
/// counters are then what the mirror sums to. The drifted destinations first, one statement each, then the
/// zone: on SQLite in id ranges of [`DECISION_CHUNK`], so no statement holds its write lock across the zone.
/// Returns how many decisions were written.
pub async fn decide_zone_day(
    store: &Store,
    zone: &str,
    day: &BankDay,
    warn_percent: u8,
    drifts: &[(String, i64)],
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let mut written = 0;
    for (destination_id, drift) in drifts {
        written += decide(store, zone, day, warn_percent, Scope::Drifted(destination_id, *drift), now).await?;
    }
    if store.is_postgres() {
        return Ok(written + decide(store, zone, day, warn_percent, Scope::Zone, now).await?);
    }
    // Every DECISION_CHUNK-th id of the zone and its last: the ends of the ranges.
    let ends: Vec<String> = with_pool!(store, |p| sqlx::query_scalar(
        "SELECT destination_id FROM (
             SELECT destination_id, ROW_NUMBER() OVER (ORDER BY destination_id) AS n, COUNT(*) OVER () AS of
             FROM destination WHERE bank_time_zone = $1) w
         WHERE n % $2 = 0 OR n = of ORDER BY destination_id"
    )
    .bind(zone)
    .bind(DECISION_CHUNK)
    .fetch_all(p)
    .await)?;
    let mut after = String::new();
    for end in &ends {
        written += decide(store, zone, day, warn_percent, Scope::Range(&after, end), now).await?;
        after.clone_from(end);
    }
    Ok(written)
}

/// One decision statement over `scope`: the state computed from the counter, written where it changed.
async fn decide(
    store: &Store,
    zone: &str,
    day: &BankDay,
    warn_percent: u8,
    scope: Scope<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let (which, drift, drift_changed) = match scope {
        Scope::Drifted(..) => ("d.destination_id = $7", "$8", "OR decided_drift IS DISTINCT FROM $8"),
        Scope::Range(..) => ("d.destination_id > $7 AND d.destination_id <= $8", "0", ""),
        Scope::Zone => ("TRUE", "0", ""),
    };
    let sql = format!(
        "INSERT INTO limit_decision (destination_id, bank_day, state, total_cents, limit_cents, window_start,
             window_end, drift_cents, warn_percent, computed_at)
         SELECT destination_id, $1, state, total, limit_cents, $3, $4, {drift}, $5, $6 FROM (
             SELECT d.destination_id, d.daily_limit_cents AS limit_cents,
                    CAST(COALESCE(i.total_cents, 0) AS BIGINT) AS total,
                    CASE WHEN COALESCE(i.total_cents, 0) >= d.daily_limit_cents THEN 'blocked'
                         WHEN CAST(COALESCE(i.total_cents, 0) AS NUMERIC) * 100
                              >= CAST(d.daily_limit_cents AS NUMERIC) * $5 THEN 'warn'
                         ELSE 'ok' END AS state,
                    l.state AS decided_state, l.total_cents AS decided_total, l.limit_cents AS decided_limit,
                    l.warn_percent AS decided_warn, l.drift_cents AS decided_drift
             FROM destination d
             LEFT JOIN inbound_day i ON i.destination_id = d.destination_id AND i.bank_day = $1
             LEFT JOIN limit_decision l ON l.destination_id = d.destination_id AND l.bank_day = $1
             WHERE d.bank_time_zone = $2 AND {which}) z
         WHERE decided_state IS DISTINCT FROM state OR decided_total IS DISTINCT FROM total
             OR decided_limit IS DISTINCT FROM limit_cents OR decided_warn IS DISTINCT FROM $5 {drift_changed}
         ON CONFLICT (destination_id, bank_day) DO UPDATE SET state = excluded.state,
             total_cents = excluded.total_cents, limit_cents = excluded.limit_cents,
             drift_cents = CASE WHEN excluded.drift_cents <> 0 THEN excluded.drift_cents
                                WHEN limit_decision.state = excluded.state
                                     AND limit_decision.total_cents = excluded.total_cents
                                     AND limit_decision.limit_cents = excluded.limit_cents
                                    THEN limit_decision.drift_cents
                                ELSE 0 END,
             warn_percent = excluded.warn_percent, computed_at = excluded.computed_at"
    );
    with_pool!(store, |p| {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(day.key())
            .bind(zone)
            .bind(day.start())
            .bind(day.end())
            .bind(i32::from(warn_percent))
            .bind(now);
        let q = match scope {
            Scope::Drifted(destination_id, drift) => q.bind(destination_id).bind(drift),
            Scope::Range(after, end) => q.bind(after).bind(end),
            Scope::Zone => q,
        };
        q.execute(p).await.map(|r| r.rows_affected())
    })
}

/// How many destinations in `zone` stand at each decided state (`ok`, `warn`, `blocked`) on `day`.
pub async fn zone_day_states(store: &Store, zone: &str, day: &str) -> sqlx::Result<Vec<(String, i64)>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT l.state, COUNT(*) FROM limit_decision l JOIN destination d ON d.destination_id = l.destination_id
         WHERE d.bank_time_zone = $1 AND l.bank_day = $2 GROUP BY l.state ORDER BY l.state"
    )
    .bind(zone)
    .bind(day)
    .fetch_all(p)
    .await)
}
