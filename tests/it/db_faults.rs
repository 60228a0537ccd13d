//! The store failing under a run: PostgreSQL's connections terminated in the middle of a rotation
//! (`pg_terminate_backend`, as a failover or an operator would). PostgreSQL only: SQLite has no server
//! connection to lose. The run ends (succeeded, partial or failed, never a grant declared dead without proof),
//! the next run completes, and every grant is healthy or has a `lost_rotation` episode; none is refreshed twice.

use std::time::Duration;

use astra_worker::{
    config::JobName,
    runner::{RunOptions, run_job},
    sandbox::{Faults, SandboxSettings},
    store::Store,
};
use chrono::{TimeDelta, Utc};

use crate::{
    helpers::{Backend, TestApp},
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
