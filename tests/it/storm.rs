//! The fault storm, on both stores: Astra answers in 20–50 ms, fails 20 % of calls with 5xx, hangs 3 % past the
//! request timeout, loses 2 % of refresh answers after applying them, spoils 5 % of bodies, and rate-limits
//! (429) whatever passes 60 requests a second, while two workers rotate and mirror the same grants and
//! transfers at once and the backend asks for tokens. Then the storm ends and the jobs run until they succeed.
//! No grant is declared dead but by a lost answer (at most as many as Astra spoiled), every other stored pair
//! is Astra's live one, the daily recompute never finds a counter the mirror left wrong, every day's counter of
//! a user whose grant lives is exact to the cent (the guard asks a
//! user whose grant was lost to authorize again), and each transfer that landed and then failed
//! gets its follow-up exactly once.

use std::{sync::Arc, time::Duration};

use astra_worker::{
    astra::TransferStatus,
    config::{GuardSettings, JobName},
    domain::{BankDay, Cents},
    failure::Status,
    outbox,
    reconcile::{
        counters,
        guard::{self, DenyReason, GuardRequest},
        registry::{self, DestinationKind, DestinationLine, ImportLine},
    },
    runner::{RunOptions, run_job},
    sandbox::{Faults, SandboxSettings, TransferRec},
    tokens,
};
use chrono::{TimeDelta, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    astra::transfer_rec,
    both_backends,
    helpers::{Backend, TestApp},
    with_pool,
};

const USERS: usize = 120;
const NY: &str = "America/New_York";

fn storm() -> Faults {
    Faults {
        latency_ms: 20,
        latency_jitter_ms: 30,
        error_rate: 0.2,
        hang_rate: 0.03,
        hang_ms: 1_500,
        lost_refresh_rate: 0.02,
        malformed_rate: 0.05,
        ..Default::default()
    }
}

/// The mirror moved every counter right as it went: the daily recompute found nothing to fix.
fn no_drift(job: JobName, s: &astra_worker::runner::RunSummary) {
    for r in &s.reports {
        if let astra_worker::runner::SlotResult::Ran { details, .. } = &r.result {
            assert!(
                details.get("drift_found").is_none(),
                "{job:?} found a counter the mirror had left wrong: {details}"
            );
        }
    }
}

async fn the_storm_kills_no_grant_and_miscounts_no_cent(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings { seed: 23, rate_limit: Some(60), ..Default::default() }, |s| {
        s.astra.requests_per_second = 200;
        s.astra.max_retries = 2;
        s.runner.claim_lease = TimeDelta::seconds(5);
        // The stored access tokens serve the calm first mirror; rotation then refreshes every grant in the storm.
        s.astra.access_margin = TimeDelta::minutes(5);
    })
    .await;
    let (w1, w2) = (Arc::new(rig.worker(None).await), Arc::new(rig.worker(None).await));
    let users = rig.seed(&w1.store, USERS, |_| TimeDelta::days(8)).await;
    let now = Utc::now();
    let today = BankDay::of(NY.parse().unwrap(), now);
    let mut rng = StdRng::seed_from_u64(41);
    let mut expected = vec![0i64; USERS];
    let mut failing = Vec::new();
    {
        let mut s = rig.sandbox.state();
        for (i, u) in users.iter().enumerate() {
            for k in 0..4 {
                let cents = rng.random_range(1..=250_000);
                let at = (now - TimeDelta::minutes(rng.random_range(1..=90))).max(today.start());
                let id = format!("t{i:03}-{k}");
                s.add_transfer(TransferRec {
                    destination_id: Some(format!("d-{i}")),
                    ..transfer_rec(&id, u, cents, at, TransferStatus::Processed)
                });
                // One in ten fails after it landed: out of the counter, one follow-up.
                if rng.random_bool(0.1) {
                    failing.push(id);
                } else {
                    expected[i] += cents;
                }
            }
        }
    }
    for (i, u) in users.iter().enumerate() {
        let line = ImportLine::Destination(DestinationLine {
            destination_id: format!("d-{i}"),
            user_id: u.clone(),
            kind: DestinationKind::parse("account").unwrap(),
            bank_time_zone: NY.into(),
            daily_limit_cents: 100_000_000,
            frozen: None,
            push_enabled: None,
            pull_enabled: None,
        });
        registry::import(&w1.store, &line, now).await.unwrap();
    }
    let force = RunOptions { force: true, ..Default::default() };
    rig.sandbox.set_faults(storm());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backend = {
        let (w, stop, users) = (w1.clone(), stop.clone(), users.clone());
        tokio::spawn(async move {
            let svc = w.services().unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tokens::access_token(&w.store, &svc.tokens, &users[i % users.len()]).await;
                i += 7;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let round = || async {
        let jobs = [JobName::TokenRotation, JobName::InboundVolume, JobName::ReprocessingCheck];
        let one = |w: Arc<astra_worker::app::Worker>| {
            let force = force.clone();
            async move {
                for job in jobs {
                    no_drift(job, &run_job(&w, job, &force, Utc::now()).await.unwrap());
                }
            }
        };
        tokio::join!(one(w1.clone()), one(w2.clone()));
    };
    round().await;
    // The transfers that landed (were mirrored) and then fail: each needs one follow-up.
    let mirrored: Vec<String> =
        with_pool!(&w1.store, |p| sqlx::query_scalar("SELECT id FROM transfer").fetch_all(p).await.unwrap());
    let landed: Vec<&String> = failing.iter().filter(|id| mirrored.contains(id)).collect();
    {
        let mut s = rig.sandbox.state();
        for id in &failing {
            s.set_transfer_status(id, TransferStatus::Failed, Some("R01".into()));
        }
    }
    round().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    backend.await.unwrap();
    let stormed: Vec<u16> = rig.sandbox.state().calls.iter().map(|c| c.status).collect();
    assert!(stormed.iter().filter(|s| **s >= 500).count() > 30, "Astra failed often");
    assert!(stormed.contains(&429), "and rate-limited");

    // The storm ends; the jobs run until they succeed (leases of refreshes abandoned mid-storm lapse meanwhile).
    rig.sandbox.set_faults(Faults::default());
    for job in [JobName::TokenRotation, JobName::InboundVolume, JobName::ReprocessingCheck] {
        // Bounded by the longest a lease taken in the storm can last, and a minute more.
        let leases = tokens::refresh_worst_case(&w2.settings, &w2.store).to_std().unwrap();
        let deadline = std::time::Instant::now() + leases + Duration::from_secs(60);
        loop {
            let s = run_job(&w2, job, &force, Utc::now()).await.unwrap();
            no_drift(job, &s);
            if s.status() == Status::Ok {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{job:?} still ends {:?} after the storm", s.status());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let episodes: Vec<(String, String)> =
        with_pool!(&w1.store, |p| sqlx::query_as("SELECT user_id, reason FROM reauth_episode")
            .fetch_all(p)
            .await
            .unwrap());
    let spoiled = rig.sandbox.state().spoiled_token_answers.clone();
    eprintln!(
        "storm: {} calls, {} token answers spoiled, {} grants lost",
        stormed.len(),
        spoiled.len(),
        episodes.len()
    );
    // A spoiled answer is recorded as lost, whatever its retries met afterwards (a 429, a 5xx).
    assert!(episodes.iter().all(|e| e.1 == "lost_rotation"), "no other reason: {episodes:?}");
    for (user, _) in &episodes {
        assert!(spoiled.contains(user), "{user} was lost though no answer of its was spoiled: {episodes:?}");
    }
    for u in &users {
        let lost = episodes.iter().any(|e| &e.0 == u);
        assert!(lost || rig.stored_is_live(&w1.store, u).await, "{u}: healthy, or flagged lost_rotation");
    }
    for (i, want) in expected.iter().enumerate() {
        let got = counters::counter(&w1.store, &format!("d-{i}"), &today.key()).await.unwrap().map(|c| c.0);
        if episodes.iter().any(|e| e.0 == users[i]) {
            // Its transfers cannot be read until the user authorizes again; the guard does not vouch for them.
            let ask = GuardRequest { user_id: &users[i], amount: Cents(1), destination_id: None };
            let a = guard::check(&w1.store, &GuardSettings::default(), &ask, Utc::now()).await.unwrap();
            assert_eq!(a.reason, Some(DenyReason::ReauthorizationRequired), "d-{i}: {a:?}");
            continue;
        }
        assert_eq!(got.unwrap_or(0), *want, "d-{i}: the day's counter to the cent");
    }
    let removals = outbox::store::list(&w1.store, false, Some("remove_from_available_balance"), 1_000).await.unwrap();
    let mut keys: Vec<_> = removals.iter().map(|m| m.idempotency_key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), removals.len(), "each follow-up once");
    for id in &landed {
        assert!(keys.iter().any(|k| k.ends_with(id.as_str())), "{id} landed, then failed: it has its follow-up");
    }
    for k in &keys {
        assert!(failing.iter().any(|id| k.ends_with(id.as_str())), "{k}: a follow-up only for a failed transfer");
    }
    eprintln!("storm: {} transfers landed then failed, {} follow-ups", landed.len(), keys.len());
}
both_backends!(the_storm_kills_no_grant_and_miscounts_no_cent, super::the_storm_kills_no_grant_and_miscounts_no_cent);
