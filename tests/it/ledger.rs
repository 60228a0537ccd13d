//! The slot ledger through the runner: once per slot, `--force`, takeover of a stale claim, backfill.

use astra_worker::{
    config::JobName,
    exit::classify,
    failure::Status,
    runner::{RunOptions, SlotResult, run_job},
    store::ledger::{self, Claim, Claimant, Outcome},
};
use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    both_backends,
    helpers::{Backend, TestDb, worker},
    with_pool,
};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const NOW: &str = "2026-11-21T10:15:30Z";
const SLOT: &str = "2026-11-21T10:15:00Z"; // test-hold runs every minute, UTC

async fn a_slot_run_twice_does_its_work_once(b: Backend) {
    let db = TestDb::new(b).await;
    let w = worker(&db).await;
    let first = run_job(&w, JobName::TestHold, &RunOptions::default(), at(NOW)).await.unwrap();
    let second = run_job(&w, JobName::TestHold, &RunOptions::default(), at(NOW)).await.unwrap();

    assert_eq!(first.reports.len(), 1);
    assert_eq!(first.reports[0].slot, at(SLOT));
    match &first.reports[0].result {
        SlotResult::Ran { outcome, counts, .. } => {
            assert_eq!(*outcome, Outcome::Succeeded);
            assert_eq!(counts.processed, 3);
        }
        other => panic!("first run should run: {other:?}"),
    }
    assert!(matches!(second.reports[0].result, SlotResult::AlreadyRan { .. }), "{:?}", second.reports);
    assert_eq!(second.status(), Status::Ok);
    let runs = ledger::list_runs(&w.store, Some("test-hold"), 10).await.unwrap();
    assert_eq!(runs.len(), 1, "the body ran once");
}
both_backends!(a_slot_run_twice_does_its_work_once, super::a_slot_run_twice_does_its_work_once);

async fn force_runs_a_succeeded_slot_again(b: Backend) {
    let db = TestDb::new(b).await;
    let w = worker(&db).await;
    run_job(&w, JobName::TestHold, &RunOptions::default(), at(NOW)).await.unwrap();
    let forced = RunOptions { force: true, ..Default::default() };
    let again = run_job(&w, JobName::TestHold, &forced, at(NOW)).await.unwrap();

    assert!(matches!(again.reports[0].result, SlotResult::Ran { outcome: Outcome::Succeeded, .. }));
    let runs = ledger::list_runs(&w.store, Some("test-hold"), 10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().any(|r| r.forced));
}
both_backends!(force_runs_a_succeeded_slot_again, super::force_runs_a_succeeded_slot_again);

async fn a_live_claim_is_left_alone_and_a_stale_one_is_taken_over(b: Backend) {
    let db = TestDb::new(b).await;
    let w = worker(&db).await;
    // A process that claimed the slot and is still alive (its lease runs for an hour).
    let live = Claimant { run_id: "run-alive", owner: "other:1", lease: TimeDelta::hours(1), force: false };
    assert!(matches!(ledger::claim(&w.store, "test-hold", at(SLOT), &live).await.unwrap(), Claim::Acquired { .. }));
    let held = run_job(&w, JobName::TestHold, &RunOptions::default(), at(NOW)).await.unwrap();
    assert!(matches!(&held.reports[0].result, SlotResult::HeldElsewhere { owner } if owner == "other:1"));

    // A process that crashed: its lease ran out a second ago.
    let slot2 = at(SLOT) + TimeDelta::minutes(1);
    let dead = Claimant { run_id: "run-dead", owner: "other:2", lease: TimeDelta::seconds(-1), force: false };
    assert!(matches!(ledger::claim(&w.store, "test-hold", slot2, &dead).await.unwrap(), Claim::Acquired { .. }));
    let now2 = at(NOW) + TimeDelta::minutes(1);
    let taken = run_job(&w, JobName::TestHold, &RunOptions::default(), now2).await.unwrap();
    assert!(matches!(taken.reports[0].result, SlotResult::Ran { outcome: Outcome::Succeeded, .. }));
    // The dead process's fencing token no longer renews the claim.
    assert!(!ledger::renew(&w.store, "test-hold", slot2, "run-dead", TimeDelta::minutes(1)).await.unwrap());
}
both_backends!(
    a_live_claim_is_left_alone_and_a_stale_one_is_taken_over,
    super::a_live_claim_is_left_alone_and_a_stale_one_is_taken_over
);

async fn slot_backfills_an_old_slot_and_refuses_a_time_that_is_not_a_slot(b: Backend) {
    let db = TestDb::new(b).await;
    let w = worker(&db).await;
    let old = at("2026-11-18T07:42:00Z");
    let opts = RunOptions { slot: Some(old), ..Default::default() };
    let r = run_job(&w, JobName::TestHold, &opts, at(NOW)).await.unwrap();
    assert_eq!(r.reports[0].slot, old);
    assert!(matches!(r.reports[0].result, SlotResult::Ran { outcome: Outcome::Succeeded, .. }));

    let opts = RunOptions { slot: Some(old + TimeDelta::seconds(5)), ..Default::default() };
    let e = run_job(&w, JobName::TestHold, &opts, at(NOW)).await.unwrap_err();
    assert_eq!(classify(&e), Status::Config);
    assert!(format!("{e:#}").contains("not a slot of test-hold"), "{e:#}");

    // A slot whose time has not come is refused and leaves no success behind.
    let future = at(NOW) + TimeDelta::days(1);
    let future = RunOptions { slot: Some(future - TimeDelta::seconds(future.timestamp() % 60)), ..Default::default() };
    let e = run_job(&w, JobName::TestHold, &future, at(NOW)).await.unwrap_err();
    assert_eq!(classify(&e), Status::Config);
    assert!(format!("{e:#}").contains("in the future"), "{e:#}");
    let runs = with_pool!(&w.store, |p| sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM job_run")
        .fetch_one(p)
        .await
        .unwrap());
    assert_eq!(runs, 1, "only the backfill ran");
}
both_backends!(
    slot_backfills_an_old_slot_and_refuses_a_time_that_is_not_a_slot,
    super::slot_backfills_an_old_slot_and_refuses_a_time_that_is_not_a_slot
);

async fn two_workers_racing_for_one_slot_do_it_once(b: Backend) {
    let db = TestDb::new(b).await;
    let (w1, w2) = (worker(&db).await, worker(&db).await);
    let o = RunOptions::default();
    let (r1, r2) =
        tokio::join!(run_job(&w1, JobName::TestHold, &o, at(NOW)), run_job(&w2, JobName::TestHold, &o, at(NOW)));
    let results = [r1.unwrap(), r2.unwrap()];
    let ran = results.iter().filter(|r| matches!(r.reports[0].result, SlotResult::Ran { .. })).count();
    assert_eq!(ran, 1, "{results:?}");
    assert_eq!(ledger::list_runs(&w1.store, None, 10).await.unwrap().len(), 1);
}
both_backends!(two_workers_racing_for_one_slot_do_it_once, super::two_workers_racing_for_one_slot_do_it_once);
