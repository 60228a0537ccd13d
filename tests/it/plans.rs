//! The hot paths' queries read through their indexes at size, whatever the planner's statistics say: each test
//! arranges the rows that once made a plan go wrong and asserts on the plan (PostgreSQL's generic plan, the one
//! a statement gets once sqlx has run it five times; SQLite's `EXPLAIN QUERY PLAN`).

use chrono::{TimeDelta, Utc};

use crate::{
    both_backends,
    helpers::{Backend, TestDb},
    with_pool,
};
use astra_worker::store::Store;

/// The plan of `sql` with its `$n` parameters of PostgreSQL types `types` given the SQL literals `args`, after
/// `arrange` ran and the tables were analysed.
async fn plan(store: &Store, arrange: &str, sql: &str, types: &[&str], args: &[&str]) -> String {
    match store {
        Store::Sqlite(p) => {
            sqlx::query(sqlx::AssertSqlSafe(arrange)).execute(p).await.unwrap();
            sqlx::query("ANALYZE").execute(p).await.unwrap();
            let mut sql = sql.to_string();
            for (i, a) in args.iter().enumerate().rev() {
                sql = sql.replace(&format!("${}", i + 1), a);
            }
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))).fetch_all(p).await.unwrap();
            rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
        }
        Store::Postgres(p) => {
            let mut c = p.acquire().await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(arrange)).execute(&mut *c).await.unwrap();
            sqlx::query("ANALYZE").execute(&mut *c).await.unwrap();
            generic_plan(&mut c, sql, types, args).await
        }
    }
}

/// PostgreSQL's generic plan of `sql` on connection `c`, with the statistics as they are there.
async fn generic_plan(c: &mut sqlx::PgConnection, sql: &str, types: &[&str], args: &[&str]) -> String {
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut *c).await.unwrap();
    let prepare = format!("PREPARE q({}) AS {sql}", types.join(", "));
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *c).await.unwrap();
    let explain = format!("EXPLAIN EXECUTE q({})", args.join(", "));
    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(explain)).fetch_all(&mut *c).await.unwrap();
    // The connection goes back to the pool: the next plan prepares its own `q`.
    sqlx::raw_sql("DEALLOCATE q").execute(&mut *c).await.unwrap();
    rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n")
}

/// A timestamp as a SQL literal in the store's own spelling.
fn at(t: chrono::DateTime<Utc>) -> String {
    format!("'{}'", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

/// The rotation's claim reads its batch in the due index's order and stops, however many due grants share one
/// expiry (grants imported together do). Led by the expiry alone, the index left every claim to sort all the
/// tied due grants before taking 200: at 200,000 grants, the rotation fell behind its configured rate.
async fn the_rotation_claims_its_batch_in_index_order(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let expiry = Utc::now() + TimeDelta::days(2);
    let arrange = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO grant_token (user_id, status, token_version, key_id, access_ct, refresh_ct, refresh_expires_at,
             imported_at, updated_at)
         SELECT 'u' || i, 'active', 1, 'k', x'00', x'00', {e}, {e}, {e} FROM n",
        e = at(expiry)
    );
    let arrange = if b == Backend::Postgres { arrange.replace("x'00'", "'\\x00'::bytea") } else { arrange };
    // The claim's selection, as `tokens::store::claim_due` writes it.
    let claim = "SELECT user_id FROM grant_token
                 WHERE status = 'active' AND refresh_expires_at < $1
                   AND (lease_until IS NULL OR lease_until < $2)
                   AND (last_attempt_mark IS NULL OR last_attempt_mark <> $3)
                 ORDER BY refresh_expires_at, user_id LIMIT $4";
    let (due, now) = (at(expiry + TimeDelta::days(1)), at(Utc::now()));
    let plan =
        plan(&store, &arrange, claim, &["timestamptz", "timestamptz", "text", "bigint"], &[&due, &now, "'m'", "200"])
            .await;
    assert!(plan.contains("grant_token_due"), "the claim must read the due index:\n{plan}");
    let sorted = match b {
        Backend::Sqlite => plan.contains("TEMP B-TREE"),
        Backend::Postgres => plan
            .lines()
            .any(|l| l.trim_start().trim_start_matches("->  ").starts_with("Sort") || l.contains("Incremental Sort")),
    };
    assert!(!sorted, "the claim must not sort the due grants:\n{plan}");
    with_pool!(&store, |p| sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM grant_token")
        .fetch_one(p)
        .await
        .map(|n| assert_eq!(n, 5000))
        .unwrap());
}
both_backends!(the_rotation_claims_its_batch_in_index_order, super::the_rotation_claims_its_batch_in_index_order);

/// The sum of a day's open holds is found by destination and day, on a store whose statistics were taken while
/// no hold was open, only ended ones.
async fn the_days_open_holds_are_summed_through_their_index(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let arrange = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
             expires_at, ended_at, end_reason)
         SELECT 'old-' || i, 'u' || (i % 500), 'd' || (i % 500), '2026-01-01', 100, '{{}}', {t}, {t}, {t}, 'expired'
         FROM n",
        t = at(Utc::now() - TimeDelta::days(30))
    );
    // The guard's sum of a day's open holds, as `reconcile::guard` reads it.
    let sum = "SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) FROM guard_hold
               WHERE destination_id = $1 AND bank_day = $2 AND ended_at IS NULL AND expires_at > $3";
    let plan =
        plan(&store, &arrange, sum, &["text", "text", "timestamptz"], &["'dst'", "'2026-12-01'", &at(Utc::now())])
            .await;
    assert!(plan.contains("guard_hold_open"), "the sum must use the open holds' index by destination and day:\n{plan}");
}
both_backends!(
    the_days_open_holds_are_summed_through_their_index,
    super::the_days_open_holds_are_summed_through_their_index
);

/// The retention job finds the old rows of its two largest tables through their indexes on when the work ended,
/// not by reading every row: the call log gains a row per Astra request, and in steady state almost none of
/// them is old.
async fn retention_finds_old_rows_through_their_index(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let t = at(Utc::now() - TimeDelta::hours(1));
    let calls = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO api_call (at, method, endpoint, attempt, latency_ms, outcome)
         SELECT {t}, 'GET', '/v1/user', 1, 5, 'ok' FROM n"
    );
    let webhooks = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO webhook_inbox (webhook_id, webhook_type, body, received_at, next_attempt_at, processed_at, outcome)
         SELECT 'w' || i, 'user_updated', '{{}}', {t}, {t}, {t}, 'processed' FROM n"
    );
    // A job's latest success, which its runs are compared with, is found through its index, not by reading
    // all of the job's runs for each (transfer-sync alone runs 105,000 times a year).
    let runs = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO job_run (run_id, job, slot, owner, forced, started_at, finished_at, outcome)
         SELECT 'r' || i, 'transfer-sync', {t}, 'h:1', FALSE, {t}, {t}, 'succeeded' FROM n"
    );
    let cutoff = at(Utc::now() - TimeDelta::days(14));
    for (arrange, forget, index) in [
        (calls, &astra_worker::astra::FORGET_CALLS, "api_call_at"),
        (webhooks, &astra_worker::inbox::store::FORGET, "webhook_inbox_processed"),
        (runs, &astra_worker::store::ledger::FORGET_RUNS, "job_run_last_success"),
    ] {
        let plan = plan(&store, &arrange, &forget.candidates(), &["timestamptz", "bigint"], &[&cutoff, "5000"]).await;
        assert!(plan.contains(index), "{}: the old rows must be found through {index}:\n{plan}", forget.table);
    }
}
both_backends!(retention_finds_old_rows_through_their_index, super::retention_finds_old_rows_through_their_index);

/// Statistics taken while every hold had ended (a quiet night: 5,000 ended holds, analysed), then 3,000 holds
/// opened on another destination, autovacuum kept off the table so the statistics stay what they were: what
/// led the placing function's key look-up to read every open hold.
async fn stale_hold_statistics(c: &mut sqlx::PgConnection) {
    let (then, later) = (at(Utc::now() - TimeDelta::days(30)), at(Utc::now() + TimeDelta::hours(1)));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE guard_hold SET (autovacuum_enabled = false);
         INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
             expires_at, ended_at, end_reason)
         SELECT 'old-' || i, 'u' || i, 'other', '2026-01-01', 100, '{{}}', {then}, {then}, {then}, 'expired'
         FROM generate_series(1, 5000) i;
         ANALYZE guard_hold;
         INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
             expires_at)
         SELECT 'open-' || i, 'u' || i, 'other', '2026-12-01', 100, '{{}}', {then}, {later}
         FROM generate_series(1, 3000) i"
    )))
    .execute(c)
    .await
    .unwrap();
}

/// PostgreSQL's placing function with nothing to place (the guard asks it for a denial's figures, summed under
/// the day's lock) reads no hold of another destination or day. `hold_key = ANY ('{}')` is false for every
/// row, so the planner may answer it from any partial index: with statistics taken while no hold was open, its
/// key look-up read every open hold (100 ms a placement at 68,000, found under `POST /v1/guard`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_placing_nothing_reads_no_other_holds() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let Store::Postgres(p) = &store else { unreachable!("a PostgreSQL store") };
    let mut c = p.acquire().await.unwrap();
    stale_hold_statistics(&mut c).await;
    let mut tx = sqlx::Connection::begin(&mut *c).await.unwrap();
    let placed: (String, i64, i64, i64) = sqlx::query_as(
        "SELECT outcome, total, held, placed FROM guard_place_holds_counted('dst', '2026-12-02', now(), 0, 0, 0, TRUE,
             '{}', '{}', '{}', '{}', '{}', '{}')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(placed, ("placed".to_string(), 0, 0, 0), "nothing placed, the day's figures as they are");
    // What this transaction read of guard_hold, by any scan.
    let read: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(seq_tup_read + COALESCE(idx_tup_fetch, 0)), 0)::BIGINT
         FROM pg_stat_xact_user_tables WHERE relname = 'guard_hold'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(read, 0, "placing nothing on an empty day must read no other hold");
}

/// The placing function plans its statements once per connection (migration 0022): its key look-up was planned
/// again at every placement, its generic plan estimated costlier than a plan for the call's one key. The generic
/// plan reads the keys through the primary key whatever the statistics say, even for no key at all (the
/// statistics and the empty key list that once led a custom plan to read every open hold, see above).
#[tokio::test]
async fn postgres_the_placing_function_plans_once_per_connection() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let Store::Postgres(p) = &store else { unreachable!("a PostgreSQL store") };
    let config: Vec<String> =
        sqlx::query_scalar("SELECT COALESCE(proconfig, '{}') FROM pg_proc WHERE proname = 'guard_place_holds_counted'")
            .fetch_one(p)
            .await
            .unwrap();
    assert_eq!(config, vec!["plan_cache_mode=force_generic_plan".to_string()], "the function's own settings");
    let mut c = p.acquire().await.unwrap();
    stale_hold_statistics(&mut c).await;
    let look_up = "SELECT array_agg(g.hold_key) FROM guard_hold g WHERE g.hold_key = ANY ($1)";
    for keys in ["'{}'", "'{open-1,k}'"] {
        let plan = generic_plan(&mut c, look_up, &["TEXT[]"], &[keys]).await;
        assert!(plan.contains("guard_hold_pkey"), "keys {keys}: the look-up reads the primary key:\n{plan}");
    }
}

/// The frequent sync finds the users with holds open or expired in the last day through the holds' indexes,
/// not by reading every hold kept for the retention period (30 days by default): one `OR` over both kinds read
/// the whole table, every five minutes.
async fn the_syncs_users_are_found_through_the_holds_indexes(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let now = Utc::now();
    let (old, recent, later) =
        (at(now - TimeDelta::days(20)), at(now - TimeDelta::hours(2)), at(now + TimeDelta::hours(1)));
    // Four holds of the last day, then 5,000 ended long ago (counted or expired).
    let recent_holds = format!(
        "INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
             expires_at, ended_at, end_reason)
         VALUES ('open', 'u-open', 'd1', '2026-12-01', 100, '{{}}', {recent}, {later}, NULL, NULL),
                ('lapsed', 'u-lapsed', 'd2', '2026-12-01', 100, '{{}}', {recent}, {recent}, {recent}, 'expired'),
                ('unmarked', 'u-unmarked', 'd3', '2026-12-01', 100, '{{}}', {recent}, {recent}, NULL, NULL),
                ('counted', 'u-counted', 'd4', '2026-12-01', 100, '{{}}', {recent}, {later}, {recent}, 'counted')"
    );
    with_pool!(&store, |p| sqlx::query(sqlx::AssertSqlSafe(recent_holds.clone()))
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    let arrange = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
             expires_at, ended_at, end_reason)
         SELECT 'old-' || i, 'u' || (i % 500), 'd' || (i % 500), '2026-01-01', 100, '{{}}', {old}, {old}, {old},
                CASE WHEN i % 2 = 0 THEN 'counted' ELSE 'expired' END
         FROM n"
    );
    let since = at(now - TimeDelta::days(1));
    let plan = plan(&store, &arrange, astra_worker::reconcile::holds::USERS_TO_SYNC, &["timestamptz"], &[&since]).await;
    // Read whole: the table, or an index of every hold (by user, by key); the open holds' index may be read
    // whole, it holds only the holds not ended.
    let whole = match b {
        Backend::Sqlite => {
            plan.lines().any(|l| l.trim().starts_with("SCAN guard_hold") && !l.contains("INDEX guard_hold_open"))
        }
        Backend::Postgres => {
            plan.contains("Seq Scan on guard_hold")
                || plan.contains("guard_hold_user")
                || plan.contains("guard_hold_pkey")
        }
    };
    assert!(!whole, "the sync's users must be found through the holds' indexes:\n{plan}");
    assert!(plan.contains("guard_hold_ended"), "the holds expired in the last day, by when they ended:\n{plan}");
    let users = astra_worker::reconcile::holds::users_to_sync(&store, now).await.unwrap();
    assert_eq!(users, ["u-lapsed", "u-open", "u-unmarked"], "open, expired in the last day, expired unmarked");
}
both_backends!(
    the_syncs_users_are_found_through_the_holds_indexes,
    super::the_syncs_users_are_found_through_the_holds_indexes
);
