//! The money side on both stores: the transfer mirror and its counters, drift, the guard's every reason,
//! reprocessing (limit, frozen card, stuck) and the follow-ups of a transfer that failed after landing.

use crate::with_pool;
use astra_worker::{
    app::Worker,
    astra::TransferStatus,
    config::{GuardSettings, JobName, JobParams},
    domain::Cents,
    outbox,
    reconcile::guard::{self, GuardRequest},
    reconcile::registry::{self, AchCreditLine, DestinationKind, DestinationLine, ImportLine},
    reconcile::{counters, mirror},
    runner::{RunOptions, run_job},
    sandbox::{CardRec, Hold, SandboxSettings},
    store::Store,
    tokens::store as grant_store,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use rand::{Rng, SeedableRng};

use crate::{
    astra::add_transfer,
    both_backends,
    helpers::{Backend, TestApp},
};

const NY: &str = "America/New_York";

async fn register(store: &Store, dest: &str, user: &str, kind: &str, zone: &str, limit: i64) {
    let line = ImportLine::Destination(DestinationLine {
        destination_id: dest.into(),
        user_id: user.into(),
        kind: DestinationKind::parse(kind).unwrap(),
        bank_time_zone: zone.into(),
        daily_limit_cents: limit,
        frozen: None,
        push_enabled: None,
        pull_enabled: None,
    });
    registry::import(store, &line, Utc::now()).await.unwrap();
}

/// A transfer to destination `dst` in the sandbox.
fn transfer(rig: &TestApp, id: &str, user: &str, cents: i64, at: DateTime<Utc>, status: TransferStatus) {
    add_transfer(&mut rig.sandbox.state(), id, user, cents, at, status, None);
}

fn ask(user: &str, cents: i64) -> GuardRequest<'_> {
    GuardRequest { user_id: user, amount: Cents(cents), destination_id: None }
}

async fn force(w: &Worker, job: JobName) -> astra_worker::runner::RunSummary {
    run_job(w, job, &RunOptions { force: true, ..Default::default() }, Utc::now()).await.unwrap()
}

/// The latest slot only, again (a catch-up of `all` would also run the days before, each reading back to its own
/// days).
async fn force_latest(w: &Worker, job: JobName) -> astra_worker::runner::RunSummary {
    let latest = w.settings.job(job).and_then(|j| j.schedule.latest_at_or_before(Utc::now()));
    run_job(w, job, &RunOptions { slot: latest, force: true, ..Default::default() }, Utc::now()).await.unwrap()
}

async fn total(store: &Store, dest: &str, day: &str) -> i64 {
    counters::counter(store, dest, day).await.unwrap().map(|c| c.0).unwrap_or(0)
}

fn today_ny() -> String {
    astra_worker::domain::BankDay::of(NY.parse().unwrap(), Utc::now()).key()
}

async fn a_thousand_random_amounts_sum_exactly_and_mirroring_twice_changes_nothing(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::hours(1)).await;
    register(&w.store, "dst", &users[0], "account", NY, 1_000_000_000).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let day_start = astra_worker::domain::BankDay::of(NY.parse().unwrap(), Utc::now()).start();
    let span = (Utc::now() - day_start).num_seconds().max(2);
    let mut expected = 0i64;
    for i in 0..1000 {
        let cents = rng.random_range(1..=500_000i64);
        expected += cents;
        let at = day_start + TimeDelta::seconds(rng.random_range(0..span));
        transfer(&rig, &format!("t{i:04}"), &users[0], cents, at, TransferStatus::Processed);
    }
    force(&w, JobName::InboundVolume).await;
    assert_eq!(total(&w.store, "dst", &today_ny()).await, expected);
    assert_eq!(counters::recompute(&w.store, "dst", &today_ny()).await.unwrap(), (expected, 1000));
    let events = count(&w.store, "SELECT COUNT(*) FROM transfer_event").await;

    force(&w, JobName::InboundVolume).await;
    assert_eq!(total(&w.store, "dst", &today_ny()).await, expected, "mirroring twice changes nothing");
    assert_eq!(count(&w.store, "SELECT COUNT(*) FROM transfer_event").await, events);

    // A status change moves the counter once.
    rig.sandbox.state().set_transfer_status("t0007", TransferStatus::Failed, Some("R01".into()));
    let gone = cents_of(&w.store, "t0007").await;
    force(&w, JobName::InboundVolume).await;
    force(&w, JobName::InboundVolume).await;
    assert_eq!(total(&w.store, "dst", &today_ny()).await, expected - gone);
}
both_backends!(
    a_thousand_random_amounts_sum_exactly_and_mirroring_twice_changes_nothing,
    super::a_thousand_random_amounts_sum_exactly_and_mirroring_twice_changes_nothing
);

async fn count(store: &Store, sql: &'static str) -> i64 {
    with_pool!(store, |p| sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await.unwrap())
}

async fn cents_of(store: &Store, id: &str) -> i64 {
    with_pool!(store, |p| sqlx::query_scalar::<_, i64>("SELECT amount_cents FROM transfer WHERE id = $1")
        .bind(id)
        .fetch_one(p)
        .await
        .unwrap())
}

async fn pages_stop_at_the_window_and_drift_is_found_and_fixed(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::hours(1)).await;
    register(&w.store, "dst", &users[0], "account", NY, 1_000_000).await;
    let now = Utc::now();
    for i in 0..30 {
        // Every 6 hours back: the lookback (3 days) takes 12 of them.
        transfer(
            &rig,
            &format!("w{i:02}"),
            &users[0],
            100,
            now - TimeDelta::hours(6 * i + 1),
            TransferStatus::Processed,
        );
    }
    force_latest(&w, JobName::InboundVolume).await;
    assert_eq!(count(&w.store, "SELECT COUNT(*) FROM transfer").await, 12);

    // A counter changed behind the worker's back (on the newest transfer's bank day).
    let day = astra_worker::domain::BankDay::of(NY.parse().unwrap(), now - TimeDelta::hours(1)).key();
    let before = total(&w.store, "dst", &day).await;
    with_pool!(&w.store, |p| sqlx::query("UPDATE inbound_day SET total_cents = total_cents + 500 WHERE bank_day = $1")
        .bind(&day)
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    let s = force_latest(&w, JobName::InboundVolume).await;
    let details = match &s.reports[0].result {
        astra_worker::runner::SlotResult::Ran { details, .. } => details.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(details["drift_found"], 1, "{details}");
    assert_eq!(details["drift_cents"], 500);
    assert_eq!(total(&w.store, "dst", &day).await, before, "fixed");
    let drift: i64 = with_pool!(&w.store, |p| sqlx::query_scalar(
        "SELECT drift_cents FROM limit_decision WHERE destination_id = 'dst' AND bank_day = $1"
    )
    .bind(&day)
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!(drift, 500, "the evidence keeps the drift");
}
both_backends!(
    pages_stop_at_the_window_and_drift_is_found_and_fixed,
    super::pages_stop_at_the_window_and_drift_is_found_and_fixed
);

/// A day's decision is `blocked` once the counter reaches the limit, `warn` from `warn_percent` of it, else `ok`
/// (limits past what a product of cents can hold included), and is written again only when its total, its limit
/// or `warn_percent` changed.
async fn a_days_decision_stands_at_its_thresholds_and_is_taken_again_only_when_it_changes(b: Backend) {
    let db = crate::helpers::TestDb::new(b).await;
    let store = db.store().await;
    let day = astra_worker::domain::BankDay::of(NY.parse().unwrap(), Utc::now());
    let key = day.key();
    let huge = i64::MAX / 2;
    let cases: [(&str, i64, i64, &str); 7] = [
        ("none", 1_000, 0, "ok"),
        ("below", 1_000, 799, "ok"),
        ("at-warn", 1_000, 800, "warn"),
        ("under", 1_000, 999, "warn"),
        ("at-limit", 1_000, 1_000, "blocked"),
        ("huge-warn", huge, huge / 10 * 9, "warn"),
        ("huge-ok", huge, huge / 10 * 7, "ok"),
    ];
    for (dest, limit, total, _) in cases {
        register(&store, dest, &format!("u-{dest}"), "account", NY, limit).await;
        counters::set_counter(&store, dest, &key, total, 1).await.unwrap();
    }
    register(&store, "elsewhere", "u-x", "account", "America/Los_Angeles", 1_000).await;
    let decide = |warn: u8| counters::decide_zone_day(&store, NY, &day, warn, &[], Utc::now());
    let states = || async {
        with_pool!(&store, |p| sqlx::query_as::<_, (String, String)>(
            "SELECT destination_id, state FROM limit_decision WHERE bank_day = $1 ORDER BY destination_id"
        )
        .bind(&key)
        .fetch_all(p)
        .await
        .unwrap())
    };
    assert_eq!(decide(80).await.unwrap(), 7, "every destination of the zone decided, none of another zone");
    let mut want: Vec<(String, String)> = cases.iter().map(|c| (c.0.to_string(), c.3.to_string())).collect();
    want.sort();
    assert_eq!(states().await, want);
    let tally = counters::zone_day_states(&store, NY, &key).await.unwrap();
    assert_eq!(tally, vec![("blocked".into(), 1), ("ok".into(), 3), ("warn".into(), 3)]);

    assert_eq!(decide(80).await.unwrap(), 0, "nothing changed, nothing written");
    counters::set_counter(&store, "below", &key, 850, 2).await.unwrap();
    assert_eq!(decide(80).await.unwrap(), 1, "a total changed: its decision alone");
    assert_eq!(decide(95).await.unwrap(), 7, "warn_percent changed: every decision taken again");
    let now: Vec<(String, String)> = states().await.into_iter().filter(|(_, s)| s == "warn").collect();
    assert_eq!(now, vec![("under".to_string(), "warn".to_string())], "at 95 %, 999 of 1,000 alone warns");

    // A drift's evidence: written once, kept while the state, total and limit stay, cleared when one changes.
    let drift = || async {
        with_pool!(&store, |p| sqlx::query_scalar::<_, i64>(
            "SELECT drift_cents FROM limit_decision WHERE destination_id = 'at-limit' AND bank_day = $1"
        )
        .bind(&key)
        .fetch_one(p)
        .await
        .unwrap())
    };
    let found = [("at-limit".to_string(), 120)];
    let with_drift = |warn: u8| counters::decide_zone_day(&store, NY, &day, warn, &found, Utc::now());
    assert_eq!(with_drift(95).await.unwrap(), 1, "the drift alone changed: one decision written");
    assert_eq!(drift().await, 120);
    assert_eq!(with_drift(95).await.unwrap(), 0, "the same drift again: nothing written");
    assert_eq!(decide(90).await.unwrap(), 7, "warn_percent changed again");
    assert_eq!(drift().await, 120, "the state, total and limit stayed: the evidence stays");
    counters::set_counter(&store, "at-limit", &key, 900, 1).await.unwrap();
    assert_eq!(decide(90).await.unwrap(), 1);
    assert_eq!(drift().await, 0, "the total changed: the evidence of the old one goes");
}
both_backends!(
    a_days_decision_stands_at_its_thresholds_and_is_taken_again_only_when_it_changes,
    super::a_days_decision_stands_at_its_thresholds_and_is_taken_again_only_when_it_changes
);

/// A zone of thousands of destinations is decided in id ranges: each destination once, none missed at a range's
/// ends, and nothing written again when nothing changed.
async fn a_large_zone_is_decided_once_each_across_its_ranges(b: Backend) {
    let db = crate::helpers::TestDb::new(b).await;
    let store = db.store().await;
    let day = astra_worker::domain::BankDay::of(NY.parse().unwrap(), Utc::now());
    let key = day.key();
    let n = 2_345;
    with_pool!(&store, |p| {
        sqlx::query(
            "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < $1)
             INSERT INTO destination (destination_id, user_id, kind, bank_time_zone, daily_limit_cents, updated_at)
             SELECT 'd' || x, 'u' || x, 'account', $2, 1000, $3 FROM g",
        )
        .bind(n)
        .bind(NY)
        .bind(Utc::now())
        .execute(p)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers)
             SELECT destination_id, $1, CAST(SUBSTR(destination_id, 2) AS BIGINT) % 3 * 450, 1 FROM destination",
        )
        .bind(&key)
        .execute(p)
        .await
        .unwrap();
    });
    let decide = || counters::decide_zone_day(&store, NY, &day, 80, &[], Utc::now());
    assert_eq!(decide().await.unwrap(), n as u64);
    assert_eq!(decide().await.unwrap(), 0);
    let tally = counters::zone_day_states(&store, NY, &key).await.unwrap();
    // Totals 0, 450 and 900 of 1,000 by the id's remainder of 3: ok, ok, warn (782 of the ids leave 2).
    assert_eq!(tally, vec![("ok".into(), 1_563), ("warn".into(), 782)]);
}
both_backends!(
    a_large_zone_is_decided_once_each_across_its_ranges,
    super::a_large_zone_is_decided_once_each_across_its_ranges
);

async fn the_guard_gives_every_reason_and_a_limit_is_reached_exactly(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 6, |_| TimeDelta::hours(1)).await;
    let db = &w.store;
    register(db, "dst", &users[0], "account", "America/Chicago", 100_000).await;
    // Two transfers a millisecond apart across Chicago midnight land on two days.
    let zone: chrono_tz::Tz = "America/Chicago".parse().unwrap();
    let midnight = zone
        .from_local_datetime(&(Utc::now().with_timezone(&zone).date_naive()).and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .with_timezone(&Utc);
    {
        let mut s = rig.sandbox.state();
        add_transfer(
            &mut s,
            "late",
            &users[0],
            99_999,
            midnight - TimeDelta::milliseconds(1),
            TransferStatus::Processed,
            None,
        );
        add_transfer(&mut s, "early", &users[0], 60_000, midnight, TransferStatus::Processed, None);
    }
    force(&w, JobName::InboundVolume).await;
    let today = astra_worker::domain::BankDay::of(zone, Utc::now());
    assert_eq!(total(db, "dst", &today.key()).await, 60_000);
    assert_eq!(total(db, "dst", &today.previous().key()).await, 99_999);

    let now = Utc::now();
    let u0 = users[0].clone();
    let a = guard::check(db, &GuardSettings::default(), &ask(&u0, 40_000), now).await.unwrap();
    assert!(a.allowed, "reaching the limit exactly is allowed: {a:?}");
    assert_eq!(a.headroom_cents, Some(0));
    let a = guard::check(db, &GuardSettings::default(), &ask(&u0, 40_001), now).await.unwrap();
    assert_eq!((a.allowed, a.reason.map(|r| r.as_str())), (false, Some("daily_limit")));
    assert_eq!(a.headroom_cents, Some(40_000));
    assert_eq!(a.block_lifts_at, Some(today.end()));
    let next_day = guard::check(db, &GuardSettings::default(), &ask(&u0, 40_001), today.end()).await.unwrap();
    assert!(next_day.allowed, "the block lifts at the next local midnight");

    register(db, "card-1", &users[1], "card", NY, 100_000).await;
    registry::set_frozen(db, "card-1", true, now).await.unwrap();
    assert_eq!(
        guard::check(db, &GuardSettings::default(), &ask(&users[1], 1), now).await.unwrap().reason.map(|r| r.as_str()),
        Some("card_frozen")
    );
    let line = ImportLine::Destination(DestinationLine {
        destination_id: "card-2".into(),
        user_id: users[2].clone(),
        kind: DestinationKind::Card,
        bank_time_zone: NY.into(),
        daily_limit_cents: 100_000,
        frozen: None,
        push_enabled: Some(false),
        pull_enabled: None,
    });
    registry::import(db, &line, now).await.unwrap();
    assert_eq!(
        guard::check(db, &GuardSettings::default(), &ask(&users[2], 1), now).await.unwrap().reason.map(|r| r.as_str()),
        Some("card_not_push_enabled")
    );
    registry::block_user(db, &users[3], "fraud review", now).await.unwrap();
    let a = guard::check(db, &GuardSettings::default(), &ask(&users[3], 1), now).await.unwrap();
    assert_eq!((a.reason.map(|r| r.as_str()), a.detail.as_deref()), (Some("user_blocked"), Some("fraud review")));
    grant_store::set_user_status(db, &users[4], astra_worker::astra::UserStatus::Suspended, now).await.unwrap();
    assert_eq!(
        guard::check(db, &GuardSettings::default(), &ask(&users[4], 1), now).await.unwrap().reason.map(|r| r.as_str()),
        Some("user_suspended")
    );
    with_pool!(db, |p| sqlx::query("UPDATE grant_token SET status = 'needs_reauth' WHERE user_id = $1")
        .bind(&users[5])
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    assert_eq!(
        guard::check(db, &GuardSettings::default(), &ask(&users[5], 1), now).await.unwrap().reason.map(|r| r.as_str()),
        Some("reauthorization_required")
    );
    assert_eq!(
        guard::check(db, &GuardSettings::default(), &ask("nobody", 1), now).await.unwrap().reason.map(|r| r.as_str()),
        Some("reauthorization_required")
    );
    let other = GuardRequest { user_id: &users[0], amount: Cents(1), destination_id: Some("card-1") };
    assert_eq!(
        guard::check(db, &GuardSettings::default(), &other, now).await.unwrap().reason.map(|r| r.as_str()),
        Some("destination_mismatch")
    );
    let unknown = GuardRequest { user_id: &users[0], amount: Cents(1), destination_id: Some("acct-elsewhere") };
    let a = guard::check(db, &GuardSettings::default(), &unknown, now).await.unwrap();
    assert!(a.allowed && a.detail.unwrap().contains("not registered"));
}
both_backends!(
    the_guard_gives_every_reason_and_a_limit_is_reached_exactly,
    super::the_guard_gives_every_reason_and_a_limit_is_reached_exactly
);

async fn held_transfers_clear_after_the_bank_day_or_the_unfreeze_and_a_stuck_one_gets_one_followup(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        let job = s.jobs.iter_mut().find(|j| j.name == JobName::ReprocessingCheck).unwrap();
        if let JobParams::ReprocessingCheck(p) = &mut job.params {
            p.stuck_after = TimeDelta::hours(1);
        }
    })
    .await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 2, |_| TimeDelta::hours(1)).await;
    let now = Utc::now();
    {
        let mut s = rig.sandbox.state();
        let clears_at = s.bank_day_end(now);
        add_transfer(
            &mut s,
            "lim",
            &users[0],
            5000,
            now,
            TransferStatus::Pending,
            Some(Hold::DailyLimit { clears_at }),
        );
        s.add_card(CardRec {
            id: "c1".into(),
            user_id: users[1].clone(),
            status: "approved".into(),
            push_enabled: true,
            pull_enabled: true,
            frozen: true,
        });
        add_transfer(
            &mut s,
            "frz",
            &users[1],
            700,
            now,
            TransferStatus::Pending,
            Some(Hold::CardFrozen { card_id: "c1".into() }),
        );
    }
    force(&w, JobName::InboundVolume).await; // the mirror sees both held
    assert_eq!(mirror::watched(&w.store, None).await.unwrap().len(), 2);

    // Held for longer than stuck_after: one follow-up however many runs.
    with_pool!(&w.store, |p| sqlx::query("UPDATE transfer SET held_since = $1 WHERE id = 'frz'")
        .bind(now - TimeDelta::hours(5))
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    for _ in 0..3 {
        force(&w, JobName::ReprocessingCheck).await;
    }
    let stuck = outbox::store::list(&w.store, false, Some("transfer_stuck"), 10).await.unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].idempotency_key, "transfer_stuck:frz");

    // The next bank day (the sandbox's clock; its access tokens expire meanwhile, the worker refreshes).
    rig.sandbox.state().advance_clock(TimeDelta::hours(26));
    let s = force(&w, JobName::ReprocessingCheck).await;
    assert!(
        matches!(&s.reports[0].result, astra_worker::runner::SlotResult::Ran { details, .. } if details["cleared"] == 1),
        "{:?}",
        s.reports
    );
    let left: Vec<String> = mirror::watched(&w.store, None).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(left, vec!["frz".to_string()], "the limit case cleared; the frozen card still holds its transfer");
    rig.sandbox.state().set_card_frozen("c1", false);
    force(&w, JobName::ReprocessingCheck).await;
    assert!(mirror::watched(&w.store, None).await.unwrap().is_empty(), "cleared after the unfreeze");
}
both_backends!(
    held_transfers_clear_after_the_bank_day_or_the_unfreeze_and_a_stuck_one_gets_one_followup,
    super::held_transfers_clear_after_the_bank_day_or_the_unfreeze_and_a_stuck_one_gets_one_followup
);

async fn a_transfer_failing_after_landing_gets_its_followups_once_even_with_two_workers(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let (w1, w2) = (rig.worker(None).await, rig.worker(None).await);
    let users = rig.seed(&w1.store, 1, |_| TimeDelta::hours(1)).await;
    register(&w1.store, "dst", &users[0], "account", NY, 10_000_000).await;
    let line = ImportLine::AchCredit(AchCreditLine {
        routine_id: "rtn_a2c".into(),
        ach_credit_id: "ach-77".into(),
        addenda: "refund 77 addenda".into(),
    });
    registry::import(&w1.store, &line, Utc::now()).await.unwrap();
    {
        let mut s = rig.sandbox.state();
        for i in 0..20 {
            add_transfer(
                &mut s,
                &format!("a2c{i:02}"),
                &users[0],
                1000 + i,
                Utc::now() - TimeDelta::minutes(i),
                TransferStatus::Processed,
                None,
            );
        }
        // An account-to-card routine's transfer, whose ACH credit the fintech registered.
        let at = Utc::now() - TimeDelta::minutes(30);
        s.add_transfer(astra_worker::sandbox::TransferRec {
            id: "a2c-card".into(),
            user_id: users[0].clone(),
            routine_id: Some("rtn_a2c".into()),
            routine_type: Some("account-to-card".into()),
            client_correlation_id: None,
            source_id: Some("src".into()),
            destination_id: Some("dst".into()),
            amount: Cents(2500),
            payment_type: "debit".into(),
            initiated: at,
            updated: at,
            estimated_clearing_date: at.date_naive(),
            status: TransferStatus::Processed,
            hold: None,
            failure_reason: None,
        });
    }
    force(&w1, JobName::InboundVolume).await; // landed
    {
        let mut s = rig.sandbox.state();
        for i in 0..20 {
            s.set_transfer_status(&format!("a2c{i:02}"), TransferStatus::Failed, Some("R02".into()));
        }
        s.set_transfer_status("a2c-card", TransferStatus::Failed, Some("R02".into()));
    }
    let opts = RunOptions { force: true, ..Default::default() };
    let now = Utc::now();
    let (a, b2) = tokio::join!(
        run_job(&w1, JobName::ReprocessingCheck, &opts, now),
        run_job(&w2, JobName::InboundVolume, &opts, now)
    );
    a.unwrap();
    b2.unwrap();
    force(&w2, JobName::ReprocessingCheck).await;
    let removals = outbox::store::list(&w1.store, false, Some("remove_from_available_balance"), 100).await.unwrap();
    assert_eq!(removals.len(), 21, "one per failed transfer");
    let v: serde_json::Value =
        serde_json::from_str(&removals.iter().find(|m| m.idempotency_key.ends_with("a2c05")).unwrap().payload).unwrap();
    assert_eq!((v["amount_cents"].as_i64(), v["account_id"].as_str()), (Some(1005), Some("dst")));
    let cancels = outbox::store::list(&w1.store, false, Some("cancel_ach_credit"), 100).await.unwrap();
    assert_eq!(cancels.len(), 1, "only the account-to-card transfer cancels an ACH credit");
    let v: serde_json::Value = serde_json::from_str(&cancels[0].payload).unwrap();
    assert_eq!((v["ach_credit_id"].as_str(), v["addenda"].as_str()), (Some("ach-77"), Some("refund 77 addenda")));
    let left: i64 = with_pool!(&w1.store, |p| sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(total_cents), 0) AS BIGINT) FROM inbound_day WHERE destination_id = 'dst'"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!(left, 0, "failed transfers leave the counters");
}
both_backends!(
    a_transfer_failing_after_landing_gets_its_followups_once_even_with_two_workers,
    super::a_transfer_failing_after_landing_gets_its_followups_once_even_with_two_workers
);

async fn bad_items_are_skipped_or_left_uncounted_and_a_repeated_item_counts_once(b: Backend) {
    use astra_worker::astra::model::parse_transfer;
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let db = &w.store;
    register(db, "dst", "u1", "account", NY, 100_000).await;
    let item = |id: &str, dest: &str, amount: serde_json::Value| {
        serde_json::json!({"id": id, "amount": amount, "initiated": "2026-11-20T15:00:00.000000", "status": "processed",
                           "destination_id": dest})
    };
    // An amount that is not a number: that item is refused, naming it; the others parse.
    let bad = parse_transfer(item("t-bad", "dst", serde_json::json!("twelve"))).unwrap_err();
    assert!(bad.detail.contains("t-bad"), "{}", bad.detail);
    let good = parse_transfer(item("t-1", "dst", serde_json::json!(12.34))).unwrap();
    let stray = parse_transfer(item("t-2", "elsewhere", serde_json::json!(5.0))).unwrap();
    let now = Utc::now();
    // A page that repeats an item: counted once.
    for t in [&good, &good, &stray, &good] {
        mirror::upsert(db, "u1", t, now).await.unwrap();
    }
    let day = "2026-11-20";
    assert_eq!(counters::counter(db, "dst", day).await.unwrap(), Some((1234, 1)));
    // A transfer to an unregistered destination is mirrored but counted nowhere.
    assert_eq!(counters::counter(db, "elsewhere", day).await.unwrap(), None);
    assert_eq!(count(db, "SELECT COUNT(*) FROM transfer").await, 2);
    assert_eq!(count(db, "SELECT COUNT(*) FROM transfer WHERE counted").await, 1);
}
both_backends!(
    bad_items_are_skipped_or_left_uncounted_and_a_repeated_item_counts_once,
    super::bad_items_are_skipped_or_left_uncounted_and_a_repeated_item_counts_once
);

/// An answer older than the one stored (by Astra's `updated`) changes nothing: a webhook's slow read that comes
/// back after a newer poll does not un-fail a transfer or count it again.
async fn an_answer_older_than_the_stored_one_changes_nothing(b: Backend) {
    let rig = TestApp::new(b, Default::default(), |_| {}).await;
    let store = rig.db.store().await;
    register(&store, "dst", "u1", "account", NY, 250_000).await;
    let at = Utc::now() - TimeDelta::hours(1);
    let answer = |status: &str, updated: DateTime<Utc>| {
        astra_worker::astra::model::parse_transfer(serde_json::json!({
            "id": "t-1", "amount": 100.0, "destination_id": "dst", "source_id": "src", "status": status,
            "initiated": at.to_rfc3339(), "updated": updated.to_rfc3339(),
            "estimated_clearing_date": at.to_rfc3339(),
        }))
        .unwrap()
    };
    let day = astra_worker::domain::BankDay::of(NY.parse().unwrap(), at).key();
    let counted = async || counters::counter(&store, "dst", &day).await.unwrap();
    mirror::upsert(&store, "u1", &answer("processed", at), Utc::now()).await.unwrap();
    let failed =
        mirror::upsert(&store, "u1", &answer("failed", at + TimeDelta::minutes(30)), Utc::now()).await.unwrap();
    assert_eq!(failed.followups, 1, "a failure after landing raises its follow-up");
    let late =
        mirror::upsert(&store, "u1", &answer("processed", at + TimeDelta::minutes(10)), Utc::now()).await.unwrap();
    assert!(!late.changed && !late.new, "the older answer was not applied: {late:?}");
    assert_eq!(counted().await.map(|c| c.0), Some(0), "the failed transfer stays uncounted");
    let again = mirror::upsert(&store, "u1", &answer("failed", at + TimeDelta::minutes(30)), Utc::now()).await.unwrap();
    assert_eq!(again.followups, 0, "nothing raised twice");
}
both_backends!(
    an_answer_older_than_the_stored_one_changes_nothing,
    super::an_answer_older_than_the_stored_one_changes_nothing
);
