//! The `retention` job: it forgets the rows whose work is over once their keeping has passed, a batch at a
//! time, and nothing else (an open hold, a webhook still waiting, a running claim, an open intent, a job's
//! latest success stay however old); a dry run only counts.

use astra_worker::{
    app::Worker,
    config::{JobName, JobParams},
    runner::{RunOptions, SlotResult, run_job},
    store::Store,
};
use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    both_backends,
    helpers::{Backend, TestDb, shipped_settings},
    with_pool,
};

fn days_ago(d: i64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::days(d)
}

async fn exec(store: &Store, sql: &'static str, id: &str, t: DateTime<Utc>) {
    with_pool!(store, |p| sqlx::query(sql).bind(id).bind(t).execute(p).await.map(|_| ()).unwrap());
}

/// A run of `job` that finished at `at` with `outcome`, and its slot's claim in the same state.
async fn finished(store: &Store, run_id: &str, job: &str, outcome: &str, at: DateTime<Utc>) {
    with_pool!(store, |p| {
        sqlx::query(
            "INSERT INTO job_run (run_id, job, slot, owner, forced, started_at, finished_at, outcome)
             VALUES ($1, $2, $3, 'h:1', FALSE, $3, $3, $4)",
        )
        .bind(run_id)
        .bind(job)
        .bind(at)
        .bind(outcome)
        .execute(p)
        .await
        .unwrap();
        sqlx::query("INSERT INTO slot_claim (job, slot, run_id, owner, state) VALUES ($1, $2, $3, 'h:1', $4)")
            .bind(job)
            .bind(at)
            .bind(run_id)
            .bind(outcome)
            .execute(p)
            .await
            .map(|_| ())
            .unwrap()
    });
}

/// For each table, one row past its keeping and done (forgotten), one done but recent, and (where a row can
/// be undone) one old but not done: the last two are kept.
async fn seed(store: &Store) {
    for (id, at) in [("old", days_ago(40)), ("new", days_ago(1))] {
        exec(
            store,
            "INSERT INTO api_call (run_id, at, method, endpoint, user_id, attempt, status, latency_ms, outcome)
             VALUES ($1, $2, 'GET', '/v1/user', 'u1', 1, 200, 5, 'ok')",
            id,
            at,
        )
        .await;
    }
    let webhook = "INSERT INTO webhook_inbox (webhook_id, webhook_type, body, received_at, next_attempt_at, processed_at, outcome)
                   VALUES ($1, 'user_updated', '{}', $2, $2, $2, 'processed')";
    exec(store, webhook, "old", days_ago(20)).await;
    exec(store, webhook, "new", days_ago(1)).await;
    exec(
        store,
        "INSERT INTO webhook_inbox (webhook_id, webhook_type, body, received_at, next_attempt_at)
         VALUES ($1, 'user_updated', '{}', $2, $2)",
        "waiting",
        days_ago(20),
    )
    .await;
    let hold = "INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
                                        expires_at, ended_at, end_reason)
                VALUES ($1, 'u1', 'd1', '2026-01-01', 100, '{}', $2, $2, $2, 'released')";
    exec(store, hold, "old", days_ago(40)).await;
    exec(store, hold, "new", days_ago(1)).await;
    exec(
        store,
        "INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at, expires_at)
         VALUES ($1, 'u1', 'd1', '2026-01-01', 100, '{}', $2, $2)",
        "open",
        days_ago(40),
    )
    .await;
    // For runs and claims: an old success before a newer one (forgotten), a failure of a job that never
    // succeeded (forgotten), and a job's only success, however old (kept: what `health` and the metrics read).
    finished(store, "old", "inbound-volume", "succeeded", days_ago(100)).await;
    finished(store, "new", "inbound-volume", "succeeded", days_ago(1)).await;
    finished(store, "failed", "reprocessing-check", "failed", days_ago(100)).await;
    finished(store, "only", "token-rotation", "succeeded", days_ago(100)).await;
    exec(
        store,
        "INSERT INTO job_run (run_id, job, slot, owner, forced, started_at, outcome)
         VALUES ($1, 'inbound-volume', $2, 'h:1', FALSE, $2, 'running')",
        "running",
        days_ago(100),
    )
    .await;
    exec(
        store,
        "INSERT INTO slot_claim (job, slot, run_id, owner, state, lease_until)
         VALUES ('inbound-volume', $2, $1, 'h:1', 'running', $2)",
        "running",
        days_ago(101),
    )
    .await;
    let intent = "INSERT INTO refresh_intent (id, user_id, token_version, owner, opened_at, closed_at, result)
                  VALUES ($1, $1, 1, 'h:1', $2, $2, 'rotated')";
    exec(store, intent, "old", days_ago(100)).await;
    exec(store, intent, "new", days_ago(1)).await;
    exec(
        store,
        "INSERT INTO refresh_intent (id, user_id, token_version, owner, opened_at) VALUES ($1, $1, 1, 'h:1', $2)",
        "open",
        days_ago(100),
    )
    .await;
}

/// The ids (or run ids) left in each table, sorted, leaving out the rows of the retention run itself.
async fn left(store: &Store) -> Vec<(String, Vec<String>)> {
    let queries = [
        ("api_call", "SELECT run_id FROM api_call"),
        ("webhook_inbox", "SELECT webhook_id FROM webhook_inbox"),
        ("guard_hold", "SELECT hold_key FROM guard_hold"),
        ("job_run", "SELECT run_id FROM job_run WHERE job <> 'retention'"),
        ("slot_claim", "SELECT run_id FROM slot_claim WHERE job <> 'retention'"),
        ("refresh_intent", "SELECT id FROM refresh_intent"),
    ];
    let mut out = Vec::new();
    for (table, sql) in queries {
        let mut ids: Vec<String> = with_pool!(store, |p| sqlx::query_scalar(sql).fetch_all(p).await.unwrap());
        ids.sort();
        out.push((table.to_string(), ids));
    }
    out
}

fn expect(rows: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    rows.iter().map(|(t, ids)| (t.to_string(), ids.iter().map(|s| s.to_string()).collect())).collect()
}

/// A worker on the shipped settings, with the retention job forgetting `batch_size` rows per statement.
async fn worker_with_batch(db: &TestDb, batch_size: u32) -> Worker {
    let mut settings = shipped_settings(None);
    for j in &mut settings.jobs {
        if let JobParams::Retention(p) = &mut j.params {
            p.batch_size = batch_size;
        }
    }
    Worker::new(settings, db.store().await)
}

async fn retention_forgets_only_what_is_done_and_past_its_keeping(b: Backend) {
    let db = TestDb::new(b).await;
    // One row per statement: the job goes on until a batch comes back short.
    let w = worker_with_batch(&db, 1).await;
    seed(&w.store).await;
    let everything = left(&w.store).await;

    let dry = RunOptions { dry_run: true, ..Default::default() };
    let r = run_job(&w, JobName::Retention, &dry, Utc::now()).await.unwrap();
    let SlotResult::DryRun { details, .. } = &r.reports[0].result else { panic!("{r:?}") };
    // Two runs and claims: an old success before a newer one, and a failure of a job that never succeeded.
    let expected = |table: &str| if table == "job_runs" || table == "slot_claims" { 2 } else { 1 };
    for table in ["api_calls", "webhooks", "holds", "job_runs", "slot_claims", "refresh_intents"] {
        assert_eq!(details[format!("would_forget_{table}")], expected(table), "{table}: {details}");
    }
    assert_eq!(left(&w.store).await, everything, "a dry run forgets nothing");

    let r = run_job(&w, JobName::Retention, &RunOptions::default(), Utc::now()).await.unwrap();
    let SlotResult::Ran { details, counts, .. } = &r.reports[0].result else { panic!("{r:?}") };
    for table in ["api_calls", "webhooks", "holds", "job_runs", "slot_claims", "refresh_intents"] {
        assert_eq!(details[format!("forgot_{table}")], expected(table), "{table}: {details}");
    }
    assert_eq!(counts.processed, 8, "{counts:?}");
    assert_eq!(
        left(&w.store).await,
        expect(&[
            ("api_call", &["new"]),
            ("webhook_inbox", &["new", "waiting"]),
            ("guard_hold", &["new", "open"]),
            ("job_run", &["new", "only", "running"]),
            ("slot_claim", &["new", "only", "running"]),
            ("refresh_intent", &["new", "open"]),
        ])
    );
}
both_backends!(
    retention_forgets_only_what_is_done_and_past_its_keeping,
    super::retention_forgets_only_what_is_done_and_past_its_keeping
);

async fn retention_forgets_more_than_one_batch_in_a_run(b: Backend) {
    let db = TestDb::new(b).await;
    let w = worker_with_batch(&db, 3).await;
    for i in 0..10 {
        exec(
            &w.store,
            "INSERT INTO api_call (run_id, at, method, endpoint, attempt, latency_ms, outcome)
             VALUES ($1, $2, 'POST', '/oauth/token', 1, 5, 'ok')",
            &format!("old-{i}"),
            days_ago(31),
        )
        .await;
    }
    let r = run_job(&w, JobName::Retention, &RunOptions::default(), Utc::now()).await.unwrap();
    let SlotResult::Ran { details, .. } = &r.reports[0].result else { panic!("{r:?}") };
    assert_eq!(details["forgot_api_calls"], 10, "{details}");
    let n: i64 =
        with_pool!(&w.store, |p| sqlx::query_scalar("SELECT COUNT(*) FROM api_call").fetch_one(p).await.unwrap());
    assert_eq!(n, 0);
}
both_backends!(retention_forgets_more_than_one_batch_in_a_run, super::retention_forgets_more_than_one_batch_in_a_run);
