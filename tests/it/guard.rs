//! The guard right the same day, on both stores: holds reserve what was allowed (across threads and
//! processes), end when their transfer is counted, are released or expire; Astra's published shapes are
//! counted whatever the paging and clearing-date readings; what cannot be read fails closed.

use std::process::Output;

use astra_worker::{
    app::Worker,
    astra::{TransferStatus, model::Clearing},
    config::{GuardSettings, JobName, OnUncertain},
    domain::{BankDay, Cents},
    failure::Status,
    reconcile::{
        counters, guard,
        guard::{GuardRequest, HoldRequest},
        holds::{self, Attempt, Figures, Placement},
        mirror,
        registry::{self, DestinationKind, DestinationLine, ImportLine},
    },
    runner::{RunOptions, SlotResult, run_job},
    sandbox::{ClearingFormat, CountSemantics, Faults, SandboxSettings},
    store::{Lives, Session, Store},
};
use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    astra::add_transfer,
    both_backends,
    helpers::{Backend, KEY_A, TestApp, TestDb, b64, bin, import, text},
    with_pool,
};

const NY: &str = "America/New_York";

async fn register(store: &Store, dest: &str, user: &str, limit: i64) {
    let line = ImportLine::Destination(DestinationLine {
        destination_id: dest.into(),
        user_id: user.into(),
        kind: DestinationKind::Account,
        bank_time_zone: NY.into(),
        daily_limit_cents: limit,
        frozen: None,
        push_enabled: None,
        pull_enabled: None,
    });
    registry::import(store, &line, Utc::now()).await.unwrap();
}

/// A store with one user ("u1", an active grant) and one destination ("dst") with a limit of `limit` cents.
async fn one_user(b: Backend, limit: i64) -> (TestDb, Store) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    import(&store, "u1", "at-u1", "rt-u1", Utc::now(), Some(Utc::now() + TimeDelta::hours(2))).await;
    register(&store, "dst", "u1", limit).await;
    (db, store)
}

/// A processed transfer of `cents` to "dst" at the sandbox.
fn processed(rig: &TestApp, id: &str, user: &str, cents: i64, at: DateTime<Utc>) {
    add_transfer(&mut rig.sandbox.state(), id, user, cents, at, TransferStatus::Processed, None);
}

fn ask(cents: i64) -> GuardRequest<'static> {
    GuardRequest { user_id: "u1", amount: Cents(cents), destination_id: Some("dst") }
}

fn hold(key: &str) -> HoldRequest<'_> {
    HoldRequest { key, hold_for: TimeDelta::hours(1) }
}

fn today() -> String {
    BankDay::of(NY.parse().unwrap(), Utc::now()).key()
}

/// Noon of today's bank day in New York: a `now` from which an hour either way stays on the same bank day.
fn midday() -> DateTime<Utc> {
    BankDay::of(NY.parse().unwrap(), Utc::now()).start() + TimeDelta::hours(12)
}

async fn two_guards_the_same_day_without_a_sync_never_pass_the_limit_together(b: Backend) {
    let (_db, store) = one_user(b, 250_000).await;
    let s = GuardSettings::default();
    let now = midday();
    let first = guard::check_and_hold(&store, &s, &ask(200_000), &hold("r-1000"), now).await.unwrap();
    assert!(first.allowed, "{first:?}");
    assert_eq!(first.hold.as_ref().map(|h| h.amount_cents), Some(200_000));
    assert_eq!(first.headroom_cents, Some(50_000));
    // Four hours later, no transfer has been read yet: the hold still counts.
    let later = now + TimeDelta::minutes(30);
    let second = guard::check_and_hold(&store, &s, &ask(200_000), &hold("r-1400"), later).await.unwrap();
    assert!(!second.allowed, "{second:?}");
    assert_eq!(second.reason.map(|r| r.as_str()), Some("daily_limit"));
    assert_eq!((second.held_cents, second.headroom_cents), (Some(200_000), Some(50_000)));
    // Without a hold key the guard still sees the hold.
    let plain = guard::check(&store, &s, &ask(50_001), later).await.unwrap();
    assert_eq!(plain.reason.map(|r| r.as_str()), Some("daily_limit"));
    assert!(guard::check(&store, &s, &ask(50_000), later).await.unwrap().allowed);
    assert_eq!(holds::list(&store, true, later, 10).await.unwrap().len(), 1, "a denied request holds nothing");
}
both_backends!(
    two_guards_the_same_day_without_a_sync_never_pass_the_limit_together,
    super::two_guards_the_same_day_without_a_sync_never_pass_the_limit_together
);

async fn twenty_concurrent_holds_of_100_dollars_against_1000_allow_exactly_ten(b: Backend) {
    let (db, store) = one_user(b, 100_000).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            // Each caller on its own pool, as separate backends would be.
            let store = Store::open(&url).await.unwrap();
            let key = format!("t-{i:02}");
            let a = guard::check_and_hold(&store, &GuardSettings::default(), &ask(10_000), &hold(&key), Utc::now())
                .await
                .unwrap();
            store.close().await;
            a.allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 10);
    let held: i64 = holds::list(&store, true, Utc::now(), 100).await.unwrap().iter().map(|h| h.amount_cents).sum();
    assert_eq!(held, 100_000);

    // Separate processes, on a second destination.
    register(&store, "dst2", "u1", 100_000).await;
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut c = bin(&db.url);
            c.env("ASTRA_WORKER_TOKEN_KEY", b64(&KEY_A)).args([
                "guard",
                "--user",
                "u1",
                "--amount",
                "100.00",
                "--destination",
                "dst2",
                "--hold",
                &format!("p-{i:02}"),
            ]);
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outputs {
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    }
    assert_eq!(outputs.iter().filter(|o| o.status.code() == Some(0)).count(), 10);
}
both_backends!(
    twenty_concurrent_holds_of_100_dollars_against_1000_allow_exactly_ten,
    super::twenty_concurrent_holds_of_100_dollars_against_1000_allow_exactly_ten
);

/// Holds contending for one destination in one process are placed together (one placement for all that
/// wait), each decided in turn on the figures left by the ones before it: 40 concurrent calls of $100 against
/// $1,000, ten of them a second call under a key already asked, hold exactly ten, each allowed answer saw
/// the held sum of the ones before it, and a key asked twice gets one answer and one hold. More callers than
/// the store has connections: one waiting in the lane holds none (on PostgreSQL each caller reads on a
/// connection of its own; had the waiters kept theirs, the lane's placer would wait for the pool).
async fn holds_contending_in_one_process_are_placed_together_and_never_pass_the_limit(b: Backend) {
    let (_db, store) = one_user(b, 100_000).await;
    forty_contending_hold_exactly_ten(&store).await;
}
both_backends!(
    holds_contending_in_one_process_are_placed_together_and_never_pass_the_limit,
    super::holds_contending_in_one_process_are_placed_together_and_never_pass_the_limit
);

/// The same 40 callers on a long-lived process keeping the fewest PostgreSQL connections
/// `store.postgres_connections` allows, two: nothing holds a connection while it waits for another, so every
/// call is answered (a caller waiting for the pool past its timeout would fail), and the limit holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_contending_on_two_postgres_connections_are_all_answered_within_the_limit() {
    let (db, _) = one_user(Backend::Postgres, 100_000).await;
    let two = Store::open_for(&db.url, Lives::Long { connections: 2 }).await.unwrap();
    forty_contending_hold_exactly_ten(&two).await;
    two.close().await;
}

/// 40 concurrent calls of $100 against $1,000 on "dst" (ten of them a second call under a key already asked):
/// the checks of [`holds_contending_in_one_process_are_placed_together_and_never_pass_the_limit`].
async fn forty_contending_hold_exactly_ten(store: &Store) {
    let now = Utc::now();
    let keys: Vec<String> = (0..30).chain(0..10).map(|i| format!("p-{i:02}")).collect();
    let tasks: Vec<_> = keys
        .iter()
        .map(|key| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let a = guard::check_and_hold(&store, &GuardSettings::default(), &ask(10_000), &hold(&key), now)
                    .await
                    .unwrap();
                (key, a)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let stored: std::collections::BTreeSet<String> =
        holds::list(store, true, now, 100).await.unwrap().into_iter().map(|h| h.hold_key).collect();
    let allowed: std::collections::BTreeSet<String> =
        answers.iter().filter(|(_, a)| a.allowed).map(|(k, _)| k.clone()).collect();
    assert_eq!(stored.len(), 10, "exactly ten holds of $100 fit $1,000");
    assert_eq!(allowed, stored, "every allowed answer stands for a stored hold, and every stored hold was allowed");
    let mut held_before: Vec<i64> = Vec::new();
    for key in &stored {
        let first = answers.iter().find(|(k, _)| k == key).unwrap();
        held_before.push(first.1.held_cents.unwrap());
        for (_, again) in answers.iter().filter(|(k, _)| k == key) {
            assert_eq!(again.hold.as_ref().map(|h| h.key.as_str()), Some(key.as_str()), "one answer per key");
            assert_eq!(again.held_cents, first.1.held_cents);
        }
    }
    held_before.sort();
    assert_eq!(held_before, (0..10).map(|i| i * 10_000).collect::<Vec<_>>(), "each decided after the ones before");
    for (key, a) in answers.iter().filter(|(_, a)| !a.allowed) {
        assert_eq!(a.reason.map(|r| r.as_str()), Some("daily_limit"), "{key}");
        assert!(!stored.contains(key));
    }
}

/// Callers that go away while their holds wait in the lane (an HTTP client gone, a task aborted) leave no lane
/// behind to hang the next caller, nothing over the limit, and no hold without its answer.
async fn callers_gone_from_a_lane_leave_it_whole(b: Backend) {
    let (_db, store) = one_user(b, 100_000).await;
    let now = Utc::now();
    for round in 0..5 {
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = format!("gone-{round}-{i:02}");
                    guard::check_and_hold(&store, &GuardSettings::default(), &ask(1_000), &hold(&key), now).await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            if i % 2 == 1 {
                t.abort();
            }
            let _ = t.await;
        }
    }
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        guard::check_and_hold(&store, &GuardSettings::default(), &ask(1_000), &hold("after"), now),
    )
    .await
    .expect("a hold after callers went away is answered, not left waiting in a dead lane")
    .unwrap();
    assert!(next.allowed);
    let open = holds::list(&store, true, now, 1_000).await.unwrap();
    assert!(open.iter().map(|h| h.amount_cents).sum::<i64>() <= 100_000);
    for h in &open {
        let (_, answer) = holds::get(&mut Session::pooled(&store), &h.hold_key).await.unwrap().unwrap();
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["allowed"], true, "{}: stored with the answer that allowed it", h.hold_key);
    }
}
both_backends!(callers_gone_from_a_lane_leave_it_whole, super::callers_gone_from_a_lane_leave_it_whole);

/// A placer cancelled while its placement waits for the day's lock (its caller went away) closes its lane:
/// the holds waiting behind it are each placed alone once the lock is free, and answered.
/// Another connection takes the day's lock (the counter row, as every writer of the day takes it) on "dst" and
/// keeps it until told: `Some(cents)` stores a hold of that amount (key "other") and commits, `None` rolls back.
async fn lock_day(db: &TestDb, day: &str) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<Option<i64>>) {
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<Option<i64>>();
    let (url, d) = (db.url.clone(), day.to_string());
    let blocker = tokio::spawn(async move {
        let other = Store::open(&url).await.unwrap();
        with_pool!(&other, |p| async {
            let mut tx = p.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers) VALUES ('dst', $1, 0, 0)
                 ON CONFLICT (destination_id, bank_day) DO UPDATE SET total_cents = inbound_day.total_cents",
            )
            .bind(&d)
            .execute(&mut *tx)
            .await
            .unwrap();
            locked.send(()).unwrap();
            let Some(cents) = released.await.unwrap() else { return tx.rollback().await.unwrap() };
            sqlx::query(
                "INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
                     expires_at)
                 VALUES ('other', 'u1', 'dst', $1, $2, '{}', $3, $4)",
            )
            .bind(&d)
            .bind(cents)
            .bind(Utc::now())
            .bind(Utc::now() + TimeDelta::hours(1))
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        .await);
    });
    is_locked.await.unwrap();
    (blocker, release)
}

/// Waits (bounded) until the lane of "dst"'s `day` has `want` holds waiting.
async fn lane_reaches(store: &Store, day: &str, want: Option<usize>) {
    for _ in 0..1_000 {
        if guard::lane_waiting(store, "dst", day) == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the lane never reached {want:?}");
}

fn call(
    store: &Store,
    settings: GuardSettings,
    cents: i64,
    key: &'static str,
    now: DateTime<Utc>,
) -> tokio::task::JoinHandle<anyhow::Result<guard::GuardAnswer>> {
    let store = store.clone();
    tokio::spawn(async move { guard::check_and_hold(&store, &settings, &ask(cents), &hold(key), now).await })
}

async fn a_lane_whose_placer_is_cancelled_hands_its_waiters_on(b: Backend) {
    let (db, store) = one_user(b, 100_000).await;
    let now = Utc::now();
    let day = BankDay::of(NY.parse().unwrap(), now).key();
    let (blocker, release) = lock_day(&db, &day).await;
    let placer = call(&store, GuardSettings::default(), 10_000, "placer", now);
    lane_reaches(&store, &day, Some(0)).await; // its placement is under way, waiting for the lock
    let waiters: Vec<_> =
        ["w1", "w2", "w3", "w4"].into_iter().map(|k| call(&store, GuardSettings::default(), 10_000, k, now)).collect();
    lane_reaches(&store, &day, Some(4)).await;
    placer.abort();
    assert!(placer.await.unwrap_err().is_cancelled());
    assert_eq!(guard::lane_waiting(&store, "dst", &day), None, "the cancelled placer's lane is closed");
    release.send(None).unwrap();
    blocker.await.unwrap();
    for w in waiters {
        let a = tokio::time::timeout(std::time::Duration::from_secs(30), w)
            .await
            .expect("a hold that waited behind a cancelled placer is answered")
            .unwrap()
            .unwrap();
        assert!(a.allowed && a.hold.is_some());
    }
    let open = holds::list(&store, true, now, 100).await.unwrap();
    let mut keys: Vec<&str> = open.iter().map(|h| h.hold_key.as_str()).filter(|k| k.starts_with('w')).collect();
    keys.sort();
    assert_eq!(keys, ["w1", "w2", "w3", "w4"], "each waiter holds once");
}
both_backends!(
    a_lane_whose_placer_is_cancelled_hands_its_waiters_on,
    super::a_lane_whose_placer_is_cancelled_hands_its_waiters_on
);

/// A caller whose destination-day is busy (a lane open on it) reads the day without its held sum, and is
/// decided in the lane on the figures found there: here another process holds 85,000 of the 100,000 while
/// the lane waits for the day's lock, so the placer (10,000) still fits and the waiter (10,000) does not, and
/// its denial carries the day's real figures. A waiter denied for another reason (its transfers never read,
/// past `guard.max_staleness`) is answered with the day's figures too.
async fn a_caller_on_a_busy_day_is_decided_on_the_figures_under_the_lock(b: Backend) {
    let (db, store) = one_user(b, 100_000).await;
    let now = Utc::now();
    let day = BankDay::of(NY.parse().unwrap(), now).key();
    let (blocker, release) = lock_day(&db, &day).await;
    let placer = call(&store, GuardSettings::default(), 10_000, "placer", now);
    lane_reaches(&store, &day, Some(0)).await;
    let waiter = call(&store, GuardSettings::default(), 10_000, "waiter", now);
    lane_reaches(&store, &day, Some(1)).await;
    let strict = GuardSettings { max_staleness: Some(TimeDelta::seconds(1)), ..GuardSettings::default() };
    let stale = call(&store, strict, 10_000, "stale", now).await.unwrap().unwrap();
    assert_eq!(stale.reason, Some(guard::DenyReason::CounterStale));
    assert_eq!((stale.day_total_cents, stale.held_cents), (Some(0), Some(0)), "a denial shows the day's figures");
    release.send(Some(85_000)).unwrap();
    blocker.await.unwrap();
    let placer = placer.await.unwrap().unwrap();
    assert!(placer.allowed, "85,000 + 10,000 fit in 100,000");
    assert_eq!(placer.held_cents, Some(85_000));
    let waiter = waiter.await.unwrap().unwrap();
    assert!(!waiter.allowed, "85,000 + 10,000 + 10,000 do not");
    assert_eq!(waiter.reason, Some(guard::DenyReason::DailyLimit));
    assert_eq!((waiter.held_cents, waiter.headroom_cents), (Some(95_000), Some(5_000)));
    assert!(holds::get(&mut Session::pooled(&store), "waiter").await.unwrap().is_none(), "no hold left behind");
    assert_eq!(counted_and_held(&store, &day, now).await, (0, 95_000));
}

both_backends!(
    a_caller_on_a_busy_day_is_decided_on_the_figures_under_the_lock,
    super::a_caller_on_a_busy_day_is_decided_on_the_figures_under_the_lock
);

/// The day's (counted total, open held sum) at `now`, read without the lock.
async fn counted_and_held(store: &Store, day: &str, now: DateTime<Utc>) -> (i64, i64) {
    let f = holds::figures(&mut Session::pooled(store), ("dst", day), now).await.unwrap();
    (f.total, f.held)
}

/// Figures a lane carries from one placement to the next may hold more than the day does (a hold expired or
/// released since moves no count), so a denial on them is decided again on the day's sum under the lock. Here
/// the placer holds 60,000 of the 100,000 for a minute, and by the time the waiter asks (two minutes later)
/// that hold has expired: the waiter's 50,000 fits, though the figures the lane carried say it does not.
async fn a_denial_on_carried_figures_is_decided_again_on_the_days_sum(b: Backend) {
    let (db, store) = one_user(b, 100_000).await;
    let now = midday();
    let day = BankDay::of(NY.parse().unwrap(), now).key();
    let (blocker, release) = lock_day(&db, &day).await;
    let placer = {
        let store = store.clone();
        tokio::spawn(async move {
            let short = HoldRequest { key: "placer", hold_for: TimeDelta::minutes(1) };
            guard::check_and_hold(&store, &GuardSettings::default(), &ask(60_000), &short, now).await
        })
    };
    lane_reaches(&store, &day, Some(0)).await;
    let later = now + TimeDelta::minutes(2);
    let waiter = call(&store, GuardSettings::default(), 50_000, "waiter", later);
    lane_reaches(&store, &day, Some(1)).await;
    release.send(None).unwrap();
    blocker.await.unwrap();
    let placer = placer.await.unwrap().unwrap();
    assert!(placer.allowed && placer.hold.is_some(), "60,000 fit an empty day");
    let waiter = waiter.await.unwrap().unwrap();
    assert!(waiter.allowed, "the placer's hold expired before the waiter asked: {waiter:?}");
    assert_eq!(waiter.held_cents, Some(0), "decided on the day's sum, not on the carried 60,000");
    assert_eq!(counted_and_held(&store, &day, later).await, (0, 50_000));
}
both_backends!(
    a_denial_on_carried_figures_is_decided_again_on_the_days_sum,
    super::a_denial_on_carried_figures_is_decided_again_on_the_days_sum
);

/// Every hold stored counts on its day's row, whoever stores it: the locked path, the one-round-trip path, a
/// plain insert, and (PostgreSQL) the placement function of the previous version, which a worker not yet
/// upgraded still calls. Figures that carry the count from before such a hold are found changed.
async fn every_hold_stored_moves_its_days_count(b: Backend) {
    let (_db, store) = one_user(b, 250_000).await;
    let now = midday();
    let day = BankDay::of(NY.parse().unwrap(), now).key();
    let placed = async || holds::figures(&mut Session::pooled(&store), ("dst", &day), now).await.unwrap().placed;
    assert_eq!(placed().await, 0);
    with_pool!(&store, |p| sqlx::query(
        "INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
             expires_at)
         VALUES ('plain', 'u1', 'dst', $1, 100, '{}', $2, $3)"
    )
    .bind(&day)
    .bind(now)
    .bind(now + TimeDelta::hours(1))
    .execute(p)
    .await
    .map(|_| ())
    .unwrap());
    assert_eq!(placed().await, 1, "a plain insert, the day's row made for it");
    let a = guard::check_and_hold(&store, &GuardSettings::default(), &ask(100), &hold("guarded"), now).await.unwrap();
    assert!(a.allowed);
    assert_eq!(placed().await, 2, "the guard's placement");
    let Store::Postgres(p) = &store else { return };
    let before = holds::figures(&mut Session::pooled(&store), ("dst", &day), now).await.unwrap();
    let (outcome,): (String,) = sqlx::query_as(
        "SELECT outcome FROM guard_place_holds('dst', $1, $2, 0, $3, ARRAY['old'], ARRAY['u1'], ARRAY[100::BIGINT],
             ARRAY['{}'], ARRAY[$2::TIMESTAMPTZ], ARRAY[$4::TIMESTAMPTZ])",
    )
    .bind(&day)
    .bind(now)
    .bind(before.held)
    .bind(now + TimeDelta::hours(1))
    .fetch_one(p)
    .await
    .unwrap();
    assert_eq!(outcome, "placed");
    assert_eq!(placed().await, 3, "the previous version's function");
    let row = holds::Hold {
        hold_key: "new".into(),
        amount_cents: 100,
        ..holds::get(&mut Session::pooled(&store), "old").await.unwrap().unwrap().0
    };
    let attempt =
        holds::place_if_unchanged(&mut Session::pooled(&store), ("dst", &day), now, before, false, &[(&row, "{}")])
            .await
            .unwrap();
    assert_eq!(attempt, Attempt::Changed(Figures { total: 0, held: before.held + 100, placed: 3 }));
}
both_backends!(every_hold_stored_moves_its_days_count, super::every_hold_stored_moves_its_days_count);

/// A hold is decided on the figures found under the day's lock: the locked path hands each decision the day's
/// counted total and held sum as they are (a hold placed a moment ago, or earlier in the same placement,
/// included), and a key already held is reported as such. PostgreSQL's one-round-trip path stores holds only
/// on the figures they were decided on and when no key is stored yet, and otherwise hands back the figures
/// found (another hold, a counted transfer) or the keys taken.
async fn a_hold_is_decided_on_the_figures_found_under_the_lock(b: Backend) {
    let (_db, store) = one_user(b, 250_000).await;
    let now = midday();
    let day = BankDay::of(NY.parse().unwrap(), now).key();
    let mk = |key: &str| holds::Hold {
        hold_key: key.into(),
        user_id: "u1".into(),
        destination_id: "dst".into(),
        bank_day: day.clone(),
        amount_cents: 100,
        routine_id: None,
        created_at: now,
        expires_at: now + TimeDelta::hours(1),
        ended_at: None,
        end_reason: None,
        transfer_id: None,
    };
    let mut seen = Vec::new();
    let mut locked = async |keys: &[&str], store_it: &[bool]| {
        let rows: Vec<_> = keys.iter().map(|k| mk(k)).collect();
        holds::place_locked(&store, ("dst", &day), now, None, &rows, |i, total, held| {
            seen.push((total, held));
            Ok(store_it[i].then(|| "{}".to_string()))
        })
        .await
        .unwrap()
        .0
    };
    assert_eq!(locked(&["k1"], &[true]).await, [Placement::Placed]);
    assert_eq!(
        locked(&["k2", "k1", "k4"], &[false, true, true]).await,
        [Placement::Declined, Placement::KeyTaken, Placement::Placed]
    );
    assert_eq!(locked(&["k5", "k6"], &[true, true]).await, [Placement::Placed, Placement::Placed]);
    assert_eq!(
        seen,
        vec![(0, 0), (0, 100), (0, 100), (0, 100), (0, 200), (0, 300)],
        "each decision saw the holds stored before it, in the same transaction too"
    );
    assert_eq!(
        holds::figures(&mut Session::pooled(&store), ("dst", &day), now).await.unwrap(),
        Figures { total: 0, held: 400, placed: 4 },
        "the day's figures, unlocked, with the four holds placed counted"
    );
    let later = now + TimeDelta::hours(2);
    assert_eq!(counted_and_held(&store, &day, later).await, (0, 0), "expired holds hold nothing");

    if let Store::Postgres(_) = &store {
        let fast = |keys: &'static [&'static str], seen: (i64, i64, i64), exact: bool| {
            let (store, rows, day) = (store.clone(), keys.iter().map(|k| mk(k)).collect::<Vec<_>>(), day.clone());
            async move {
                let refs: Vec<_> = rows.iter().map(|h| (h, "{}")).collect();
                let seen = Figures { total: seen.0, held: seen.1, placed: seen.2 };
                holds::place_if_unchanged(&mut Session::pooled(&store), ("dst", &day), now, seen, exact, &refs)
                    .await
                    .unwrap()
            }
        };
        let figures = |total, held, placed| Figures { total, held, placed };
        assert_eq!(fast(&["k3"], (0, 0, 0), false).await, Attempt::Changed(figures(0, 400, 4)), "four holds are held");
        with_pool!(&store, |p| sqlx::query("UPDATE inbound_day SET total_cents = 5000 WHERE destination_id = 'dst'")
            .execute(p)
            .await
            .map(|_| ())
            .unwrap());
        assert_eq!(
            fast(&["k3"], (0, 400, 4), false).await,
            Attempt::Changed(figures(5000, 400, 4)),
            "a transfer counted"
        );
        assert_eq!(fast(&["k3", "k7", "k1"], (5000, 400, 4), false).await, Attempt::Taken(vec!["k1".into()]));
        assert_eq!(
            fast(&["k3", "k7"], (5000, 400, 4), false).await,
            Attempt::Placed { taken: vec![], after: figures(5000, 600, 6) }
        );
        assert_eq!(fast(&["k8"], (5000, 400, 4), false).await, Attempt::Changed(figures(5000, 600, 6)));
        assert_eq!(counted_and_held(&store, &day, now).await, (5000, 600), "counted and held");
        // A hold released: the held sum falls, the count of holds placed does not. Figures that still count it
        // place a hold without summing the day; asked to be exact (a denial among the decisions), the day is
        // summed and the figures found handed back.
        assert!(holds::release(&store, "k7", now).await.unwrap());
        assert_eq!(
            fast(&["k8"], (5000, 600, 6), false).await,
            Attempt::Placed { taken: vec![], after: figures(5000, 700, 7) },
            "the carried sum, 100 more than is held"
        );
        assert_eq!(fast(&["k9"], (5000, 700, 7), true).await, Attempt::Changed(figures(5000, 600, 7)));
        // Nothing to store, only a denial's figures to have summed under the lock (migration 0021 returns before
        // any key look-up): the figures found, or the carried ones confirmed.
        assert_eq!(fast(&[], (5000, 700, 7), true).await, Attempt::Changed(figures(5000, 600, 7)));
        assert_eq!(
            fast(&[], (5000, 600, 7), true).await,
            Attempt::Placed { taken: vec![], after: figures(5000, 600, 7) }
        );
    }
    let held: i64 = with_pool!(&store, |p| sqlx::query_scalar(
        "SELECT CAST(SUM(amount_cents) AS BIGINT) FROM guard_hold WHERE destination_id = 'dst'"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!(held, if store.is_postgres() { 700 } else { 400 }, "each key once");
    let open = counted_and_held(&store, &day, now).await.1;
    assert!(holds::release(&store, "k1", now).await.unwrap());
    assert_eq!(counted_and_held(&store, &day, now).await.1, open - 100, "a released hold holds nothing");
}
both_backends!(
    a_hold_is_decided_on_the_figures_found_under_the_lock,
    super::a_hold_is_decided_on_the_figures_found_under_the_lock
);

async fn a_hold_key_is_idempotent_and_a_hold_ends_when_released_or_expired(b: Backend) {
    let (_db, store) = one_user(b, 100_000).await;
    let s = GuardSettings::default();
    let now = midday();
    let a = guard::check_and_hold(&store, &s, &ask(60_000), &hold("k1"), now).await.unwrap();
    let again =
        guard::check_and_hold(&store, &s, &ask(60_000), &hold("k1"), now + TimeDelta::minutes(1)).await.unwrap();
    assert_eq!(a, again, "the same key returns the same answer");
    assert_eq!(holds::list(&store, false, now, 10).await.unwrap().len(), 1, "and holds once");
    let other = guard::check_and_hold(&store, &s, &ask(1_000), &hold("k1"), now).await.unwrap_err();
    assert!(format!("{other:#}").contains("another request"), "{other:#}");

    // Released: the amount is free again.
    assert!(!guard::check(&store, &s, &ask(60_000), now).await.unwrap().allowed);
    assert!(holds::release(&store, "k1", now).await.unwrap());
    assert!(guard::check(&store, &s, &ask(60_000), now).await.unwrap().allowed);
    assert!(!holds::release(&store, "k1", now).await.unwrap(), "released once");

    // Expired: past its time it reserves nothing.
    let short = HoldRequest { key: "k2", hold_for: TimeDelta::minutes(10) };
    assert!(guard::check_and_hold(&store, &s, &ask(60_000), &short, now).await.unwrap().allowed);
    assert!(!guard::check(&store, &s, &ask(60_000), now + TimeDelta::minutes(9)).await.unwrap().allowed);
    assert!(guard::check(&store, &s, &ask(60_000), now + TimeDelta::minutes(11)).await.unwrap().allowed);
    assert_eq!(holds::end_expired(&store, now + TimeDelta::minutes(11)).await.unwrap(), 1);
    let k2 = holds::get(&mut Session::pooled(&store), "k2").await.unwrap().unwrap().0;
    assert_eq!(k2.end_reason.as_deref(), Some("expired"));
}
both_backends!(
    a_hold_key_is_idempotent_and_a_hold_ends_when_released_or_expired,
    super::a_hold_key_is_idempotent_and_a_hold_ends_when_released_or_expired
);

fn transfer_json(
    id: &str,
    cents: f64,
    correlation: Option<&str>,
    routine: Option<&str>,
) -> astra_worker::astra::Transfer {
    let mut v = serde_json::json!({
        "id": id, "amount": cents / 100.0, "initiated": astra_worker::astra::model::format_time(Utc::now()),
        "status": "pending", "destination_id": "dst",
        "estimated_clearing_date": "2099-01-01T00:00:00.000000",
    });
    if let Some(c) = correlation {
        v["client_correlation_id"] = c.into();
    }
    if let Some(r) = routine {
        v["routine_id"] = r.into();
    }
    astra_worker::astra::model::parse_transfer(v).unwrap()
}

async fn a_hold_that_becomes_its_transfer_is_counted_once(b: Backend) {
    let (_db, store) = one_user(b, 100_000).await;
    let s = GuardSettings::default();
    let now = Utc::now();
    assert!(guard::check_and_hold(&store, &s, &ask(30_000), &hold("c1"), now).await.unwrap().allowed);
    assert!(guard::check_and_hold(&store, &s, &ask(20_000), &hold("c2"), now).await.unwrap().allowed);
    holds::attach(&store, "c2", "rtn-2").await.unwrap();
    let before = guard::check(&store, &s, &ask(1), now).await.unwrap();
    assert_eq!((before.day_total_cents, before.held_cents), (Some(0), Some(50_000)));

    // By correlation id, by attached routine id, and one that matches no hold.
    mirror::upsert(&store, "u1", &transfer_json("t-c1", 30_000.0, Some("c1"), None), now).await.unwrap();
    mirror::upsert(&store, "u1", &transfer_json("t-c2", 20_000.0, None, Some("rtn-2")), now).await.unwrap();
    mirror::upsert(&store, "u1", &transfer_json("t-x", 5_000.0, Some("nobody"), None), now).await.unwrap();
    let after = guard::check(&store, &s, &ask(1), now).await.unwrap();
    assert_eq!((after.day_total_cents, after.held_cents), (Some(55_000), Some(0)), "{after:?}");
    assert_eq!(after.headroom_cents, Some(100_000 - 55_000 - 1));
    for key in ["c1", "c2"] {
        let h = holds::get(&mut Session::pooled(&store), key).await.unwrap().unwrap().0;
        assert_eq!(h.end_reason.as_deref(), Some("counted"), "{key}");
    }
    // Read again: nothing moves.
    mirror::upsert(&store, "u1", &transfer_json("t-c1", 30_000.0, Some("c1"), None), now).await.unwrap();
    assert_eq!(counters::counter(&store, "dst", &today()).await.unwrap().map(|c| c.0), Some(55_000));
}
both_backends!(
    a_hold_that_becomes_its_transfer_is_counted_once,
    super::a_hold_that_becomes_its_transfer_is_counted_once
);

async fn bad_guard_input_is_refused_and_leaves_no_hold(b: Backend) {
    let (db, store) = one_user(b, 100_000).await;
    registry::block_user(&store, "u1", "fraud review", Utc::now()).await.unwrap();
    let run = |args: &[&str]| {
        let mut c = bin(&db.url);
        c.args(["guard", "--user", "u1"]).args(args);
        c.output().unwrap()
    };
    let long = "k".repeat(129);
    for (args, needle) in [
        (vec!["--amount", "1.001", "--hold", "a"], "more than two decimals"),
        (vec!["--amount=-5", "--hold", "a"], "negative"),
        (vec!["--amount", "0", "--hold", "a"], "more than zero"),
        (vec!["--amount", "5", "--hold", &long], "longer than 128"),
        (vec!["--amount", "5", "--hold", "a\u{7}b"], "control character"),
        (vec!["--amount", "5", "--hold", "a", "--hold-for", "30d"], "at most 7 days"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(78), "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(needle), "{args:?}: {}", text(&o.stderr));
    }
    // A blocked user is denied, and no hold is left behind.
    let o = run(&["--amount", "5", "--hold", "blocked"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reason"], "user_blocked");
    registry::unblock_user(&store, "u1").await.unwrap();
    // An unknown destination has no limit to hold against: a clear error.
    let o = run(&["--amount", "5", "--destination", "nowhere", "--hold", "x"]);
    assert_eq!(o.status.code(), Some(78), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no registered destination"), "{}", text(&o.stderr));
    assert!(holds::list(&store, false, Utc::now(), 10).await.unwrap().is_empty());
}
both_backends!(bad_guard_input_is_refused_and_leaves_no_hold, super::bad_guard_input_is_refused_and_leaves_no_hold);

async fn mirror(rig: &TestApp, w: &Worker) -> astra_worker::runner::RunSummary {
    let _ = rig;
    run_job(w, JobName::InboundVolume, &RunOptions { force: true, ..Default::default() }, Utc::now()).await.unwrap()
}

fn ran(s: &astra_worker::runner::RunSummary) -> (astra_worker::store::ledger::Outcome, serde_json::Value) {
    match &s.reports[0].result {
        SlotResult::Ran { outcome, details, .. } => (*outcome, details.clone()),
        other => panic!("not run: {other:?}"),
    }
}

async fn astras_shapes_are_counted_under_every_reading(b: Backend) {
    for (count, clearing) in [
        (CountSemantics::Page, ClearingFormat::DateTime),
        (CountSemantics::Total, ClearingFormat::Date),
        (CountSemantics::Total, ClearingFormat::DateTime),
    ] {
        let sb = SandboxSettings { count_semantics: count, clearing_format: clearing, ..Default::default() };
        let rig = TestApp::new(b, sb, |_| {}).await;
        let w = rig.worker(None).await;
        let users = rig.seed(&w.store, 1, |_| TimeDelta::hours(1)).await;
        register(&w.store, "dst", &users[0], 1_000_000_000).await;
        let start = BankDay::of(NY.parse().unwrap(), Utc::now()).start();
        let span = (Utc::now() - start).num_seconds().max(250);
        for i in 0..250 {
            let at = start + TimeDelta::seconds(i * span / 250);
            processed(&rig, &format!("t{i:03}"), &users[0], 100, at);
        }
        let (outcome, details) = ran(&mirror(&rig, &w).await);
        assert_eq!(outcome, astra_worker::store::ledger::Outcome::Succeeded, "{count:?} {clearing:?}: {details}");
        let n = with_pool!(&w.store, |p| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM transfer WHERE estimated_clearing_date IS NOT NULL"
        )
        .fetch_one(p)
        .await
        .unwrap());
        assert_eq!(n, 250, "{count:?} {clearing:?}: every transfer read with its clearing date");
        assert_eq!(counters::counter(&w.store, "dst", &today()).await.unwrap(), Some((25_000, 250)));
    }
}
both_backends!(astras_shapes_are_counted_under_every_reading, super::astras_shapes_are_counted_under_every_reading);

async fn a_page_that_repeats_items_doubles_nothing(b: Backend) {
    let sb = SandboxSettings { faults: Faults { ignore_offset: true, ..Default::default() }, ..Default::default() };
    let rig = TestApp::new(b, sb, |_| {}).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::hours(1)).await;
    register(&w.store, "dst", &users[0], 1_000_000_000).await;
    let start = BankDay::of(NY.parse().unwrap(), Utc::now()).start();
    for i in 0..150 {
        let at = start + TimeDelta::seconds(i);
        processed(&rig, &format!("t{i:03}"), &users[0], 100, at);
    }
    let summary = mirror(&rig, &w).await;
    let (outcome, details) = ran(&summary);
    assert_eq!(
        outcome,
        astra_worker::store::ledger::Outcome::Partial,
        "what lies behind the repeat is unread: {details}"
    );
    assert_eq!(details["listings_truncated"], 1);
    let (total, n) = counters::counter(&w.store, "dst", &today()).await.unwrap().unwrap();
    assert_eq!(total, n * 100, "each transfer counted once");
    assert!(n <= 100, "the repeated page brought nothing new: {n}");
    let listings = rig.sandbox.state().calls.iter().filter(|c| c.path == "/v1/transfers").count();
    // Each slot the catch-up ran read two pages: the second repeated the first, so paging stopped.
    assert_eq!(listings, 2 * summary.reports.len());
}
both_backends!(a_page_that_repeats_items_doubles_nothing, super::a_page_that_repeats_items_doubles_nothing);

async fn a_transfer_that_does_not_parse_makes_the_run_partial_and_its_day_uncertain(b: Backend) {
    let sb = SandboxSettings {
        faults: Faults { unreadable_transfers: vec!["t-bad".into()], ..Default::default() },
        ..Default::default()
    };
    let rig = TestApp::new(b, sb, |_| {}).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::hours(1)).await;
    register(&w.store, "dst", &users[0], 100_000).await;
    let at = Utc::now();
    add_transfer(&mut rig.sandbox.state(), "t-ok", &users[0], 1_000, at, TransferStatus::Processed, None);
    add_transfer(&mut rig.sandbox.state(), "t-bad", &users[0], 90_000, at, TransferStatus::Processed, None);
    let summary = mirror(&rig, &w).await;
    let (outcome, details) = ran(&summary);
    assert_eq!(outcome, astra_worker::store::ledger::Outcome::Partial, "{details}");
    assert_eq!(summary.status().code(), 75);
    assert_eq!(details["transfers_rejected"], 1);
    assert!(counters::uncertainty(&w.store, "dst", &today()).await.unwrap().is_some());
    let req = GuardRequest { user_id: &users[0], amount: Cents(100), destination_id: None };
    let deny = guard::check(&w.store, &GuardSettings::default(), &req, Utc::now()).await.unwrap();
    assert_eq!(deny.reason.map(|r| r.as_str()), Some("counter_uncertain"), "{deny:?}");
    let lenient = GuardSettings { on_uncertain: OnUncertain::Allow, ..Default::default() };
    let allow = guard::check(&w.store, &lenient, &req, Utc::now()).await.unwrap();
    assert!(allow.allowed && allow.uncertain, "{allow:?}");

    // Astra serves it readable again: the next reading clears the day.
    rig.sandbox.set_faults(Faults::default());
    let (outcome, _) = ran(&mirror(&rig, &w).await);
    assert_eq!(outcome, astra_worker::store::ledger::Outcome::Succeeded);
    assert!(counters::uncertainty(&w.store, "dst", &today()).await.unwrap().is_none());
    assert_eq!(counters::counter(&w.store, "dst", &today()).await.unwrap().map(|c| c.0), Some(91_000));
    let now_read = guard::check(&w.store, &GuardSettings::default(), &req, Utc::now()).await.unwrap();
    assert!(now_read.as_of.is_some_and(|t| Utc::now() - t < TimeDelta::minutes(5)), "{now_read:?}");
    let stale = GuardSettings { max_staleness: Some(TimeDelta::minutes(1)), ..Default::default() };
    let later = guard::check(&w.store, &stale, &req, Utc::now() + TimeDelta::minutes(2)).await.unwrap();
    assert_eq!(later.reason.map(|r| r.as_str()), Some("counter_stale"));
}
both_backends!(
    a_transfer_that_does_not_parse_makes_the_run_partial_and_its_day_uncertain,
    super::a_transfer_that_does_not_parse_makes_the_run_partial_and_its_day_uncertain
);

async fn the_drift_fix_erases_no_concurrent_mirror_write(b: Backend) {
    let (db, store) = one_user(b, 1_000_000_000).await;
    let day = today();
    let writers: Vec<_> = (0..4)
        .map(|k| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let store = Store::open(&url).await.unwrap();
                for i in 0..40 {
                    let t = transfer_json(&format!("w{k}-{i:02}"), 100.0, None, None);
                    mirror::upsert(&store, "u1", &t, Utc::now()).await.unwrap();
                }
                store.close().await;
            })
        })
        .collect();
    let fixer = {
        let (url, day) = (db.url.clone(), day.clone());
        tokio::spawn(async move {
            let store = Store::open(&url).await.unwrap();
            for _ in 0..40 {
                counters::fix_day(&store, "dst", &day).await.unwrap();
            }
            store.close().await;
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    fixer.await.unwrap();
    assert_eq!(counters::counter(&store, "dst", &day).await.unwrap(), Some((16_000, 160)));
    let fix = counters::fix_day(&store, "dst", &day).await.unwrap();
    assert_eq!(fix.drift(), 0, "{fix:?}");
}
both_backends!(the_drift_fix_erases_no_concurrent_mirror_write, super::the_drift_fix_erases_no_concurrent_mirror_write);

async fn catch_up_of_three_missed_daily_slots_decides_three_days(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        for j in &mut s.jobs {
            if j.name == JobName::InboundVolume {
                // Back to just before the third-latest slot, whatever the time of day.
                let now = Utc::now();
                let mut slot = j.schedule.latest_at_or_before(now).unwrap();
                for _ in 0..2 {
                    slot = j.schedule.latest_at_or_before(slot - TimeDelta::seconds(1)).unwrap();
                }
                j.max_lateness = now - slot + TimeDelta::minutes(5);
            }
        }
    })
    .await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::hours(1)).await;
    register(&w.store, "dst", &users[0], 100_000).await;
    let s = run_job(&w, JobName::InboundVolume, &RunOptions::default(), Utc::now()).await.unwrap();
    assert_eq!(s.reports.len(), 3, "three slots within max_lateness");
    let days: Vec<String> = with_pool!(&w.store, |p| sqlx::query_scalar(
        "SELECT bank_day FROM limit_decision WHERE destination_id = 'dst' ORDER BY bank_day"
    )
    .fetch_all(p)
    .await
    .unwrap());
    // Each slot decides the day it ends and the day it starts: four days for three consecutive slots.
    assert_eq!(days.len(), 4, "{days:?}");
}
both_backends!(
    catch_up_of_three_missed_daily_slots_decides_three_days,
    super::catch_up_of_three_missed_daily_slots_decides_three_days
);

async fn a_transfer_returned_eight_days_after_it_landed_gets_one_followup(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::hours(1)).await;
    register(&w.store, "dst", &users[0], 1_000_000).await;
    let at = Utc::now() - TimeDelta::hours(2);
    add_transfer(&mut rig.sandbox.state(), "t-late", &users[0], 4_200, at, TransferStatus::Processed, None);
    mirror(&rig, &w).await;
    // Eight days on, the transfer is long out of every listing window; Astra marks it failed (an ACH return).
    set_recheck_due(&w.store, "t-late").await;
    rig.sandbox.state().set_transfer_status("t-late", TransferStatus::Failed, Some("R10".into()));
    for _ in 0..2 {
        run_job(&w, JobName::ReprocessingCheck, &RunOptions { force: true, ..Default::default() }, Utc::now())
            .await
            .unwrap();
        set_recheck_due(&w.store, "t-late").await;
    }
    let n: i64 = with_pool!(&w.store, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'remove_from_available_balance'"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!(n, 1);
    let requests = rig.sandbox.state().calls.iter().filter(|c| c.path == "/v1/transfers/t-late").count();
    assert!(requests >= 1, "read again by id");
}
both_backends!(
    a_transfer_returned_eight_days_after_it_landed_gets_one_followup,
    super::a_transfer_returned_eight_days_after_it_landed_gets_one_followup
);

/// Makes a landed transfer's next reading due now, as if eight days had passed.
async fn set_recheck_due(store: &Store, id: &str) {
    let past: DateTime<Utc> = Utc::now() - TimeDelta::seconds(1);
    with_pool!(store, |p| sqlx::query("UPDATE transfer SET recheck_at = $1 WHERE id = $2 AND recheck_at IS NOT NULL")
        .bind(past)
        .bind(id)
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
}

#[test]
fn a_clearing_instant_and_a_clearing_date_are_both_astra_shapes() {
    assert!(matches!(Clearing::parse("2020-09-17T15:12:04.746260"), Ok(Clearing::At(_))));
    assert!(matches!(Clearing::parse("2020-09-17"), Ok(Clearing::On(_))));
}

async fn a_held_transfer_of_a_dead_grant_still_gets_its_stuck_followup(b: Backend) {
    use astra_worker::sandbox::Hold;
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::hours(1)).await;
    register(&w.store, "dst", &users[0], 1_000_000).await;
    let at = Utc::now() - TimeDelta::hours(1);
    let hold = Some(Hold::DailyLimit { clears_at: Utc::now() + TimeDelta::days(30) });
    add_transfer(&mut rig.sandbox.state(), "t-held", &users[0], 5_000, at, TransferStatus::Pending, hold);
    mirror(&rig, &w).await;
    // Held for four days, and meanwhile the user's grant died: the transfer can no longer be read.
    let long_ago: DateTime<Utc> = Utc::now() - TimeDelta::days(4);
    with_pool!(&w.store, |p| sqlx::query("UPDATE transfer SET held_since = $1 WHERE id = 't-held'")
        .bind(long_ago)
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    with_pool!(&w.store, |p| sqlx::query("UPDATE grant_token SET status = 'needs_reauth' WHERE user_id = $1")
        .bind(&users[0])
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    run_job(&w, JobName::ReprocessingCheck, &RunOptions { force: true, ..Default::default() }, Utc::now())
        .await
        .unwrap();
    let stuck = astra_worker::outbox::store::list(&w.store, false, Some("transfer_stuck"), 10).await.unwrap();
    assert_eq!(stuck.len(), 1);
    assert!(stuck[0].payload.contains("\"amount_cents\":5000"), "{}", stuck[0].payload);
}
both_backends!(
    a_held_transfer_of_a_dead_grant_still_gets_its_stuck_followup,
    super::a_held_transfer_of_a_dead_grant_still_gets_its_stuck_followup
);

async fn a_user_whose_token_cannot_be_had_fails_the_run_instead_of_being_skipped(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    // Imported with an access token that has expired: reading needs a refresh, and Astra answers only 5xx.
    let g = rig.sandbox.state().add_approved_user("u-down", None, Utc::now());
    import(&w.store, "u-down", &g.access_token, &g.refresh_token, Utc::now(), Some(Utc::now() - TimeDelta::minutes(1)))
        .await;
    rig.sandbox.set_faults(Faults { error_rate: 1.0, ..Default::default() });
    let s = mirror(&rig, &w).await;
    let (outcome, details) = ran(&s);
    assert_eq!(outcome, astra_worker::store::ledger::Outcome::Partial, "{details}");
    assert_eq!(s.status().code(), 75);
}
both_backends!(
    a_user_whose_token_cannot_be_had_fails_the_run_instead_of_being_skipped,
    super::a_user_whose_token_cannot_be_had_fails_the_run_instead_of_being_skipped
);

/// A transfer as Astra lists it, initiated at `at`.
fn transfer_at(
    id: &str,
    cents: i64,
    at: DateTime<Utc>,
    correlation: Option<&str>,
    routine: Option<&str>,
) -> astra_worker::astra::Transfer {
    let mut t = transfer_json(id, cents as f64, correlation, routine);
    t.initiated = at;
    t
}

async fn a_hold_ends_only_for_its_own_transfer(b: Backend) {
    let (_db, store) = one_user(b, 1_000_000).await;
    import(&store, "u2", "at-u2", "rt-u2", Utc::now(), Some(Utc::now() + TimeDelta::hours(2))).await;
    register(&store, "dst-u2", "u2", 1_000_000).await;
    let s = GuardSettings::default();
    let now = Utc::now();
    // A recurring routine's transfer from yesterday is already in the mirror.
    mirror::upsert(
        &store,
        "u1",
        &transfer_at("t-yesterday", 10_000, now - TimeDelta::days(1), None, Some("rtn-rec")),
        now,
    )
    .await
    .unwrap();
    assert!(guard::check_and_hold(&store, &s, &ask(20_000), &hold("today"), now).await.unwrap().allowed);
    holds::attach(&store, "today", "rtn-rec").await.unwrap();
    // Yesterday's transfer changes (it lands): it is not today's, and ends nothing.
    let mut landed = transfer_at("t-yesterday", 10_000, now - TimeDelta::days(1), None, Some("rtn-rec"));
    landed.status = TransferStatus::Processed;
    mirror::upsert(&store, "u1", &landed, now).await.unwrap();
    // Another user's transfer that carries the same correlation id ends nothing either.
    let mut other = transfer_at("t-other", 10_000, now, Some("today"), None);
    other.destination_id = Some("dst-u2".into());
    mirror::upsert(&store, "u2", &other, now).await.unwrap();
    assert_eq!(holds::get(&mut Session::pooled(&store), "today").await.unwrap().unwrap().0.end_reason, None);
    // Today's transfer of the routine ends it.
    mirror::upsert(
        &store,
        "u1",
        &transfer_at("t-today", 20_000, now + TimeDelta::minutes(1), None, Some("rtn-rec")),
        now,
    )
    .await
    .unwrap();
    let h = holds::get(&mut Session::pooled(&store), "today").await.unwrap().unwrap().0;
    assert_eq!((h.end_reason.as_deref(), h.transfer_id.as_deref()), (Some("counted"), Some("t-today")));

    // The routine's transfer read before the hold was attached: attaching ends the hold at once.
    assert!(guard::check_and_hold(&store, &s, &ask(5_000), &hold("late-attach"), now).await.unwrap().allowed);
    mirror::upsert(&store, "u1", &transfer_at("t-early", 5_000, now + TimeDelta::minutes(2), None, Some("rtn-2")), now)
        .await
        .unwrap();
    holds::attach(&store, "late-attach", "rtn-2").await.unwrap();
    let h = holds::get(&mut Session::pooled(&store), "late-attach").await.unwrap().unwrap().0;
    assert_eq!((h.end_reason.as_deref(), h.transfer_id.as_deref()), (Some("counted"), Some("t-early")));

    // An attach that cannot be is the answer "no" (exit 1, 409), not bad input: the hold has ended, or the
    // routine is another open hold's.
    let refused = |e: anyhow::Error| (astra_worker::exit::classify(&e), format!("{e:#}"));
    holds::attach(&store, "late-attach", "rtn-2").await.expect("the same attach again, after the hold ended: done");
    let (status, msg) = refused(holds::attach(&store, "late-attach", "rtn-3").await.unwrap_err());
    assert!(status == Status::No && msg.contains("has ended (counted)"), "{status:?}: {msg}");
    for key in ["first", "second"] {
        assert!(guard::check_and_hold(&store, &s, &ask(1_000), &hold(key), now).await.unwrap().allowed);
    }
    holds::attach(&store, "first", "rtn-9").await.unwrap();
    let (status, msg) = refused(holds::attach(&store, "second", "rtn-9").await.unwrap_err());
    assert!(status == Status::No && msg.contains("to another hold"), "{status:?}: {msg}");
    assert_eq!(holds::get(&mut Session::pooled(&store), "second").await.unwrap().unwrap().0.routine_id, None);
    let (status, msg) = refused(holds::attach(&store, "second", "").await.unwrap_err());
    assert!(status == Status::Config && msg.contains("routine_id is empty"), "{status:?}: {msg}");

    // A hold that expired before its transfer showed keeps its user read by the sync for a day.
    let short = HoldRequest { key: "lapsed", hold_for: TimeDelta::minutes(10) };
    assert!(guard::check_and_hold(&store, &s, &ask(1_000), &short, now).await.unwrap().allowed);
    let later = now + TimeDelta::hours(2);
    holds::end_expired(&store, later).await.unwrap();
    assert_eq!(holds::users_to_sync(&store, later).await.unwrap(), vec!["u1".to_string()]);
    assert!(holds::users_to_sync(&store, now + TimeDelta::days(2)).await.unwrap().is_empty());
}
both_backends!(a_hold_ends_only_for_its_own_transfer, super::a_hold_ends_only_for_its_own_transfer);
