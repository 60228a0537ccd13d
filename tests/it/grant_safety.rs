//! Grants under races and faults, on both stores: a store failing at the commit of a pair Astra issued, one
//! refresh failing while its siblings are in flight, an import racing an in-flight refresh, "newer" by when
//! Astra issued a pair, a probe meeting a 429, a keyring that cannot open the store, one unreadable row among
//! many, the limiter's pace and the shared budget.

use std::time::Duration;

use astra_worker::{
    app::Worker,
    astra::Call,
    config::{JobName, JobParams},
    runner::{RunOptions, SlotResult, run_job},
    sandbox::{Faults, SandboxSettings},
    store::{Store, faults, ledger::Outcome},
    tokens::{self, ImportLine, Imported, Keyring, Refreshed, store as grant_store},
};
use chrono::{TimeDelta, Utc};
use secrecy::SecretString;

use crate::{
    both_backends,
    helpers::{Backend, KEY_B, TestApp, b64, keyring},
    with_pool,
};

/// Runs the rotation's latest slot (again, forced), and what it came to.
async fn rotate(w: &Worker) -> (Outcome, i64, i64, serde_json::Value) {
    let now = Utc::now();
    let slot = w.settings.job(JobName::TokenRotation).unwrap().schedule.latest_at_or_before(now);
    let opts = RunOptions { force: true, slot, ..Default::default() };
    let s = run_job(w, JobName::TokenRotation, &opts, now).await.unwrap();
    match &s.reports.last().unwrap().result {
        SlotResult::Ran { outcome, counts, details, .. } => {
            (*outcome, counts.processed, counts.failed, details.clone())
        }
        other => panic!("the rotation did not run: {other:?}"),
    }
}

async fn scalar(store: &Store, sql: &'static str) -> i64 {
    with_pool!(store, |p| sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await.unwrap())
}

fn line(user: &str, access: &str, refresh: &str, expires: Option<chrono::DateTime<Utc>>) -> ImportLine {
    ImportLine {
        user_id: user.into(),
        access_token: SecretString::from(access.to_string()),
        refresh_token: SecretString::from(refresh.to_string()),
        refresh_token_issued_at: None,
        refresh_token_expires_at: Some(expires.unwrap_or_else(|| Utc::now() + TimeDelta::days(9)).fixed_offset()),
        access_token_expires_at: None,
        phone: None,
    }
}

fn no_status_reads(s: &mut astra_worker::config::Settings) {
    for j in &mut s.jobs {
        if let JobParams::TokenRotation(p) = &mut j.params {
            p.read_user_status = false;
        }
    }
}

async fn a_store_failing_at_the_commit_keeps_the_pair_astra_issued(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings { honor_idempotency_key: true, ..Default::default() }, |s| {
        s.runner.grace_period = Duration::from_secs(2);
        no_status_reads(s);
    })
    .await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 3, |_| TimeDelta::days(8)).await;

    // Two failed commits: retried, every pair stored.
    faults::fail_next(&w.store, faults::PUT_ROTATED, 2);
    let (outcome, processed, _, _) = rotate(&w).await;
    assert_eq!((outcome, processed), (Outcome::Succeeded, 3));
    for u in &users {
        assert!(rig.stored_is_live(&w.store, u).await, "{u}: the pair Astra issued is stored after the retry");
    }

    // A store that keeps failing past the retry window: the run is partial, the intent stays open (the grant is
    // probed next run), nothing is declared dead; the probe, whose Idempotency-Key Astra honours, stores the pair.
    with_pool!(&w.store, |p| sqlx::query("UPDATE grant_token SET refresh_expires_at = $1")
        .bind(Utc::now() + TimeDelta::days(1))
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    faults::fail_next(&w.store, faults::PUT_ROTATED, 1_000);
    let (outcome, _, failed, _) = rotate(&w).await;
    assert_eq!((outcome, failed), (Outcome::Partial, 3), "a pair that could not be stored is not silent");
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await, 3);
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM grant_token WHERE status = 'active'").await, 3);
    faults::fail_next(&w.store, faults::PUT_ROTATED, 0);
    let (_, _, failed, details) = rotate(&w).await;
    assert_eq!(failed, 0, "{details}");
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM reauth_episode").await, 0, "no grant was declared dead");
    for u in &users {
        assert!(rig.stored_is_live(&w.store, u).await, "{u}: the probe recovered the pair Astra issued");
    }
}
both_backends!(
    a_store_failing_at_the_commit_keeps_the_pair_astra_issued,
    super::a_store_failing_at_the_commit_keeps_the_pair_astra_issued
);

async fn one_refresh_failing_mid_batch_leaves_its_siblings_to_commit(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    rig.sandbox.set_faults(Faults { latency_ms: 200, ..Default::default() });
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 40, |_| TimeDelta::days(8)).await;
    // The first refresh to end meets a store error after Astra answered (storing the user's status read after
    // it), while its siblings are in flight.
    faults::fail_next(&w.store, faults::SET_USER_STATUS, 1);
    let (outcome, processed, failed, details) = rotate(&w).await;
    assert_eq!((outcome, processed, failed), (Outcome::Partial, 39, 1), "{details}");
    assert!(details["peak_in_flight"].as_i64().unwrap() > 1, "siblings were in flight: {details}");
    assert_eq!(rig.sandbox.state().calls.iter().filter(|c| c.path == "/v1/oauth/token").count(), 40);
    for u in &users {
        assert!(rig.stored_is_live(&w.store, u).await, "{u}: every sibling committed the pair Astra issued");
    }
}
both_backends!(
    one_refresh_failing_mid_batch_leaves_its_siblings_to_commit,
    super::one_refresh_failing_mid_batch_leaves_its_siblings_to_commit
);

/// Each rotation records the fingerprint of the refresh token it stored; a rotation run forgets those stored
/// more than 30 days ago (well past a refresh token's life) and keeps the rest.
async fn a_rotation_run_forgets_fingerprints_past_their_keeping(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), no_status_reads).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 3, |_| TimeDelta::days(8)).await;
    let before = scalar(&w.store, "SELECT COUNT(*) FROM grant_fingerprint").await;
    with_pool!(&w.store, |p| sqlx::query(
        "INSERT INTO grant_fingerprint (user_id, fingerprint, stored_at) VALUES ($1, 'old', $2), ($1, 'recent', $3)"
    )
    .bind(&users[0])
    .bind(Utc::now() - TimeDelta::days(31))
    .bind(Utc::now() - TimeDelta::days(29))
    .execute(p)
    .await
    .map(|_| ())
    .unwrap());
    let (outcome, processed, _, details) = rotate(&w).await;
    assert_eq!((outcome, processed), (Outcome::Succeeded, 3), "{details}");
    assert_eq!(details["fingerprints_forgotten"], 1, "{details}");
    let kept: Vec<String> = with_pool!(&w.store, |p| sqlx::query_scalar(
        "SELECT fingerprint FROM grant_fingerprint WHERE fingerprint IN ('old', 'recent')"
    )
    .fetch_all(p)
    .await
    .unwrap());
    assert_eq!(kept, vec!["recent".to_string()]);
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM grant_fingerprint").await, before + 3 + 1, "one per rotation");
}
both_backends!(
    a_rotation_run_forgets_fingerprints_past_their_keeping,
    super::a_rotation_run_forgets_fingerprints_past_their_keeping
);

async fn an_import_racing_an_in_flight_refresh_is_not_overwritten(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        s.astra.request_timeout = Duration::from_secs(10);
        no_status_reads(s);
    })
    .await;
    rig.sandbox.set_faults(Faults { late_answer_ms: 1_500, late_answer_min_ms: 1_500, ..Default::default() });
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::days(8)).await;
    let u = users[0].clone();
    let rotation = {
        let w = rig.worker(None).await;
        tokio::spawn(async move { rotate(&w).await })
    };
    // Astra applied the rotation; its answer is still on the way when the fintech imports a new grant.
    while rig.refreshes(&u) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = rig.sandbox.state().issue_grant(&u, Utc::now());
    let l = line(&u, &fresh.access_token, &fresh.refresh_token, None);
    assert!(matches!(tokens::import(&w.store, &keyring(), &l, Utc::now()).await.unwrap(), Imported::Replaced { .. }));
    let (_, _, _, details) = rotation.await.unwrap();
    assert_eq!(details["adopted"], 1, "the refresh's write was fenced off: {details}");
    assert!(rig.stored_is_live(&w.store, &u).await, "the imported grant stands");
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM reauth_episode").await, 0);
}
both_backends!(
    an_import_racing_an_in_flight_refresh_is_not_overwritten,
    super::an_import_racing_an_in_flight_refresh_is_not_overwritten
);

async fn import_and_refresh_agree_on_newer_and_never_revive_a_dead_pair(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), no_status_reads).await;
    let w = rig.worker(None).await;
    let svc = w.services().unwrap();
    let u = rig.seed(&w.store, 1, |_| TimeDelta::days(8)).await.remove(0);
    let first = rig.sandbox.state().grant_info(&u).unwrap();
    rotate(&w).await;
    let rotated = rig.sandbox.state().grant_info(&u).unwrap();

    // The original file again, even with an expiry that looks newer: a pair the grant held and replaced.
    let old = line(&u, &first.access_token, &first.refresh_token, Some(Utc::now() + TimeDelta::days(10)));
    assert_eq!(tokens::import(&w.store, &keyring(), &old, Utc::now()).await.unwrap(), Imported::Stale);

    // A new grant the fintech obtained just after the rotation, its expiry written conservatively (earlier
    // than the rotated pair's): newer by when it was issued, so accepted.
    let fresh = rig.sandbox.state().issue_grant(&u, Utc::now());
    let l = line(&u, &fresh.access_token, &fresh.refresh_token, Some(Utc::now() + TimeDelta::days(9)));
    assert!(matches!(tokens::import(&w.store, &keyring(), &l, Utc::now()).await.unwrap(), Imported::Replaced { .. }));
    assert!(rig.stored_is_live(&w.store, &u).await);
    // One issued before the stored pair is refused.
    let mut earlier = line(&u, "at_earlier", "rt_earlier", None);
    earlier.refresh_token_expires_at = None;
    earlier.refresh_token_issued_at = Some((Utc::now() - TimeDelta::hours(1)).fixed_offset());
    assert_eq!(tokens::import(&w.store, &keyring(), &earlier, Utc::now()).await.unwrap(), Imported::Stale);

    // The grant dies at Astra; neither the pair that died nor any older one revives it.
    rig.sandbox.state().revoke_grant(&u);
    let now = Utc::now();
    assert!(grant_store::try_lease(&w.store, &u, "test", now + TimeDelta::minutes(1), now).await.unwrap());
    let r = tokens::refresh_leased(&w.store, &svc.tokens, Call::default(), &u, "test", None).await.unwrap();
    assert!(matches!(r, Refreshed::Dead { .. }), "{r:?}");
    for (a, r) in [(&fresh.access_token, &fresh.refresh_token), (&rotated.access_token, &rotated.refresh_token)] {
        let l = line(&u, a, r, Some(Utc::now() + TimeDelta::days(10)));
        assert_eq!(tokens::import(&w.store, &keyring(), &l, Utc::now()).await.unwrap(), Imported::Stale);
    }
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM grant_token WHERE status = 'needs_reauth'").await, 1);
    // A new authorization repairs it and closes the episode.
    let new = rig.sandbox.state().issue_grant(&u, Utc::now());
    let l = line(&u, &new.access_token, &new.refresh_token, None);
    assert!(matches!(tokens::import(&w.store, &keyring(), &l, Utc::now()).await.unwrap(), Imported::Replaced { .. }));
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM reauth_episode WHERE closed_at IS NULL").await, 0);
}
both_backends!(
    import_and_refresh_agree_on_newer_and_never_revive_a_dead_pair,
    super::import_and_refresh_agree_on_newer_and_never_revive_a_dead_pair
);

async fn a_probe_meeting_a_429_leaves_the_intent_open_and_the_grant_alive(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings { retry_after_secs: 0, ..Default::default() }, |s| {
        s.astra.max_retries = 0;
        no_status_reads(s);
    })
    .await;
    let w = rig.worker(None).await;
    let u = rig.seed(&w.store, 1, |_| TimeDelta::days(8)).await.remove(0);
    // The rotation's answer is lost: its intent stays open.
    rig.sandbox.set_faults(Faults { lost_refresh_rate: 1.0, hang_ms: 10, ..Default::default() });
    rotate(&w).await;
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await, 1);
    // The probe meets only 429s: it proves nothing.
    rig.sandbox.set_faults(Faults::default());
    rig.sandbox.state().settings.rate_limit = Some(0);
    let (outcome, _, failed, _) = rotate(&w).await;
    assert!(outcome == Outcome::Partial && failed >= 1, "{outcome:?} {failed}");
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await, 1);
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM grant_token WHERE status = 'active'").await, 1);
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM reauth_episode").await, 0, "not declared dead on a 429");
    assert!(rig.refreshes(&u) == 1, "the probe never reached the token endpoint");
}
both_backends!(
    a_probe_meeting_a_429_leaves_the_intent_open_and_the_grant_alive,
    super::a_probe_meeting_a_429_leaves_the_intent_open_and_the_grant_alive
);

/// A refresh whose first attempt was lost (applied, answered 504) and whose retry met only 429s ends unknown, not
/// failed: its intent stays open, so the next refresh is a probe. Astra not honouring the intent's
/// `Idempotency-Key`, the probe meets `invalid_grant` and the grant is recorded as `lost_rotation` (never
/// `refresh_rejected`); honouring it, the probe gets the lost pair back and the grant lives.
async fn a_lost_answer_whose_retry_meets_a_429_is_probed_not_rejected(b: Backend) {
    for honour in [false, true] {
        let settings = SandboxSettings { retry_after_secs: 0, honor_idempotency_key: honour, ..Default::default() };
        let rig = TestApp::new(b, settings, |s| {
            s.astra.max_retries = 1;
            no_status_reads(s);
        })
        .await;
        let w = rig.worker(None).await;
        let u = rig.seed(&w.store, 1, |_| TimeDelta::days(8)).await.remove(0);
        rig.sandbox.set_faults(Faults { lost_refresh_rate: 1.0, hang_ms: 1500, ..Default::default() });
        // Once Astra has applied the refresh (and is sitting on its answer), every further request is a 429.
        let limit_after_the_loss = async {
            for _ in 0..2000 {
                if !rig.sandbox.state().spoiled_token_answers.is_empty() {
                    let mut st = rig.sandbox.state();
                    st.settings.rate_limit = Some(0);
                    st.settings.faults = Faults::default();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("the sandbox never applied the refresh");
        };
        let ((outcome, _, failed, _), ()) = tokio::join!(rotate(&w), limit_after_the_loss);
        assert!(outcome == Outcome::Partial && failed == 1, "{outcome:?} {failed}");
        assert_eq!(rig.refreshes(&u), 1, "Astra applied the first attempt");
        assert_eq!(
            scalar(&w.store, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await,
            1,
            "the outcome is unknown: the intent stays open"
        );
        rig.sandbox.state().settings.rate_limit = None;
        rotate(&w).await;
        let reasons: Vec<String> = with_pool!(&w.store, |p| sqlx::query_scalar("SELECT reason FROM reauth_episode")
            .fetch_all(p)
            .await
            .unwrap());
        if honour {
            assert!(reasons.is_empty(), "{reasons:?}");
            assert!(rig.stored_is_live(&w.store, &u).await, "the probe got the lost pair back");
        } else {
            assert_eq!(reasons, vec!["lost_rotation".to_string()]);
        }
    }
}
both_backends!(
    a_lost_answer_whose_retry_meets_a_429_is_probed_not_rejected,
    super::a_lost_answer_whose_retry_meets_a_429_is_probed_not_rejected
);

/// Another writer holds every grant's row (PostgreSQL) or the database's write lock (SQLite) for longer than a
/// refresh may spend on the store before its call (`tokens::BEFORE_THE_CALL`), from when this returns until
/// the handle ends; a refresh's first statement, its lease's renewal, waits for it.
async fn blocking_writes(store: &Store) -> tokio::task::JoinHandle<()> {
    let lock: &[&str] = match store {
        Store::Sqlite(_) => &["BEGIN IMMEDIATE"],
        Store::Postgres(_) => &["BEGIN", "SELECT 1 FROM grant_token FOR UPDATE"],
    };
    let held = tokens::BEFORE_THE_CALL.to_std().unwrap() + Duration::from_secs(1);
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let store = store.clone();
    let blocker = tokio::spawn(async move {
        with_pool!(&store, |p| {
            let mut c = p.acquire().await.unwrap();
            for sql in lock {
                sqlx::query(*sql).execute(&mut *c).await.unwrap();
            }
            locked.send(()).unwrap();
            tokio::time::sleep(held).await;
            sqlx::query("ROLLBACK").execute(&mut *c).await.unwrap();
        })
    });
    is_locked.await.unwrap();
    blocker
}

/// A refresh whose store was too slow to start it (renewing its lease waited past `tokens::BEFORE_THE_CALL`)
/// does not call Astra, since what is left of its lease would not cover the call and storing its answer (a
/// lease that lapsed meanwhile would let another process probe the grant as if this one had died). Its intent
/// is closed, the lease given back, and the next refresh rotates the grant.
async fn a_refresh_its_store_was_too_slow_to_start_does_not_call_astra(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        no_status_reads(s);
        // The lease is then what one refresh can take at worst, no more.
        s.runner.claim_lease = TimeDelta::seconds(5);
    })
    .await;
    let w = rig.worker(None).await;
    let svc = w.services().unwrap();
    let u = rig.seed(&w.store, 1, |_| TimeDelta::days(8)).await.remove(0);
    let lease = || async {
        let now = Utc::now();
        assert!(grant_store::try_lease(&w.store, &u, "me", now + TimeDelta::minutes(1), now).await.unwrap());
    };
    let refresh = || tokens::refresh_leased(&w.store, &svc.tokens, Call::default(), &u, "me", None);
    lease().await;
    let blocker = blocking_writes(&w.store).await;
    let r = refresh().await;
    blocker.await.unwrap();
    let r = r.unwrap();
    assert!(matches!(&r, Refreshed::Failed { detail } if detail.contains("too slow")), "{r:?}");
    assert_eq!(rig.refreshes(&u), 0, "Astra was not called");
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await, 0);
    lease().await;
    let r = refresh().await.unwrap();
    assert!(matches!(r, Refreshed::Rotated { .. }), "{r:?}");
    assert_eq!(rig.refreshes(&u), 1);
    assert!(rig.stored_is_live(&w.store, &u).await);
}
both_backends!(
    a_refresh_its_store_was_too_slow_to_start_does_not_call_astra,
    super::a_refresh_its_store_was_too_slow_to_start_does_not_call_astra
);

/// A probe (an intent left open by a refresh whose answer was lost) that its store was too slow to start
/// calls nothing and keeps the intent open: the outcome it stands for is still unknown, and the grant stays
/// alive for the next probe.
async fn a_probe_its_store_was_too_slow_to_start_keeps_its_intent_open(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        s.astra.max_retries = 0;
        s.runner.claim_lease = TimeDelta::seconds(5);
        no_status_reads(s);
    })
    .await;
    let w = rig.worker(None).await;
    let svc = w.services().unwrap();
    let u = rig.seed(&w.store, 1, |_| TimeDelta::days(8)).await.remove(0);
    rig.sandbox.set_faults(Faults { lost_refresh_rate: 1.0, hang_ms: 10, ..Default::default() });
    rotate(&w).await;
    rig.sandbox.set_faults(Faults::default());
    let open = "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL";
    assert_eq!(scalar(&w.store, open).await, 1, "the lost answer's intent is open");
    let now = Utc::now();
    assert!(grant_store::try_lease(&w.store, &u, "me", now + TimeDelta::minutes(1), now).await.unwrap());
    let blocker = blocking_writes(&w.store).await;
    let r = tokens::refresh_leased(&w.store, &svc.tokens, Call::default(), &u, "me", None).await;
    blocker.await.unwrap();
    let r = r.unwrap();
    assert!(matches!(&r, Refreshed::Failed { detail } if detail.contains("too slow")), "{r:?}");
    assert_eq!(rig.refreshes(&u), 1, "only the lost refresh reached Astra");
    assert_eq!(scalar(&w.store, open).await, 1, "the intent is still open for the next probe");
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM grant_token WHERE status = 'active'").await, 1);
    assert_eq!(scalar(&w.store, "SELECT COUNT(*) FROM reauth_episode").await, 0);
}
both_backends!(
    a_probe_its_store_was_too_slow_to_start_keeps_its_intent_open,
    super::a_probe_its_store_was_too_slow_to_start_keeps_its_intent_open
);

/// A caller that found the grant in need of a refresh, and gets its lease only after another process refreshed
/// it, adopts that pair: a second refresh would revoke the access token the other process is using.
async fn a_refresh_decided_on_a_version_already_refreshed_adopts_it(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), no_status_reads).await;
    let w = rig.worker(None).await;
    let svc = w.services().unwrap();
    let u = rig.seed(&w.store, 1, |_| TimeDelta::days(8)).await.remove(0);
    let seen = grant_store::load(&w.store, &u).await.unwrap().unwrap().token_version;
    let lease = |owner: &'static str| {
        let (store, u) = (w.store.clone(), u.clone());
        async move {
            let now = Utc::now();
            assert!(grant_store::try_lease(&store, &u, owner, now + TimeDelta::minutes(1), now).await.unwrap());
        }
    };
    lease("other").await;
    let r = tokens::refresh_leased(&w.store, &svc.tokens, Call::default(), &u, "other", Some(seen)).await.unwrap();
    assert!(matches!(r, Refreshed::Rotated { .. }), "{r:?}");
    lease("late").await;
    let r = tokens::refresh_leased(&w.store, &svc.tokens, Call::default(), &u, "late", Some(seen)).await.unwrap();
    assert!(matches!(r, Refreshed::Adopted), "{r:?}");
    assert_eq!(rig.refreshes(&u), 1, "refreshed once");
    assert!(rig.stored_is_live(&w.store, &u).await);
}
both_backends!(
    a_refresh_decided_on_a_version_already_refreshed_adopts_it,
    super::a_refresh_decided_on_a_version_already_refreshed_adopts_it
);

async fn a_wrong_key_is_refused_and_one_unreadable_row_is_flagged_skipped_and_repaired(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), no_status_reads).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 100, |_| TimeDelta::days(8)).await;

    // A keyring that cannot open what is stored is refused (configuration, 78) before anything is written.
    let wrong = Keyring::from_base64(&b64(&KEY_B), &[]).unwrap();
    let e = tokens::check_keyring(&w.store, &wrong).await.unwrap_err();
    assert_eq!(astra_worker::exit::classify(&e), astra_worker::failure::Status::Config);
    assert!(format!("{e:#}").contains("Nothing was written"), "{e:#}");
    assert!(
        tokens::check_keyring(&w.store, &Keyring::from_base64(&b64(&KEY_B), &[&b64(&crate::helpers::KEY_A)]).unwrap())
            .await
            .is_ok()
    );

    // One row's ciphertext is damaged: 99 rotate, the run is partial, the row is flagged.
    let bad = users[37].clone();
    with_pool!(&w.store, |p| sqlx::query(
        "UPDATE grant_token SET refresh_ct = (SELECT refresh_ct FROM grant_token WHERE user_id = $1) WHERE user_id = $2"
    )
    .bind(&users[0])
    .bind(&bad)
    .execute(p)
    .await
    .map(|_| ())
    .unwrap());
    let (outcome, processed, failed, details) = rotate(&w).await;
    assert_eq!((outcome, processed, failed), (Outcome::Partial, 99, 1), "{details}");
    assert_eq!(details["unreadable"], 1);
    assert_eq!(grant_store::count_unreadable(&w.store).await.unwrap(), 1);
    let listed = grant_store::list(&w.store, None, 1000).await.unwrap();
    assert!(listed.iter().any(|g| g.user_id == bad && g.unreadable.as_deref().is_some_and(|d| d.contains("decrypt"))));
    for u in users.iter().filter(|u| **u != bad) {
        assert!(rig.stored_is_live(&w.store, u).await, "{u}");
    }

    // The fintech imports that user again with the right key: repaired, and rotated next run.
    let live = rig.sandbox.state().grant_info(&bad).unwrap();
    let l = line(&bad, &live.access_token, &live.refresh_token, Some(live.refresh_expires_at));
    assert!(matches!(tokens::import(&w.store, &keyring(), &l, Utc::now()).await.unwrap(), Imported::Replaced { .. }));
    assert_eq!(grant_store::count_unreadable(&w.store).await.unwrap(), 0);
    let (outcome, processed, _, _) = rotate(&w).await;
    assert_eq!((outcome, processed), (Outcome::Succeeded, 1));
    assert!(rig.stored_is_live(&w.store, &bad).await);
}
both_backends!(
    a_wrong_key_is_refused_and_one_unreadable_row_is_flagged_skipped_and_repaired,
    super::a_wrong_key_is_refused_and_one_unreadable_row_is_flagged_skipped_and_repaired
);

async fn rotation_keeps_more_in_flight_as_astra_slows_and_reads_user_status_only_when_old(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        s.astra.requests_per_second = 200;
        s.astra.burst = 4;
    })
    .await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 120, |_| TimeDelta::days(8)).await;
    // Half the users' statuses were read an hour ago, half a week ago.
    with_pool!(&w.store, |p| sqlx::query("UPDATE grant_token SET user_status = 'approved', user_status_at = $1")
        .bind(Utc::now() - TimeDelta::hours(1))
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    with_pool!(&w.store, |p| sqlx::query("UPDATE grant_token SET user_status_at = $1 WHERE user_id < 'user-00060'")
        .bind(Utc::now() - TimeDelta::days(7))
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    let (_, processed, _, fast) = rotate(&w).await;
    assert_eq!(processed, 120);
    let calls = |path: &str| rig.sandbox.state().calls.iter().filter(|c| c.path == path).count();
    assert_eq!(calls("/v1/oauth/token"), 120, "one refresh per grant");
    assert_eq!(calls("/v1/user"), 60, "the status is read only where it is older than user_status_max_age");

    // The same rotation against an Astra answering in 250 ms keeps more requests in flight.
    with_pool!(&w.store, |p| sqlx::query("UPDATE grant_token SET refresh_expires_at = $1, user_status_at = $1")
        .bind(Utc::now() + TimeDelta::days(1))
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    rig.sandbox.set_faults(Faults { latency_ms: 250, ..Default::default() });
    let slow_worker = rig.worker(None).await;
    let (_, processed, _, slow) = rotate(&slow_worker).await;
    assert_eq!(processed, 120);
    let (fast, slow) = (fast["peak_in_flight"].as_i64().unwrap(), slow["peak_in_flight"].as_i64().unwrap());
    assert!(slow >= 40, "200/s at 250 ms needs about 50 in flight; it kept {slow}");
    assert!(slow > fast, "in flight at 250 ms ({slow}) vs on a quick Astra ({fast})");
    assert_eq!(users.len(), 120);
}
both_backends!(
    rotation_keeps_more_in_flight_as_astra_slows_and_reads_user_status_only_when_old,
    super::rotation_keeps_more_in_flight_as_astra_slows_and_reads_user_status_only_when_old
);

async fn processes_running_at_once_divide_the_request_budget(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| s.astra.requests_per_second = 300).await;
    let (w1, w2) = (rig.worker(None).await, rig.worker(None).await);
    rig.seed(&w1.store, 2, |_| TimeDelta::days(8)).await;
    rotate(&w1).await;
    assert_eq!((w1.limiter.share(), w1.limiter.own_rate()), (1, 300));
    // The first process is still present (its presence lasts 30 s after its last run): the second takes half.
    rotate(&w2).await;
    assert_eq!((w2.limiter.share(), w2.limiter.own_rate()), (2, 150));
}
both_backends!(
    processes_running_at_once_divide_the_request_budget,
    super::processes_running_at_once_divide_the_request_budget
);
