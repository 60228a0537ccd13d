//! Holds (the owner of `guard_hold`): an amount the guard allowed, reserved against a destination's bank day
//! under the caller's key until the transfer it stands for is in the mirror (its `client_correlation_id` is
//! the key, or its `routine_id` was attached), it is released, or it expires.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    failure::Failure,
    store::{Session, Store, with_pool, with_session},
};

/// The longest key accepted (Astra's own `Idempotency-Key` limit).
pub const MAX_KEY_LEN: usize = 128;

/// A hold key: 1 to 128 printable characters, no control character, no surrounding space.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.trim() != key {
        return Err("the hold key must not be empty nor start or end with a space".into());
    }
    if key.chars().count() > MAX_KEY_LEN {
        return Err(format!("the hold key is longer than {MAX_KEY_LEN} characters"));
    }
    if key.chars().any(char::is_control) {
        return Err("the hold key contains a control character".into());
    }
    Ok(())
}

/// A routine id an attach would take: [`crate::secrets::check_id`]'s rules, the error naming both spellings of
/// the field (`--routine-id` on the command line, `routine_id` in a body).
pub fn check_routine_id(routine_id: &str) -> Result<(), String> {
    crate::secrets::check_id("routine_id", routine_id).map_err(|e| format!("{e} (--routine-id, routine_id)"))
}

/// A hold as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Hold {
    pub hold_key: String,
    pub user_id: String,
    pub destination_id: String,
    pub bank_day: String,
    pub amount_cents: i64,
    pub routine_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `counted` (its transfer is in the mirror), `released`, or `expired`.
    pub end_reason: Option<String>,
    pub transfer_id: Option<String>,
}

impl Hold {
    /// Still reserving its amount at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.ended_at.is_none() && self.expires_at > now
    }
}

const COLUMNS: &str = "hold_key, user_id, destination_id, bank_day, amount_cents, routine_id, created_at, expires_at, \
                       ended_at, end_reason, transfer_id";

/// The hold under `key`, with the answer the guard gave when it placed it.
pub async fn get(session: &mut Session<'_>, key: &str) -> sqlx::Result<Option<(Hold, String)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        hold: Hold,
        answer: String,
    }
    let sql = format!("SELECT {COLUMNS}, answer FROM guard_hold WHERE hold_key = $1");
    let row: Option<Row> =
        with_session!(session, |e| sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(key).fetch_optional(e).await)?;
    Ok(row.map(|r| (r.hold, r.answer)))
}

/// Holds ended before the cutoff (the `retention` job's `holds`); an open one is kept, however old.
pub const FORGET: crate::store::forget::Forget = crate::store::forget::Forget {
    table: "guard_hold",
    key: "hold_key",
    done_before: "ended_at IS NOT NULL AND ended_at < $1",
};

/// Holds, newest first; only the open ones (not ended, not expired at `now`) with `open_only`.
pub async fn list(store: &Store, open_only: bool, now: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<Hold>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM guard_hold WHERE ($1 = FALSE OR (ended_at IS NULL AND expires_at > $2))
         ORDER BY created_at DESC, hold_key LIMIT $3"
    );
    with_pool!(store, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(open_only)
        .bind(now)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// Ends an open hold because its routine was not created. `false`: no open hold under `key`.
pub async fn release(store: &Store, key: &str, now: DateTime<Utc>) -> sqlx::Result<bool> {
    with_pool!(store, |p| sqlx::query(
        "UPDATE guard_hold SET ended_at = $1, end_reason = 'released' WHERE hold_key = $2 AND ended_at IS NULL"
    )
    .bind(now)
    .bind(key)
    .execute(p)
    .await
    .map(|r| r.rows_affected() == 1))
}

/// Ties an open hold to the routine Astra created for it, so the routine's transfer ends it. `Err`: bad input
/// (a routine id no store could hold, no hold under the key) as configuration; the answer "no" (the hold has
/// ended, or is tied to another routine, or the routine to another hold) as [`Failure::Rejected`].
pub async fn attach(store: &Store, key: &str, routine_id: &str) -> anyhow::Result<()> {
    check_routine_id(routine_id).map_err(Failure::Config)?;
    // Open holds only: a recurring routine is attached to one hold at a time (a unique index keeps two
    // concurrent attaches from both succeeding).
    let attached = with_pool!(store, |p| sqlx::query(
        "UPDATE guard_hold SET routine_id = $1 WHERE hold_key = $2 AND ended_at IS NULL
           AND (routine_id IS NULL OR routine_id = $1)
           AND NOT EXISTS (SELECT 1 FROM guard_hold o WHERE o.routine_id = $1 AND o.hold_key <> $2
                           AND o.ended_at IS NULL)"
    )
    .bind(routine_id)
    .bind(key)
    .execute(p)
    .await
    .map(|r| r.rows_affected()));
    let n = match attached {
        Ok(n) => n,
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => 0,
        Err(e) => return Err(e.into()),
    };
    if n == 1 {
        // The routine's transfer may be in the mirror already: then it ends the hold now.
        end_if_mirrored(store, key, routine_id, Utc::now()).await?;
        return Ok(());
    }
    match get(&mut Session::pooled(store), key).await? {
        None => Err(Failure::config(format!("no hold under key {}", crate::secrets::shown(key)))),
        // The same attach again (a retry whose first answer was lost) after the hold ended: done already.
        Some((h, _)) if h.routine_id.as_deref() == Some(routine_id) => Ok(()),
        Some((h, _)) if h.ended_at.is_some() => Err(Failure::rejected(format!(
            "the hold {} has ended ({})",
            crate::secrets::shown(key),
            h.end_reason.unwrap_or_default()
        ))),
        Some(_) => Err(Failure::rejected(format!(
            "the hold {} is attached to another routine, or routine {routine_id} to another hold",
            crate::secrets::shown(key)
        ))),
    }
}

/// Ends the hold under `key` when a transfer of its routine, initiated after the hold was placed, is already in
/// the mirror and ended no other hold.
async fn end_if_mirrored(store: &Store, key: &str, routine_id: &str, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let Some((hold, _)) = get(&mut Session::pooled(store), key).await? else { return Ok(0) };
    let since = hold.created_at - CLOCK_SKEW;
    let transfer: Option<String> = with_pool!(store, |p| sqlx::query_scalar(
        "SELECT t.id FROM transfer t WHERE t.routine_id = $1 AND t.user_id = $2 AND t.initiated_at >= $3
           AND NOT EXISTS (SELECT 1 FROM guard_hold x WHERE x.transfer_id = t.id)
         ORDER BY t.initiated_at, t.id LIMIT 1"
    )
    .bind(routine_id)
    .bind(&hold.user_id)
    .bind(since)
    .fetch_optional(p)
    .await)?;
    let Some(transfer) = transfer else { return Ok(0) };
    with_pool!(store, |p| sqlx::query(
        "UPDATE guard_hold SET ended_at = $1, end_reason = 'counted', transfer_id = $2
         WHERE hold_key = $3 AND ended_at IS NULL"
    )
    .bind(now)
    .bind(transfer)
    .bind(key)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
}

/// Marks the holds that expired by `now` as ended; returns how many.
pub async fn end_expired(store: &Store, now: DateTime<Utc>) -> sqlx::Result<u64> {
    with_pool!(store, |p| {
        sqlx::query(
        "UPDATE guard_hold SET ended_at = expires_at, end_reason = 'expired' WHERE ended_at IS NULL AND expires_at <= $1"
    )
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected())
    })
}

/// The query behind [`users_to_sync`], `$1` a day before now: holds not ended (open, or expired and not yet
/// marked) that expire after `$1`, and holds marked expired after it. Two selections, each through its own
/// index (the open holds', the ended holds' by when they ended: an expired hold ends at its expiry), so the
/// sync, every few minutes, reads the holds of the last day, not every hold kept for the retention period (one
/// `OR` over both read the whole table). Unordered: SQLite ordered it by reading the whole by-user index.
pub const USERS_TO_SYNC: &str = "SELECT user_id FROM guard_hold WHERE ended_at IS NULL AND expires_at > $1
     UNION SELECT user_id FROM guard_hold WHERE ended_at > $1 AND end_reason = 'expired'";

/// Users whose transfers the sync reads now: those with a hold open at `now`, so each hold meets its transfer,
/// and those whose hold expired within the last day without its transfer being seen (a transfer Astra lists
/// late still counts, and nothing else reserves it any more).
pub async fn users_to_sync(store: &Store, now: DateTime<Utc>) -> sqlx::Result<Vec<String>> {
    let since = now - chrono::TimeDelta::days(1);
    let mut users: Vec<String> =
        with_pool!(store, |p| sqlx::query_scalar(USERS_TO_SYNC).bind(since).fetch_all(p).await)?;
    users.sort();
    Ok(users)
}

/// What became of one hold of a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Stored.
    Placed,
    /// Not stored: deciding on the figures found under the lock denied it.
    Declined,
    /// Not stored: a hold under this key exists (placed a moment ago by a concurrent call, or earlier in the
    /// same placement).
    KeyTaken,
}

/// A destination-day's figures as the guard decides on them: the counted total, the open held sum, and the
/// count of holds ever placed on the day (`inbound_day.holds_placed`, kept by a trigger on every insert). Figures
/// whose total and count are still the day's may hold more than its open holds (a hold ended since; an ended
/// hold is not counted), never less: an allowed hold decided on them stays right, a denial is checked on the
/// day's sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub total: i64,
    pub held: i64,
    pub placed: i64,
}

/// What [`place_if_unchanged`] found under the destination-day's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Stored, but for these keys, which a hold on another destination took meanwhile; the day's figures after.
    Placed { taken: Vec<String>, after: Figures },
    /// Nothing stored: the day's figures differ from the ones the holds were decided on; these are the figures
    /// found, summed under the lock.
    Changed(Figures),
    /// Nothing stored: holds under these keys exist.
    Taken(Vec<String>),
    /// Nothing stored: the store has no one-round-trip path (SQLite); take [`place_locked`].
    Unsupported,
}

/// PostgreSQL only, the guard's fast path: stores `holds` (each with the guard's answer, all on the
/// destination-day `day`, decided in order on `seen`) if under the day's lock the day's counted total and
/// count of holds placed are still `seen`'s (with `exact`, a denial among the decisions: if its held sum is
/// `seen`'s too) and no key is stored yet, in one round trip and one commit (the function
/// `guard_place_holds_counted`, migrations 0020 to 0022). The lock is the counter row every writer of the day
/// takes, so no other hold or counted transfer can slip between the check and the insert.
pub async fn place_if_unchanged(
    session: &mut Session<'_>,
    day: (&str, &str),
    now: DateTime<Utc>,
    seen: Figures,
    exact: bool,
    holds: &[(&Hold, &str)],
) -> sqlx::Result<Attempt> {
    let column = |f: fn(&Hold) -> String| holds.iter().map(|(h, _)| f(h)).collect::<Vec<_>>();
    let query = sqlx::query_as::<_, (String, i64, i64, i64, Option<Vec<String>>)>(
        "SELECT outcome, total, held, placed, keys
         FROM guard_place_holds_counted($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(day.0)
    .bind(day.1)
    .bind(now)
    .bind(seen.total)
    .bind(seen.held)
    .bind(seen.placed)
    .bind(exact)
    .bind(column(|h| h.hold_key.clone()))
    .bind(column(|h| h.user_id.clone()))
    .bind(holds.iter().map(|(h, _)| h.amount_cents).collect::<Vec<_>>())
    .bind(holds.iter().map(|(_, a)| a.to_string()).collect::<Vec<_>>())
    .bind(holds.iter().map(|(h, _)| h.created_at).collect::<Vec<_>>())
    .bind(holds.iter().map(|(h, _)| h.expires_at).collect::<Vec<_>>());
    let (outcome, total, held, placed, keys) = match session.parts() {
        (_, Some(c)) => query.fetch_one(c).await?,
        (Store::Postgres(p), None) => query.fetch_one(p).await?,
        (Store::Sqlite(_), None) => return Ok(Attempt::Unsupported),
    };
    let keys = keys.unwrap_or_default();
    let found = Figures { total, held, placed };
    Ok(match outcome.as_str() {
        "placed" => {
            let stored: i64 =
                holds.iter().filter(|(h, _)| !keys.contains(&h.hold_key)).map(|(h, _)| h.amount_cents).sum();
            Attempt::Placed { taken: keys, after: Figures { held: held + stored, ..found } }
        }
        "taken" => Attempt::Taken(keys),
        _ => Attempt::Changed(found),
    })
}

/// The open held sum of the destination-day `$1`, `$2` at `$3` (as the guard's read and
/// `guard_place_holds_counted` count it).
const HELD: &str = "(SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) FROM guard_hold
                     WHERE destination_id = $1 AND bank_day = $2 AND ended_at IS NULL AND expires_at > $3)";

/// The destination-day's figures at `now`, read without its lock.
pub async fn figures(session: &mut Session<'_>, day: (&str, &str), now: DateTime<Utc>) -> sqlx::Result<Figures> {
    let sql = format!(
        "SELECT COALESCE(i.total_cents, 0), {HELD}, COALESCE(i.holds_placed, 0)
         FROM (SELECT 1) one LEFT JOIN inbound_day i ON i.destination_id = $1 AND i.bank_day = $2"
    );
    let (total, held, placed) = with_session!(session, |e| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(day.0)
        .bind(day.1)
        .bind(now)
        .fetch_one(e)
        .await)?;
    Ok(Figures { total, held, placed })
}

/// Places `holds` (all on the destination-day `day`) in one transaction that holds the day's lock and, in
/// order, `decide(i, total, held)`s each (the answer's JSON to store, or `None`: denied; `held` includes the
/// holds placed before it) and inserts it. The figures decided on are `carried` when the day's counted total
/// and count of holds placed are still theirs under the lock, else the day's, read there; a denial on carried
/// figures is decided again on the day's held sum (an ended hold is still in carried figures). A key already
/// stored is `KeyTaken`. Gives the placements and the day's figures after.
pub async fn place_locked(
    store: &Store,
    day: (&str, &str),
    now: DateTime<Utc>,
    carried: Option<Figures>,
    holds: &[Hold],
    mut decide: impl FnMut(usize, i64, i64) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<(Vec<Placement>, Figures)> {
    let _turn = store.write_turn().await?;
    with_pool!(store, |p| async {
        let mut tx = p.begin().await?;
        let (total, placed) = crate::reconcile::counters::day_lock!(&mut *tx, day.0, day.1)?;
        let held_sql = format!("SELECT {HELD}");
        let sum = async |tx: &mut sqlx::Transaction<'_, _>| -> sqlx::Result<i64> {
            sqlx::query_scalar(sqlx::AssertSqlSafe(held_sql.clone()))
                .bind(day.0)
                .bind(day.1)
                .bind(now)
                .fetch_one(&mut **tx)
                .await
        };
        let (mut held, mut exact) = match carried {
            Some(f) if f.total == total && f.placed == placed => (f.held, false),
            _ => (sum(&mut tx).await?, true),
        };
        let mut out = Vec::with_capacity(holds.len());
        for (i, h) in holds.iter().enumerate() {
            let mut answer = decide(i, total, held)?;
            if answer.is_none() && !exact {
                // The day's own sum, this transaction's holds in it.
                (held, exact) = (sum(&mut tx).await?, true);
                answer = decide(i, total, held)?;
            }
            let Some(answer) = answer else {
                out.push(Placement::Declined);
                continue;
            };
            let n = sqlx::query(
                "INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
                     expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (hold_key) DO NOTHING",
            )
            .bind(&h.hold_key)
            .bind(&h.user_id)
            .bind(day.0)
            .bind(day.1)
            .bind(h.amount_cents)
            .bind(answer)
            .bind(h.created_at)
            .bind(h.expires_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                out.push(Placement::KeyTaken);
            } else {
                held += h.amount_cents;
                out.push(Placement::Placed);
            }
        }
        let stored = out.iter().filter(|p| **p == Placement::Placed).count();
        let after = Figures { total, held, placed: placed + i64::try_from(stored).unwrap_or(i64::MAX) };
        if stored > 0 {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok((out, after))
    }
    .await)
}

/// How far Astra's clock may run behind ours: a transfer initiated up to this long before a hold was placed
/// may still be the hold's.
pub const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Ends the one hold a transfer stands for, on the mirror's transaction: the oldest open hold of the same user
/// whose key is the transfer's correlation id or whose attached routine is the transfer's routine, placed
/// before the transfer was initiated (less [`CLOCK_SKEW`]), unless the transfer already ended a hold (a
/// recurring routine's earlier transfers never end a later hold). Evaluates to `sqlx::Result<u64>`.
macro_rules! holds_end_for_transfer {
    ($conn:expr, $t:expr, $user_id:expr, $now:expr) => {{
        let t: &$crate::astra::Transfer = $t;
        sqlx::query(
            "UPDATE guard_hold SET ended_at = $1, end_reason = 'counted', transfer_id = $2
             WHERE hold_key = (
                 SELECT h.hold_key FROM guard_hold h
                 WHERE h.ended_at IS NULL AND h.user_id = $3 AND h.created_at <= $4
                   AND (h.hold_key = $5 OR h.routine_id = $6)
                   AND NOT EXISTS (SELECT 1 FROM guard_hold x WHERE x.transfer_id = $2)
                 ORDER BY h.created_at, h.hold_key LIMIT 1)",
        )
        .bind($now)
        .bind(&t.id)
        .bind($user_id)
        .bind(t.initiated + $crate::reconcile::holds::CLOCK_SKEW)
        .bind(&t.client_correlation_id)
        .bind(&t.routine_id)
        .execute($conn)
        .await
        .map(|r| r.rows_affected())
    }};
}
pub(crate) use holds_end_for_transfer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_keys_are_short_printable_and_trimmed() {
        assert!(check_key("r-2026-11-22-0001").is_ok());
        assert!(check_key(&"k".repeat(128)).is_ok());
        assert!(check_key(&"k".repeat(129)).unwrap_err().contains("128"));
        assert!(check_key("a\u{0}b").unwrap_err().contains("control"));
        assert!(check_key("").is_err());
        assert!(check_key(" k").is_err());
        assert_eq!(crate::secrets::shown(&"x".repeat(100)), format!("`{}…`", "x".repeat(40)));
    }
}
