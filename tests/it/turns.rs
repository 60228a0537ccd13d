//! Writers' turns (`Store::write_turn`): on SQLite the write transactions of one process queue for the
//! database file, in order, across every store opened on it, and a turn not had within the busy timeout is a
//! temporary store error; PostgreSQL writers take no turn.

use std::time::{Duration, Instant};

use astra_worker::{
    config::GuardSettings,
    domain::Cents,
    exit::classify,
    failure::Status,
    reconcile::{
        guard::{self, GuardRequest, HoldRequest},
        holds,
        registry::{self, DestinationKind, DestinationLine, ImportLine},
    },
};
use chrono::{TimeDelta, Utc};
use futures::FutureExt;

use crate::helpers::{Backend, TestDb, import};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_of_one_process_take_turns_on_a_sqlite_file() {
    let (db, other_db) = (TestDb::new(Backend::Sqlite).await, TestDb::new(Backend::Sqlite).await);
    let (one, same_file, other_file) = (db.store().await, db.store().await, other_db.store().await);
    let held = one.write_turn().await.unwrap();
    let mut waiting = Box::pin(same_file.write_turn());
    assert!((&mut waiting).now_or_never().is_none(), "a second store on the same file waits for the turn");
    assert!(other_file.write_turn().now_or_never().is_some(), "another file has turns of its own");
    drop(held);
    let _next = waiting.await.unwrap();
    for s in [one, same_file, other_file] {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_not_had_within_the_busy_timeout_is_a_temporary_store_error() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let _held = store.write_turn().await.unwrap();
    let started = Instant::now();
    let err = store.write_turn().await.err().expect("no second turn while the first is held");
    assert!(started.elapsed() >= Duration::from_secs(10), "it waited the busy timeout");
    let err = anyhow::Error::from(err);
    assert_eq!(classify(&err), Status::Temporary, "{err:#}");
    assert!(format!("{err:#}").contains("no turn to write to the SQLite database"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writers_take_no_turn() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let _held = store.write_turn().await.unwrap();
    assert!(store.write_turn().now_or_never().is_some(), "PostgreSQL locks rows, not the database");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_on_sqlite_is_placed_in_its_turn() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    import(&store, "u1", "at-u1", "rt-u1", Utc::now(), Some(Utc::now() + TimeDelta::hours(2))).await;
    let line = ImportLine::Destination(DestinationLine {
        destination_id: "dst".into(),
        user_id: "u1".into(),
        kind: DestinationKind::Account,
        bank_time_zone: "America/New_York".into(),
        daily_limit_cents: 100_000,
        frozen: None,
        push_enabled: None,
        pull_enabled: None,
    });
    registry::import(&store, &line, Utc::now()).await.unwrap();
    let settings = GuardSettings::default();
    let ask = GuardRequest { user_id: "u1", amount: Cents(10_000), destination_id: Some("dst") };
    let hold = HoldRequest { key: "turn-1", hold_for: TimeDelta::hours(1) };
    let held = store.write_turn().await.unwrap();
    // Another writer of this process has the turn: the placement waits for it (a placement on a free
    // database takes about a millisecond).
    let mut asked = Box::pin(guard::check_and_hold(&store, &settings, &ask, &hold, Utc::now()));
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut asked).await.is_err(), "the hold waits for the turn");
    assert!(holds::list(&store, true, Utc::now(), 10).await.unwrap().is_empty(), "and nothing is held yet");
    drop(held);
    assert!(asked.await.unwrap().allowed);
    assert_eq!(holds::list(&store, true, Utc::now(), 10).await.unwrap().len(), 1);
    store.close().await;
}
