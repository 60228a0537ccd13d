//! The transfer mirror, owner of `transfer` and `transfer_event`: Astra transfers upserted by id with a
//! compare-and-swap on their version. In the same transaction as each new or changed transfer: the per-(destination, bank day) inbound counter moves, the
//! status change is recorded with when it was seen, and a transfer that failed after its funds landed
//! produces its follow-ups (once, by idempotency key).

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;

use super::{
    counters::counter_add,
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
}

async fn load(store: &Store, id: &str) -> sqlx::Result<Option<Row>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT version, status, amount_cents, destination_id, bank_day, counted, settlement_reason, failure_reason,
                held_since, landed_at, cleared_at FROM transfer WHERE id = $1"
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

/// Debited but not credited: pending with a settlement reason, or pending past its estimated clearing date.
pub fn is_held(t: &Transfer, today: NaiveDate) -> bool {
    t.status == TransferStatus::Pending
        && (t.astra_settlement_reason.is_some() || t.estimated_clearing_date.is_some_and(|d| d < today))
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
    let held_now = is_held(t, now.date_naive());
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
    let clearing = t.estimated_clearing_date.map(|d| d.to_string());
    with_pool!(store, |p| {
        let mut tx = p.begin().await?;
        let wrote = match old {
            None => sqlx::query(
                "INSERT INTO transfer (id, user_id, version, routine_id, routine_type, source_id, destination_id,
                     amount_cents, payment_type, status, settlement_reason, failure_reason, initiated_at, updated_at,
                     estimated_clearing_date, bank_day, counted, held_since, landed_at, cleared_at, first_seen_at,
                     last_seen_at)
                 VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $20)
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
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Some(o) => sqlx::query(
                "UPDATE transfer SET version = version + 1, destination_id = $1, amount_cents = $2, status = $3,
                     settlement_reason = $4, failure_reason = $5, updated_at = $6, estimated_clearing_date = $7,
                     bank_day = $8, counted = $9, held_since = $10, landed_at = $11, cleared_at = $12,
                     last_seen_at = $13
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
        tx.commit().await?;
        Ok(true)
    })
}

/// Transfers watched by the reprocessing check: held (debited, not credited) and not yet cleared.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Watched {
    pub id: String,
    pub user_id: String,
    pub initiated_at: DateTime<Utc>,
    pub held_since: Option<DateTime<Utc>>,
}

pub async fn watched(store: &Store, card: Option<&str>) -> sqlx::Result<Vec<Watched>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT id, user_id, initiated_at, held_since FROM transfer
         WHERE status = 'pending' AND held_since IS NOT NULL AND cleared_at IS NULL
           AND ($1 IS NULL OR destination_id = $1)
         ORDER BY initiated_at"
    )
    .bind(card)
    .fetch_all(p)
    .await)
}

/// Users with a transfer seen landed (processed) since `since`: a failure after landing needs a follow-up.
pub async fn users_with_landed_since(store: &Store, since: DateTime<Utc>) -> sqlx::Result<Vec<String>> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM transfer WHERE status = 'processed' AND landed_at >= $1 ORDER BY user_id"
    )
    .bind(since)
    .fetch_all(p)
    .await)
}
