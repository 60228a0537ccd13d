//! The store failing under a run: PostgreSQL's connections terminated in the middle of a rotation
//! (`pg_terminate_backend`, as a failover or an operator would): the run ends (succeeded, partial or failed,
//! never a grant declared dead without proof), the next run completes, and every grant is healthy or has a
//! `lost_rotation` episode; none is refreshed twice. SQLite on a full filesystem (an 8 MiB tmpfs, so the test
//! runs as root): a storage error naming the full disk, exit 75, the database intact, and the same import
//! finishing once there is room. A long-lived process opens all its PostgreSQL connections at the start. A
//! PostgreSQL statement gives up on a lock held past the store's lock timeout; migrations wait it out.

use std::time::Duration;

use astra_worker::{
    config::JobName,
    exit::classify,
    failure::Status,
    runner::{RunOptions, run_job},
    sandbox::{Faults, SandboxSettings},
    store::{LOCK_TIMEOUT, Lives, PG_CONNECTIONS, Store},
    tokens::store as grant_store,
};
use chrono::{TimeDelta, Utc};

use crate::{
    helpers::{Backend, KEY_A, TestApp, TestDb, b64, bin, text},
    with_pool,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_terminated_mid_rotation_lose_no_grant() {
    let rig = TestApp::new(Backend::Postgres, SandboxSettings::default(), |s| {
        s.runner.grace_period = Duration::from_secs(5);
    })
    .await;
    rig.sandbox.set_faults(Faults { latency_ms: 20, ..Default::default() });
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 150, |_| TimeDelta::days(8)).await;
    let slot = w.settings.job(JobName::TokenRotation).unwrap().schedule.latest_at_or_before(Utc::now());
    let opts = RunOptions { force: true, slot, ..Default::default() };
    let run = {
        let (w2, opts) = (rig.worker(None).await, opts.clone());
        tokio::spawn(async move { run_job(&w2, JobName::TokenRotation, &opts, Utc::now()).await.map(|s| s.status()) })
    };
    while rig.sandbox.state().total_refreshes() < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every connection of the store's database, but this one, is cut.
    let admin = Store::open(&rig.db.url).await.unwrap();
    let cut: i64 = with_pool!(&admin, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()) t"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert!(cut > 0, "the run's connections were cut");
    let first = run.await.unwrap();
    eprintln!("db_faults: {cut} connections cut; the first run came to {first:?}");
    // Whatever the first run came to, the next one finishes the slot.
    let again = run_job(&w, JobName::TokenRotation, &opts, Utc::now()).await.unwrap();
    assert!(again.status() <= astra_worker::failure::Status::Temporary, "first {first:?}, then {:?}", again.status());
    let again = run_job(&w, JobName::TokenRotation, &opts, Utc::now()).await.unwrap();
    assert_eq!(again.status(), astra_worker::failure::Status::Ok, "first {first:?}");
    let episodes: Vec<(String, String)> =
        with_pool!(&admin, |p| sqlx::query_as("SELECT user_id, reason FROM reauth_episode")
            .fetch_all(p)
            .await
            .unwrap());
    assert!(episodes.iter().all(|e| e.1 == "lost_rotation"), "no grant declared dead without proof: {episodes:?}");
    for u in &users {
        let lost = episodes.iter().any(|e| &e.0 == u);
        assert!(lost || rig.stored_is_live(&w.store, u).await, "{u}: healthy, or flagged lost_rotation");
        assert!(rig.refreshes(u) <= 2, "{u}: refreshed {} times", rig.refreshes(u));
    }
    admin.close().await;
}

fn pg_pool(store: &Store) -> &sqlx::PgPool {
    match store {
        Store::Postgres(p) => p,
        Store::Sqlite(_) => unreachable!("a PostgreSQL store"),
    }
}

/// Waits (20 s at most) until `store`'s pool holds `want` open connections, all idle.
async fn pool_reaches(store: &Store, want: u32) -> bool {
    for _ in 0..2_000 {
        if pg_pool(store).num_idle() == want as usize {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_process_opens_its_configured_postgres_connections_at_the_start() {
    let db = TestDb::new(Backend::Postgres).await;
    let brief = Store::open(&db.url).await.unwrap();
    // `store.postgres_connections`, other than the default.
    let kept = 5;
    assert_ne!(kept, PG_CONNECTIONS);
    let long = Store::open_for(&db.url, Lives::Long { connections: kept }).await.unwrap();
    assert_eq!(pg_pool(&long).size(), kept, "opened before the start ends");
    assert_eq!(pg_pool(&long).options().get_max_connections(), kept, "and never more");
    assert!(pool_reaches(&long, kept).await, "serve and the daemon open every connection: {}", pg_pool(&long).size());
    assert_eq!(pg_pool(&brief).size(), 1, "a brief command opens what it needs");
    let backends: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'",
    )
    .fetch_one(pg_pool(&brief))
    .await
    .unwrap();
    assert_eq!(backends, i64::from(kept) + 1, "the server sees them all");
    long.close().await;
    brief.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_process_starts_on_a_server_that_gives_it_fewer_connections() {
    let db = TestDb::new(Backend::Postgres).await;
    let admin = db.store().await;
    // A role the server lets have 3 connections (a superuser has no limit).
    let role = format!("aw_few_{}", uuid::Uuid::new_v4().simple());
    let p = pg_pool(&admin);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 3"))).execute(p).await.unwrap();
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    let long = Store::connect_for(url.as_str(), Lives::Long { connections: PG_CONNECTIONS })
        .await
        .expect("the start needs one connection, not 16");
    assert!(pool_reaches(&long, 3).await, "it opens what the server gives: {}", pg_pool(&long).size());
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(pg_pool(&long)).await.unwrap();
    assert_eq!(one, 1, "and works on them");
    long.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}"))).execute(p).await.unwrap();
    admin.close().await;
}

/// A PostgreSQL statement does not wait out a lock another transaction keeps (an operator's transaction left
/// open on a grant's row): it gives up after the store's lock timeout as temporary (exit 75), so the waits a
/// refresh's lease counts on (`Store::longest_wait`) are bounded; the row is written once the lock is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_statement_gives_up_on_a_row_lock_held_past_the_lock_timeout() {
    let rig = TestApp::new(Backend::Postgres, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let u = rig.seed(&w.store, 1, |_| TimeDelta::days(8)).await.remove(0);
    let admin = Store::open(&rig.db.url).await.unwrap();
    let mut holder = pg_pool(&admin).begin().await.unwrap();
    sqlx::query("SELECT 1 FROM grant_token WHERE user_id = $1 FOR UPDATE")
        .bind(&u)
        .execute(&mut *holder)
        .await
        .unwrap();
    let now = Utc::now();
    let take = grant_store::try_lease(&w.store, &u, "me", now + TimeDelta::minutes(1), now);
    let err = tokio::time::timeout(4 * LOCK_TIMEOUT, take)
        .await
        .expect("the statement gave up while the lock was still held")
        .expect_err("the row stayed locked");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("55P03"), "lock_not_available: {err}");
    assert_eq!(classify(&err.into()), Status::Temporary, "a lock held too long is temporary (exit 75)");
    holder.rollback().await.unwrap();
    let now = Utc::now();
    let taken = grant_store::try_lease(&w.store, &u, "me", now + TimeDelta::minutes(1), now).await.unwrap();
    assert!(taken, "the lease is taken once the lock is let go");
    admin.close().await;
}

/// Migrations wait for another process's without the statements' lock timeout: a store opened while another
/// transaction holds the migrations' table (as a process applying a long migration does) is still waiting
/// past the lock timeout, and opens once the table is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_postgres_store_waits_for_another_migration_past_the_lock_timeout() {
    let db = TestDb::new(Backend::Postgres).await;
    let admin = Store::open(&db.url).await.unwrap();
    let mut holder = pg_pool(&admin).begin().await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE").execute(&mut *holder).await.unwrap();
    let url = db.url.clone();
    let opening = tokio::spawn(async move { Store::open(&url).await });
    let waiting = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pg_pool(&admin))
        .await
        .unwrap();
        n
    };
    let mut polls = 0;
    while waiting().await == 0 {
        assert!(!opening.is_finished(), "the opening waits for the migrations' table");
        polls += 1;
        assert!(polls < 3_000, "the opening never waited for the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From the moment it waits, the lock is held longer than a statement's lock timeout.
    let hold_until = tokio::time::Instant::now() + LOCK_TIMEOUT + Duration::from_secs(2);
    while tokio::time::Instant::now() < hold_until {
        if opening.is_finished() {
            panic!("the opening gave up while the lock was held: {:?}", opening.await.unwrap().err());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.rollback().await.unwrap();
    let opened = opening.await.unwrap().expect("the store opens once the table is let go");
    assert!(opened.is_migrated().await.unwrap());
    opened.close().await;
    admin.close().await;
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "the full-disk test mounts a small tmpfs and needs root (CI runs as root): mount -t tmpfs failed"
        );
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    /// Lazily, so a store still open (a failed assertion) cannot leave the mount behind.
    fn drop(&mut self) {
        let done = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
        if !done.is_ok_and(|s| s.success()) {
            eprintln!("db_faults: could not unmount the tmpfs at {}", self.dir.path().display());
        }
    }
}

fn grant_lines(range: std::ops::Range<usize>) -> String {
    let issued = (Utc::now() - TimeDelta::days(2)).to_rfc3339();
    range
        .map(|i| {
            serde_json::json!({
                "user_id": format!("full-{i:05}"), "access_token": format!("at_{i:040}"),
                "refresh_token": format!("rt_{i:040}"), "refresh_token_issued_at": issued,
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sqlite_on_a_full_disk_reports_the_disk_exits_75_and_keeps_what_was_stored() {
    let fs = SmallFs::mount("8m");
    let url = format!("sqlite://{}", fs.dir.path().join("aw.db").display());
    let files = tempfile::tempdir().unwrap();
    let import = |lines: &str| {
        let file = files.path().join("grants.jsonl");
        std::fs::write(&file, lines).unwrap();
        bin(&url).env("ASTRA_WORKER_TOKEN_KEY", b64(&KEY_A)).args(["grants", "import"]).arg(&file).output().unwrap()
    };
    let o = import(&grant_lines(0..50));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // Everything left on the filesystem is taken.
    let filler_path = fs.dir.path().join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    while std::io::Write::write_all(&mut filler, &chunk[..512]).is_ok() {}
    drop(filler);

    let more = grant_lines(50..1_000);
    let o = import(&more);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(75), "a full disk is temporary: {err}");
    // SQLite's own words when a write finds no room, or ours when an open fails with a plain I/O error.
    let named = err.contains("database or disk is full") || err.contains("the filesystem holding it is full");
    assert!(named, "the error names the full disk: {err}");
    assert!(!err.contains("rejected"), "a full disk is not a rejected line: {err}");

    // Room again: the database is intact, the first 50 are there, and the same file finishes.
    std::fs::remove_file(&filler_path).unwrap();
    let check =
        bin(&url).env("ASTRA_WORKER_TOKEN_KEY", b64(&KEY_A)).args(["grants", "list", "--format", "json"]).output();
    let listed: serde_json::Value = serde_json::from_slice(&check.unwrap().stdout).unwrap();
    let stored = listed.as_array().unwrap().len();
    assert!(
        (50..1_000).contains(&stored),
        "the first 50 kept (and whatever committed before the disk filled): {stored}"
    );
    let o = import(&more);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let (ok, n): (String, i64) = with_pool!(&store, |p| sqlx::query_as(
            "SELECT (SELECT integrity_check FROM pragma_integrity_check), (SELECT COUNT(*) FROM grant_token)"
        )
        .fetch_one(p)
        .await
        .unwrap());
        assert_eq!((ok.as_str(), n), ("ok", 1_000));
        store.close().await;
    });
}
