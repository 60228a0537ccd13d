//! The slot ledger: claiming `(job, slot)` so one slot's work is done once across processes, lease renewal
//! and takeover of a crashed claim, and the history of runs that `astra-worker runs` lists.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::Store;
use crate::store::with_pool;

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This process now owns the slot.
    Acquired { attempt: i32, took_over: bool },
    /// The slot already succeeded (re-run it with `--force`).
    AlreadySucceeded { run_id: String },
    /// Another process is working on it and its lease is live; `attempt` is the attempt it works on.
    HeldElsewhere { owner: String, lease_until: Option<DateTime<Utc>>, attempt: i32 },
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    run_id: String,
    owner: String,
    state: String,
    lease_until: Option<DateTime<Utc>>,
    attempts: i32,
}

/// Who is claiming: the run's id (fencing token), the process, and the lease length.
pub struct Claimant<'a> {
    pub run_id: &'a str,
    pub owner: &'a str,
    pub lease: TimeDelta,
    pub force: bool,
}

/// Claims `(job, slot)`. A slot that failed, was interrupted, ended partial, or whose claim lease expired is
/// taken without `--force`; a succeeded slot only with it. Every takeover is a compare-and-swap on the run id
/// that held it, so two processes racing for the same slot cannot both win.
pub async fn claim(store: &Store, job: &str, slot: DateTime<Utc>, who: &Claimant<'_>) -> sqlx::Result<Claim> {
    let now = Utc::now();
    let lease_until = now + who.lease;
    let inserted = with_pool!(store, |p| sqlx::query(
        "INSERT INTO slot_claim (job, slot, run_id, owner, state, lease_until, attempts)
         VALUES ($1, $2, $3, $4, 'running', $5, 1) ON CONFLICT (job, slot) DO NOTHING"
    )
    .bind(job)
    .bind(slot)
    .bind(who.run_id)
    .bind(who.owner)
    .bind(lease_until)
    .execute(p)
    .await?
    .rows_affected());
    if inserted == 1 {
        return Ok(Claim::Acquired { attempt: 1, took_over: false });
    }
    let row: ClaimRow = with_pool!(store, |p| sqlx::query_as(
        "SELECT run_id, owner, state, lease_until, attempts FROM slot_claim WHERE job = $1 AND slot = $2"
    )
    .bind(job)
    .bind(slot)
    .fetch_one(p)
    .await?);
    let live = row.state == "running" && row.lease_until.is_some_and(|l| l > now);
    if live {
        return Ok(Claim::HeldElsewhere { owner: row.owner, lease_until: row.lease_until, attempt: row.attempts });
    }
    if row.state == "succeeded" && !who.force {
        return Ok(Claim::AlreadySucceeded { run_id: row.run_id });
    }
    let took = with_pool!(store, |p| {
        sqlx::query(
        "UPDATE slot_claim SET run_id = $1, owner = $2, state = 'running', lease_until = $3, attempts = attempts + 1
         WHERE job = $4 AND slot = $5 AND run_id = $6"
    )
    .bind(who.run_id)
    .bind(who.owner)
    .bind(lease_until)
    .bind(job)
    .bind(slot)
    .bind(&row.run_id)
    .execute(p)
    .await?
    .rows_affected()
    });
    if took == 1 {
        Ok(Claim::Acquired { attempt: row.attempts + 1, took_over: row.state == "running" })
    } else {
        // Someone else won the compare-and-swap in between: they work on the next attempt.
        Ok(Claim::HeldElsewhere { owner: "another process".into(), lease_until: None, attempt: row.attempts + 1 })
    }
}

/// Extends the lease; `false` means the claim was taken over and this run must stop.
pub async fn renew(
    store: &Store,
    job: &str,
    slot: DateTime<Utc>,
    run_id: &str,
    lease: TimeDelta,
) -> sqlx::Result<bool> {
    let n = with_pool!(store, |p| sqlx::query(
        "UPDATE slot_claim SET lease_until = $1 WHERE job = $2 AND slot = $3 AND run_id = $4 AND state = 'running'"
    )
    .bind(Utc::now() + lease)
    .bind(job)
    .bind(slot)
    .bind(run_id)
    .execute(p)
    .await?
    .rows_affected());
    Ok(n == 1)
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// Finished, but some items failed for reasons that may pass (left for the next run).
    Partial,
    Failed,
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Figures a run reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub processed: i64,
    pub failed: i64,
    pub skipped: i64,
    pub requests: i64,
}

/// A run's opening record.
pub struct RunStart<'a> {
    pub run_id: &'a str,
    pub job: &'a str,
    pub slot: DateTime<Utc>,
    pub owner: &'a str,
    pub forced: bool,
    pub rate_configured: i64,
}

pub async fn start_run(store: &Store, r: &RunStart<'_>) -> sqlx::Result<()> {
    with_pool!(store, |p| sqlx::query(
        "INSERT INTO job_run (run_id, job, slot, owner, forced, started_at, outcome, rate_configured)
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7)"
    )
    .bind(r.run_id)
    .bind(r.job)
    .bind(r.slot)
    .bind(r.owner)
    .bind(r.forced)
    .bind(Utc::now())
    .bind(r.rate_configured)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Records the end of a run and releases the claim in one transaction (fenced by run id).
pub async fn finish_run(
    store: &Store,
    run_id: &str,
    outcome: Outcome,
    counts: &Counts,
    details: &serde_json::Value,
    error: Option<&str>,
) -> sqlx::Result<()> {
    let details = details.to_string();
    let _turn = store.write_turn().await?;
    with_pool!(store, |p| {
        let mut tx = p.begin().await?;
        sqlx::query(
            "UPDATE job_run SET finished_at = $1, outcome = $2, processed = $3, failed = $4, skipped = $5,
                    requests = $6, details = $7, error = $8 WHERE run_id = $9",
        )
        .bind(Utc::now())
        .bind(outcome.as_str())
        .bind(counts.processed)
        .bind(counts.failed)
        .bind(counts.skipped)
        .bind(counts.requests)
        .bind(&details)
        .bind(error)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE slot_claim SET state = $1, lease_until = NULL WHERE run_id = $2")
            .bind(outcome.as_str())
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    })
}

/// Slots of `job` in `[from, to]` that succeeded (catch-up skips them).
pub async fn succeeded_slots(
    store: &Store,
    job: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<DateTime<Utc>>> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT slot FROM slot_claim WHERE job = $1 AND slot >= $2 AND slot <= $3 AND state = 'succeeded'"
    )
    .bind(job)
    .bind(from)
    .bind(to)
    .fetch_all(p)
    .await)
}

/// One line of `astra-worker runs`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub run_id: String,
    pub job: String,
    pub slot: DateTime<Utc>,
    pub owner: String,
    pub forced: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub processed: i64,
    pub failed: i64,
    pub skipped: i64,
    pub requests: i64,
    pub rate_configured: i64,
    pub details: Option<String>,
    pub error: Option<String>,
}

/// The newest runs first, optionally of one job.
pub async fn list_runs(store: &Store, job: Option<&str>, limit: i64) -> sqlx::Result<Vec<RunRow>> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT run_id, job, slot, owner, forced, started_at, finished_at, outcome, processed, failed, skipped,
                requests, rate_configured, details, error
         FROM job_run WHERE ($1 IS NULL OR job = $1) ORDER BY started_at DESC, run_id LIMIT $2"
    )
    .bind(job)
    .bind(limit)
    .fetch_all(p)
    .await)
}

/// The latest slot of `job` that succeeded.
pub async fn last_succeeded_slot(store: &Store, job: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    with_pool!(store, |p| sqlx::query_scalar("SELECT MAX(slot) FROM slot_claim WHERE job = $1 AND state = 'succeeded'")
        .bind(job)
        .fetch_one(p)
        .await)
}

/// When a run of `job` last finished successfully.
pub async fn last_success_finished(store: &Store, job: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    with_pool!(store, |p| sqlx::query_scalar(
        "SELECT MAX(finished_at) FROM job_run WHERE job = $1 AND outcome = 'succeeded'"
    )
    .bind(job)
    .fetch_one(p)
    .await)
}

/// Marks `instance` as calling Astra until `until`, and returns how many processes are present now (it
/// included): they divide `astra.requests_per_second` among themselves.
pub async fn presence(store: &Store, instance: &str, until: DateTime<Utc>, now: DateTime<Utc>) -> sqlx::Result<i64> {
    with_pool!(store, |p| {
        sqlx::query(
            "INSERT INTO astra_presence (instance, alive_until) VALUES ($1, $2)
             ON CONFLICT (instance) DO UPDATE SET alive_until = excluded.alive_until",
        )
        .bind(instance)
        .bind(until)
        .execute(p)
        .await?;
        sqlx::query("DELETE FROM astra_presence WHERE alive_until < $1").bind(now).execute(p).await?;
        sqlx::query_scalar("SELECT COUNT(*) FROM astra_presence").fetch_one(p).await
    })
}

/// Runs finished before the cutoff (the `retention` job's `job_runs`), but never a job's latest success (the
/// metrics' last success; found through `job_run_last_success`).
pub const FORGET_RUNS: super::forget::Forget = super::forget::Forget {
    table: "job_run",
    key: "run_id",
    done_before: "finished_at IS NOT NULL AND finished_at < $1
                  AND finished_at < COALESCE((SELECT MAX(r.finished_at) FROM job_run r
                                              WHERE r.job = job_run.job AND r.outcome = 'succeeded'), $1)",
};

/// Claims of slots before the cutoff that no run holds (the `retention` job's `job_runs`: longer than any
/// job's `max_lateness`, so no slot a job could still catch up is claimable again), but never a job's latest
/// succeeded slot (what `health` reads).
pub const FORGET_CLAIMS: super::forget::Forget = super::forget::Forget {
    table: "slot_claim",
    key: "job, slot",
    done_before: "state <> 'running' AND slot < $1
                  AND slot < COALESCE((SELECT MAX(c.slot) FROM slot_claim c
                                       WHERE c.job = slot_claim.job AND c.state = 'succeeded'), $1)",
};
