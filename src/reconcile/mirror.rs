//! The transfer mirror, owner of `transfer`, `transfer_event` and `transfer_sync`: Astra transfers upserted by id with a
//! compare-and-swap on their version. In the same transaction as each new or changed transfer: the per-(destination, bank day) inbound counter moves, the
//! status change is recorded with when it was seen, and a transfer that failed after its funds landed
//! produces its follow-ups (once, by idempotency key).

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde_json::json;

use super::{
    counters::counter_add,
    holds::holds_end_for_transfer,
    registry::{self, Destination},
};
use crate::{
    astra::{Transfer, TransferStatus},
    domain::BankDay,
    outbox::{Message, outbox_insert},
    store::{Store, with_pool},
};

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    version: i64,
    status: String,
    amount_cents: i64,
    destination_id: Option<String>,
    bank_day: Option<String>,
    counted: bool,
    settlement_reason: Option<String>,
    failure_reason: Option<String>,
    held_since: Option<DateTime<Utc>>,
    landed_at: Option<DateTime<Utc>>,
    cleared_at: Option<DateTime<Utc>>,
    /// Astra's `updated` of the answer stored.
    updated_at: Option<DateTime<Utc>>,
}

async fn load(store: &Store, id: &str) -> sqlx::Result<Option<Row>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT version, status, amount_cents, destination_id, bank_day, counted, settlement_reason, failure_reason,
                held_since, landed_at, cleared_at, updated_at FROM transfer WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upserted {
    pub new: bool,
    pub changed: bool,
    /// A held transfer (debited, not credited) was seen credited.
    pub cleared: bool,
    /// Follow-ups written for a transfer that failed after landing.
    pub followups: u32,
}

/// Debited but not credited: pending with a settlement reason, or pending past its estimated clearing date
/// (judged in the bank's zone).
pub fn is_held(t: &Transfer, now: DateTime<Utc>, bank_zone: Tz) -> bool {
    t.status == TransferStatus::Pending
        && (t.astra_settlement_reason.is_some()
            || t.estimated_clearing_date.is_some_and(|c| c.has_passed(now, bank_zone)))
}

/// When a landed transfer is read again: 1, 2, 3, 5, 8, 13, 21, 34 and 55 days after it landed (ACH returns
/// come mostly within two bank days, unauthorized ones up to 60 days later), then no more.
pub fn next_recheck(landed_at: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    const DAYS: [i64; 9] = [1, 2, 3, 5, 8, 13, 21, 34, 55];
    DAYS.iter().map(|d| landed_at + TimeDelta::days(*d)).find(|t| *t > after)
}

fn is_account_to_card(routine_type: Option<&str>) -> bool {
    routine_type.is_some_and(|r| r.to_ascii_lowercase().replace('_', "-") == "account-to-card")
}

/// The state a transfer should have in the mirror.
struct Next {
    counted: bool,
    bank_day: Option<String>,
    held_since: Option<DateTime<Utc>>,
    landed_at: Option<DateTime<Utc>>,
    cleared_at: Option<DateTime<Utc>>,
    failed_after_landing: bool,
}

fn next_state(t: &Transfer, dest: Option<&Destination>, old: Option<&Row>, now: DateTime<Utc>) -> Next {
    let live = !matches!(t.status, TransferStatus::Failed | TransferStatus::Cancelled);
    let zone = dest.map(Destination::zone).unwrap_or(chrono_tz::UTC);
    let held_now = is_held(t, now, zone);
    let held_since = old.and_then(|o| o.held_since).or(held_now.then_some(now));
    let landed_at = old.and_then(|o| o.landed_at).or((t.status == TransferStatus::Processed).then_some(now));
    let cleared_at = old
        .and_then(|o| o.cleared_at)
        .or((held_since.is_some() && t.status == TransferStatus::Processed).then_some(now));
    let was_failed = old.is_some_and(|o| o.status == "failed");
    Next {
        counted: dest.is_some() && live,
        bank_day: dest.map(|d| BankDay::of(d.zone(), t.initiated).key()),
        held_since,
        landed_at,
        cleared_at,
        failed_after_landing: t.status == TransferStatus::Failed
            && !was_failed
            && old.is_some_and(|o| o.landed_at.is_some()),
    }
}

/// The follow-ups a transfer that failed after landing requires.
async fn followups(store: &Store, user_id: &str, t: &Transfer, now: DateTime<Utc>) -> sqlx::Result<Vec<Message>> {
    let mut out = vec![Message::once(
        "remove_from_available_balance",
        &t.id,
        Some(user_id),
        json!({
            "transfer_id": t.id,
            "account_id": t.destination_id,
            "amount_cents": t.amount.0,
            "failure_reason": t.failure_reason,
        }),
        now,
    )];
    if is_account_to_card(t.routine_type.as_deref()) {
        let credit = match &t.routine_id {
            Some(r) => registry::ach_credit(store, r).await?,
            None => None,
        };
        out.push(Message::once(
            "cancel_ach_credit",
            &t.id,
            Some(user_id),
            json!({
                "transfer_id": t.id,
                "routine_id": t.routine_id,
                "ach_credit_id": credit.as_ref().map(|c| &c.0),
                "addenda": credit.as_ref().map(|c| &c.1),
                "amount_cents": t.amount.0,
            }),
            now,
        ));
    }
    Ok(out)
}

/// Upserts one transfer read for `user_id`. Safe against concurrent writers of the same transfer: a lost
/// compare-and-swap re-reads and tries again, so nothing is counted twice.
pub async fn upsert(store: &Store, user_id: &str, t: &Transfer, now: DateTime<Utc>) -> anyhow::Result<Upserted> {
    let dest = match &t.destination_id {
        Some(d) => registry::destination(store, d).await?,
        None => None,
    };
    for _ in 0..8 {
        // Read outside the transaction: the transaction's first statement is then a write (SQLite takes its
        // write lock at once and waits on the busy timeout instead of failing on a stale snapshot).
        let old = load(store, &t.id).await?;
        // Answers return late and out of order (a webhook's read racing a poll): one older than the answer stored,
        // by Astra's own `updated`, changes nothing.
        if let (Some(stored), Some(o)) = (old.as_ref().and_then(|o| o.updated_at), t.updated)
            && o < stored
        {
            touch(store, &t.id, now).await?;
            return Ok(Upserted::default());
        }
        let next = next_state(t, dest.as_ref(), old.as_ref(), now);
        if let Some(o) = &old {
            let same = o.status == t.status.as_str()
                && o.amount_cents == t.amount.0
                && o.destination_id == t.destination_id
                && o.settlement_reason == t.astra_settlement_reason
                && o.failure_reason == t.failure_reason
                && o.counted == next.counted
                && o.bank_day == next.bank_day
                && o.held_since == next.held_since;
            if same {
                touch(store, &t.id, now).await?;
                return Ok(Upserted::default());
            }
        }
        let msgs = if next.failed_after_landing { followups(store, user_id, t, now).await? } else { vec![] };
        if write(store, user_id, t, old.as_ref(), &next, &msgs, now).await? {
            return Ok(Upserted {
                new: old.is_none(),
                changed: old.is_some(),
                cleared: next.cleared_at.is_some() && old.as_ref().is_none_or(|o| o.cleared_at.is_none()),
                followups: msgs.len() as u32,
            });
        }
    }
    anyhow::bail!("transfer {}: too many concurrent writers; left for the next run", t.id)
}

async fn touch(store: &Store, id: &str, now: DateTime<Utc>) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query("UPDATE transfer SET last_seen_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
}

/// The transactional write; `false` when another writer got there first (nothing written).
async fn write(
    store: &Store,
    user_id: &str,
    t: &Transfer,
    old: Option<&Row>,
    next: &Next,
    msgs: &[Message],
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let status = t.status.as_str();
    let clearing = t.estimated_clearing_date.map(|c| c.to_text());
    let live = !matches!(t.status, TransferStatus::Failed | TransferStatus::Cancelled);
    let recheck_at = match (next.landed_at, old.and_then(|o| o.landed_at)) {
        (Some(landed), None) if live => next_recheck(landed, now),
        _ => None,
    };
    let _turn = store.write_turn().await?;
    with_pool!(store, |p| {
        let mut tx = p.begin().await?;
        let wrote = match old {
            None => sqlx::query(
                "INSERT INTO transfer (id, user_id, version, routine_id, routine_type, source_id, destination_id,
                     amount_cents, payment_type, status, settlement_reason, failure_reason, initiated_at, updated_at,
                     estimated_clearing_date, bank_day, counted, held_since, landed_at, cleared_at, first_seen_at,
                     last_seen_at, client_correlation_id, recheck_at)
                 VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $20,
                     $21, $22)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&t.id)
            .bind(user_id)
            .bind(&t.routine_id)
            .bind(&t.routine_type)
            .bind(&t.source_id)
            .bind(&t.destination_id)
            .bind(t.amount.0)
            .bind(&t.payment_type)
            .bind(status)
            .bind(&t.astra_settlement_reason)
            .bind(&t.failure_reason)
            .bind(t.initiated)
            .bind(t.updated)
            .bind(&clearing)
            .bind(&next.bank_day)
            .bind(next.counted)
            .bind(next.held_since)
            .bind(next.landed_at)
            .bind(next.cleared_at)
            .bind(now)
            .bind(&t.client_correlation_id)
            .bind(recheck_at)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Some(o) => sqlx::query(
                "UPDATE transfer SET version = version + 1, destination_id = $1, amount_cents = $2, status = $3,
                     settlement_reason = $4, failure_reason = $5, updated_at = $6, estimated_clearing_date = $7,
                     bank_day = $8, counted = $9, held_since = $10, landed_at = $11, cleared_at = $12,
                     last_seen_at = $13, client_correlation_id = COALESCE($16, client_correlation_id),
                     recheck_at = CASE WHEN $17 THEN COALESCE($18, recheck_at) ELSE NULL END
                 WHERE id = $14 AND version = $15",
            )
            .bind(&t.destination_id)
            .bind(t.amount.0)
            .bind(status)
            .bind(&t.astra_settlement_reason)
            .bind(&t.failure_reason)
            .bind(t.updated)
            .bind(&clearing)
            .bind(&next.bank_day)
            .bind(next.counted)
            .bind(next.held_since)
            .bind(next.landed_at)
            .bind(next.cleared_at)
            .bind(now)
            .bind(&t.id)
            .bind(o.version)
            .bind(&t.client_correlation_id)
            .bind(live)
            .bind(recheck_at)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        if wrote != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Move the counters: take out what the old state counted, add what the new one counts.
        let mut moves: Vec<(&str, &str, i64, i64)> = Vec::new();
        if let Some(o) = old.filter(|o| o.counted)
            && let (Some(d), Some(day)) = (&o.destination_id, &o.bank_day)
        {
            moves.push((d, day, -o.amount_cents, -1));
        }
        if next.counted
            && let (Some(d), Some(day)) = (&t.destination_id, &next.bank_day)
        {
            moves.push((d, day, t.amount.0, 1));
        }
        // In a fixed order, so two writers moving the same two days never wait on each other crosswise.
        moves.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (d, day, cents, n) in moves {
            counter_add!(&mut *tx, d, day, cents, n)?;
        }
        if old.is_none_or(|o| o.status != status || o.settlement_reason != t.astra_settlement_reason) {
            sqlx::query(
                "INSERT INTO transfer_event (transfer_id, seen_at, from_status, to_status, settlement_reason)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&t.id)
            .bind(now)
            .bind(old.map(|o| o.status.as_str()))
            .bind(status)
            .bind(&t.astra_settlement_reason)
            .execute(&mut *tx)
            .await?;
        }
        for m in msgs {
            outbox_insert!(&mut *tx, m)?;
        }
        if t.client_correlation_id.is_some() || t.routine_id.is_some() {
            holds_end_for_transfer!(&mut *tx, t, user_id, now)?;
        }
        tx.commit().await?;
        Ok(true)
    })
}

/// Transfers watched by the reprocessing check: held (debited, not credited) and not yet cleared.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Watched {
    pub id: String,
    pub user_id: String,
    pub destination_id: Option<String>,
    pub amount_cents: i64,
    pub settlement_reason: Option<String>,
    pub initiated_at: DateTime<Utc>,
    pub held_since: Option<DateTime<Utc>>,
}

pub async fn watched(store: &Store, card: Option<&str>) -> sqlx::Result<Vec<Watched>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT id, user_id, destination_id, amount_cents, settlement_reason, initiated_at, held_since FROM transfer
         WHERE status = 'pending' AND held_since IS NOT NULL AND cleared_at IS NULL
           AND ($1 IS NULL OR destination_id = $1)
         ORDER BY initiated_at"
    )
    .bind(card)
    .fetch_all(p)
    .await)
}

/// A landed transfer due to be read again.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LandedDue {
    pub id: String,
    pub user_id: String,
    pub landed_at: DateTime<Utc>,
}

/// Landed transfers whose next reading is due at `now` and that landed within `watch_for`, oldest due first.
pub async fn rechecks_due(
    store: &Store,
    now: DateTime<Utc>,
    watch_for: TimeDelta,
    limit: i64,
) -> sqlx::Result<Vec<LandedDue>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT id, user_id, landed_at FROM transfer
         WHERE recheck_at IS NOT NULL AND recheck_at <= $1 AND landed_at >= $2 AND status = 'processed'
         ORDER BY recheck_at, id LIMIT $3"
    )
    .bind(now)
    .bind(now - watch_for)
    .bind(limit)
    .fetch_all(p)
    .await)
}

/// Sets when a landed transfer is read next (`None`: never again).
pub async fn set_recheck(store: &Store, id: &str, at: Option<DateTime<Utc>>) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query("UPDATE transfer SET recheck_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
}

/// Moves when a held transfer was first seen held back by `by` (the demo's "days pass": its stuck follow-up
/// becomes due).
pub async fn backdate_held(store: &Store, id: &str, by: chrono::TimeDelta) -> sqlx::Result<()> {
    let Some(row) = load(store, id).await? else { return Ok(()) };
    let Some(since) = row.held_since else { return Ok(()) };
    with_pool!(store, |p| sqlx::query("UPDATE transfer SET held_since = $1 WHERE id = $2")
        .bind(since - by)
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
}

/// Records that a user's transfers were read from Astra at `read_at`, and the newest one seen.
pub async fn record_read(
    store: &Store,
    user_id: &str,
    read_at: DateTime<Utc>,
    newest: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    let sql = if store.is_postgres() {
        "INSERT INTO transfer_sync (user_id, read_at, newest_initiated) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET read_at = GREATEST(transfer_sync.read_at, excluded.read_at),
             newest_initiated = GREATEST(transfer_sync.newest_initiated, excluded.newest_initiated)"
    } else {
        "INSERT INTO transfer_sync (user_id, read_at, newest_initiated) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET read_at = MAX(transfer_sync.read_at, excluded.read_at),
             newest_initiated = COALESCE(MAX(transfer_sync.newest_initiated, excluded.newest_initiated),
                                         transfer_sync.newest_initiated, excluded.newest_initiated)"
    };
    with_pool!(store, |p| sqlx::query(sql).bind(user_id).bind(read_at).bind(newest).execute(p).await.map(|_| ()))
}

/// The newest transfer seen for a user: the sync reads back to it (less an overlap).
pub async fn newest_seen(store: &Store, user_id: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    let v: Option<Option<DateTime<Utc>>> =
        with_pool!(store, |p| sqlx::query_scalar("SELECT newest_initiated FROM transfer_sync WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(p)
            .await)?;
    Ok(v.flatten())
}
