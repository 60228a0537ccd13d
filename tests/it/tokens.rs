//! The token lifecycle against the sandbox, on both stores: rotation by deadline, exactly-once refreshes,
//! lost responses, flaky Astra, concurrent `token` calls, several processes on one slot, the sweep, episodes,
//! prompts delivered signed and once, encryption at rest.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::with_pool;
use astra_worker::{
    app::Worker,
    config::JobName,
    outbox::{self, Deliverer},
    runner::{RunOptions, SlotResult, run_job},
    sandbox::{Faults, SandboxSettings},
    store::Store,
    tokens::Keyring,
    tokens::{self, store as grant_store},
};
use chrono::{DateTime, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    both_backends,
    helpers::{Backend, KEY_A, KEY_B, TestApp, b64, import, keyring, serve_on_loopback},
};

async fn episodes(store: &Store) -> Vec<(String, String)> {
    with_pool!(store, |p| sqlx::query_as(
        "SELECT user_id, reason FROM reauth_episode WHERE closed_at IS NULL ORDER BY user_id"
    )
    .fetch_all(p)
    .await
    .unwrap())
}

/// Ages spread evenly over 0 to 9.5 days: fresh, due and near expiry, none expired.
fn spread(n: usize) -> impl Fn(usize) -> TimeDelta {
    move |i| TimeDelta::minutes((i as i64 * 9 * 24 * 60 + i as i64 * 12 * 60) / n as i64)
}

fn due_before(w: &Worker, now: DateTime<Utc>) -> DateTime<Utc> {
    let job = w.settings.job(JobName::TokenRotation).unwrap();
    let slot = job.schedule.latest_at_or_before(now).unwrap();
    job.schedule.next_after(slot).unwrap() + TimeDelta::hours(72)
}

async fn run(w: &Worker, job: JobName, now: DateTime<Utc>) -> astra_worker::runner::RunSummary {
    run_job(w, job, &RunOptions::default(), now).await.unwrap()
}

async fn rotation_refreshes_exactly_the_due_grants_once(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let n = 1000;
    let users = rig.seed(&w.store, n, spread(n)).await;
    let now = Utc::now();
    let threshold = due_before(&w, now);
    let due: HashSet<&String> =
        users.iter().filter(|u| rig.sandbox.state().grant_info(u).unwrap().refresh_expires_at < threshold).collect();
    assert!(due.len() > 50 && due.len() < n, "the seed has due and not-due grants: {}", due.len());

    let s = run(&w, JobName::TokenRotation, now).await;
    assert!(matches!(s.reports[0].result, SlotResult::Ran { .. }), "{:?}", s.reports);
    for u in &users {
        assert_eq!(rig.refreshes(u), u32::from(due.contains(u)), "{u}");
        assert!(rig.stored_is_live(&w.store, u).await, "{u}: stored pair is Astra's live pair");
    }
    // `token` on rotated grants returns the live access token without a refresh.
    for u in users.iter().filter(|u| due.contains(u)).step_by(25) {
        let t = tokens::access_token(&w.store, &w.services().unwrap().tokens, u).await.unwrap();
        assert_eq!(t.expose_secret(), rig.sandbox.state().grant_info(u).unwrap().access_token);
    }

    let calls = rig.token_calls();
    let again =
        run_job(&w, JobName::TokenRotation, &RunOptions { force: true, ..Default::default() }, now).await.unwrap();
    assert!(matches!(again.reports[0].result, SlotResult::Ran { .. }));
    assert_eq!(rig.token_calls(), calls, "a second run of the week makes no token call");

    // Next week's slot: everything rotated this week is due again, once.
    run(&w, JobName::TokenRotation, now + TimeDelta::days(7)).await;
    for u in &users {
        assert_eq!(rig.refreshes(u), u32::from(due.contains(u)) + 1, "{u}");
    }
    assert!(episodes(&w.store).await.is_empty());
}
both_backends!(rotation_refreshes_exactly_the_due_grants_once, super::rotation_refreshes_exactly_the_due_grants_once);

async fn three_workers_on_one_slot_refresh_each_due_grant_once(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings { seed: 11, ..Default::default() }, |s| {
        s.astra.max_retries = 3;
    })
    .await;
    rig.sandbox.set_faults(Faults { latency_ms: 2, latency_jitter_ms: 5, ..Default::default() });
    let (w1, w2, w3) = (rig.worker(None).await, rig.worker(None).await, rig.worker(None).await);
    let users = rig.seed(&w1.store, 300, |_| TimeDelta::days(8)).await;
    let now = Utc::now();
    let (a, b2, c) = tokio::join!(
        run(&w1, JobName::TokenRotation, now),
        run(&w2, JobName::TokenRotation, now),
        run(&w3, JobName::TokenRotation, now)
    );
    let mut processed = 0;
    for s in [a, b2, c] {
        if let SlotResult::Ran { counts, .. } = &s.reports[0].result {
            processed += counts.processed;
        }
    }
    assert_eq!(processed, 300, "the three shared the grants without overlap");
    for u in &users {
        assert_eq!(rig.refreshes(u), 1, "{u}");
        assert!(rig.stored_is_live(&w1.store, u).await);
    }
}
both_backends!(
    three_workers_on_one_slot_refresh_each_due_grant_once,
    super::three_workers_on_one_slot_refresh_each_due_grant_once
);

async fn token_calls_racing_rotation_open_no_episode(b: Backend) {
    // A margin longer than the access token's life: every `token` call refreshes, under the same lease.
    let rig = TestApp::new(b, SandboxSettings::default(), |s| s.astra.access_margin = TimeDelta::hours(3)).await;
    let w = Arc::new(rig.worker(None).await);
    let users = rig.seed(&w.store, 200, |_| TimeDelta::days(8)).await;
    let now = Utc::now();
    let caller = {
        let (w, users) = (w.clone(), users.clone());
        tokio::spawn(async move {
            let svc = w.services().unwrap();
            for u in users.iter().step_by(3).chain(users.iter().step_by(7)) {
                tokens::access_token(&w.store, &svc.tokens, u).await.unwrap();
            }
        })
    };
    run(&w, JobName::TokenRotation, now).await;
    caller.await.unwrap();
    assert!(episodes(&w.store).await.is_empty());
    for u in &users {
        assert!(rig.refreshes(u) >= 1);
        assert!(rig.stored_is_live(&w.store, u).await, "{u}");
    }
}
both_backends!(token_calls_racing_rotation_open_no_episode, super::token_calls_racing_rotation_open_no_episode);

async fn lost_refresh_responses_open_lost_rotation_episodes_for_exactly_those_grants(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings { seed: 5, ..Default::default() }, |s| {
        s.astra.request_timeout = Duration::from_millis(300);
    })
    .await;
    rig.sandbox.set_faults(Faults { lost_refresh_rate: 0.02, hang_ms: 1000, ..Default::default() });
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 400, |_| TimeDelta::days(8)).await;
    run(&w, JobName::TokenRotation, Utc::now()).await;
    run(&w, JobName::StaleAuthorizationSweep, Utc::now()).await;

    let mut affected = HashSet::new();
    for u in &users {
        if !rig.stored_is_live(&w.store, u).await {
            affected.insert(u.clone());
        }
    }
    assert!(!affected.is_empty(), "2% of 400 refreshes lost some answers");
    let eps = episodes(&w.store).await;
    let with_episode: HashSet<String> = eps.iter().map(|e| e.0.clone()).collect();
    assert_eq!(with_episode, affected, "every affected grant, and no other, has an episode");
    assert!(eps.iter().all(|e| e.1 == "lost_rotation"), "{eps:?}");
}
both_backends!(
    lost_refresh_responses_open_lost_rotation_episodes_for_exactly_those_grants,
    super::lost_refresh_responses_open_lost_rotation_episodes_for_exactly_those_grants
);

async fn flaky_astra_kills_no_grant_and_three_runs_rotate_every_due_grant(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings { seed: 9, rate_limit: Some(100), ..Default::default() }, |s| {
        s.astra.max_retries = 3;
        s.astra.requests_per_second = 110;
    })
    .await;
    rig.sandbox.set_faults(Faults { error_rate: 0.3, ..Default::default() });
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 300, |_| TimeDelta::days(8)).await;
    let now = Utc::now();
    for _ in 0..3 {
        run(&w, JobName::TokenRotation, now).await;
    }
    let statuses: Vec<u16> = rig.sandbox.state().calls.iter().map(|c| c.status).collect();
    assert!(statuses.iter().filter(|s| **s >= 500).count() > 50, "Astra failed often");
    assert!(statuses.contains(&429), "and rate-limited");
    assert!(episodes(&w.store).await.is_empty(), "no grant was declared dead because Astra failed");
    let rotated = users.iter().filter(|u| rig.refreshes(u) >= 1).count();
    assert_eq!(rotated, users.len());
    for u in &users {
        assert_eq!(rig.refreshes(u), 1, "{u} was refreshed exactly once");
        assert!(rig.stored_is_live(&w.store, u).await, "{u}");
    }
}
both_backends!(
    flaky_astra_kills_no_grant_and_three_runs_rotate_every_due_grant,
    super::flaky_astra_kills_no_grant_and_three_runs_rotate_every_due_grant
);

/// Deliveries received: headers and body.
pub(crate) type Received = Arc<Mutex<Vec<(HashMap<String, String>, String)>>>;

/// A loopback endpoint that records deliveries and fails the first `fail_first` of them.
pub(crate) struct Endpoint {
    pub url: String,
    pub received: Received,
}

pub(crate) async fn endpoint(fail_first: usize) -> Endpoint {
    use axum::{Router, http::HeaderMap, routing::post};
    let received: Received = Arc::default();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = received.clone();
    let app = Router::new().route(
        "/hook",
        post(move |h: HeaderMap, body: String| {
            let (r, seen) = (r.clone(), seen.clone());
            async move {
                if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < fail_first {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let h = h.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
                r.lock().unwrap().push((h, body));
                axum::http::StatusCode::OK
            }
        }),
    );
    let url = format!("{}/hook", serve_on_loopback(app).await);
    Endpoint { url, received }
}

async fn the_sweep_opens_one_episode_per_dead_grant_never_prompts_suspended_users_and_delivers_once(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let hook = endpoint(1).await;
    let key = SecretString::from("outbox-signing-key".to_string());
    let mk = || Deliverer::new(&rig.settings.outbox, reqwest::Url::parse(&hook.url).unwrap(), key.clone()).unwrap();
    let w = rig.worker(Some(mk())).await;
    // u0: expired; u1: revoked at Astra, inside the danger window; u2: expired and suspended; u3: healthy.
    let users = rig
        .seed(&w.store, 4, |i| match i {
            0 | 2 => TimeDelta::days(11),
            1 => TimeDelta::days(9),
            _ => TimeDelta::days(1),
        })
        .await;
    rig.sandbox.state().revoke_grant(&users[1]);
    grant_store::set_user_status(&w.store, &users[2], astra_worker::astra::UserStatus::Suspended, Utc::now())
        .await
        .unwrap();

    for i in 0..3 {
        let opts = RunOptions { force: true, ..Default::default() };
        run_job(&w, JobName::StaleAuthorizationSweep, &opts, Utc::now() + TimeDelta::seconds(i)).await.unwrap();
    }
    let eps = episodes(&w.store).await;
    assert_eq!(eps, vec![(users[0].clone(), "expired".into()), (users[1].clone(), "refresh_rejected".into())]);
    assert!(rig.stored_is_live(&w.store, &users[3]).await);

    // One more pass, later, retries the delivery that got a 500.
    mk().deliver_due(&w.store, Utc::now() + TimeDelta::hours(1)).await.unwrap();
    mk().deliver_due(&w.store, Utc::now() + TimeDelta::hours(2)).await.unwrap();
    let got = hook.received.lock().unwrap().clone();
    let kinds: Vec<String> = got
        .iter()
        .map(|(_, body)| serde_json::from_str::<serde_json::Value>(body).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "reauthorization_prompt").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "user_suspended").count(), 1, "{kinds:?}");
    let keys: HashSet<&String> = got.iter().map(|(h, _)| &h["idempotency-key"]).collect();
    assert_eq!(keys.len(), got.len(), "each key delivered once");
    for (h, body) in &got {
        let sig = &h["astra-worker-signature"];
        let t: i64 = sig.trim_start_matches("t=").split(',').next().unwrap().parse().unwrap();
        assert_eq!(sig, &outbox::sign(&key, t, body), "valid signature");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        if v["kind"] == "reauthorization_prompt" {
            let url = v["reauthorization_url"].as_str().unwrap();
            assert!(url.contains("response_type=code") && url.contains("phone_read_only=true"), "{url}");
            assert_ne!(v["user_id"], users[2].as_str(), "the suspended user is never prompted");
        }
    }
    let undelivered = outbox::store::list(&w.store, true, None, 10).await.unwrap();
    assert!(undelivered.is_empty());

    // A new grant for u0 closes its episode.
    let g = rig.sandbox.state().issue_grant(&users[0], Utc::now());
    import(&w.store, &users[0], &g.access_token, &g.refresh_token, Utc::now(), None).await;
    assert_eq!(episodes(&w.store).await.len(), 1);
}
both_backends!(
    the_sweep_opens_one_episode_per_dead_grant_never_prompts_suspended_users_and_delivers_once,
    super::the_sweep_opens_one_episode_per_dead_grant_never_prompts_suspended_users_and_delivers_once
);

async fn tokens_are_sealed_bound_to_their_grant_and_survive_key_rotation(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 20, |_| TimeDelta::days(8)).await;
    run(&w, JobName::TokenRotation, Utc::now()).await;

    // Raw storage holds no token.
    let raw: Vec<Vec<u8>> =
        with_pool!(&w.store, |p| sqlx::query_scalar("SELECT refresh_ct FROM grant_token").fetch_all(p).await.unwrap());
    let live = rig.sandbox.state().grant_info(&users[0]).unwrap();
    assert!(
        raw.iter().all(|ct| !ct.windows(10).any(|win| live.refresh_token.as_bytes().windows(10).any(|t| t == win)))
    );

    // A ciphertext copied into another grant's row fails to decrypt, clearly.
    with_pool!(&w.store, |p| sqlx::query(
        "UPDATE grant_token SET refresh_ct = (SELECT refresh_ct FROM grant_token WHERE user_id = $1) WHERE user_id = $2"
    )
    .bind(&users[1])
    .bind(&users[2])
    .execute(p)
    .await
    .map(|_| ())
    .unwrap());
    // The row is flagged and skipped (a temporary failure of that grant, not of the whole store).
    let e = tokens::load(&w.store, &keyring(), &users[2]).await.unwrap_err();
    assert!(format!("{e:#}").contains("belongs to another grant"), "{e:#}");
    assert_eq!(astra_worker::exit::classify(&e), astra_worker::failure::Status::Temporary);
    assert_eq!(grant_store::count_unreadable(&w.store).await.unwrap(), 1);
    with_pool!(&w.store, |p| sqlx::query("DELETE FROM grant_token WHERE user_id = $1")
        .bind(&users[2])
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());

    // Key rotation: every grant readable under the new key alone.
    let rotating = Keyring::from_base64(&b64(&KEY_B), &[&b64(&KEY_A)]).unwrap();
    let n = tokens::rotate_keys(&w.store, &rotating).await.unwrap();
    assert_eq!(n, 19);
    let only_new = Keyring::from_base64(&b64(&KEY_B), &[]).unwrap();
    for u in users.iter().filter(|u| **u != users[2]) {
        let g = tokens::load(&w.store, &only_new, u).await.unwrap().unwrap();
        assert_eq!(g.refresh.expose_secret(), rig.sandbox.state().grant_info(u).unwrap().refresh_token);
    }
    assert!(tokens::load(&w.store, &keyring(), &users[0]).await.is_err(), "the old key alone no longer reads them");
}
both_backends!(
    tokens_are_sealed_bound_to_their_grant_and_survive_key_rotation,
    super::tokens_are_sealed_bound_to_their_grant_and_survive_key_rotation
);

async fn catch_up_all_runs_every_missed_slot_oldest_first_once(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        let job = s.jobs.iter_mut().find(|j| j.name == JobName::TokenRotation).unwrap();
        job.catch_up = astra_worker::config::CatchUp::All;
        job.max_lateness = TimeDelta::days(20);
    })
    .await;
    let w = rig.worker(None).await;
    let now = Utc::now();
    let first = run(&w, JobName::TokenRotation, now).await;
    let slots: Vec<DateTime<Utc>> = first.reports.iter().map(|r| r.slot).collect();
    assert!(slots.len() == 2 || slots.len() == 3, "the slots of the last 20 days: {slots:?}");
    assert!(slots.windows(2).all(|p| p[1] - p[0] == TimeDelta::days(7)
        || p[1] - p[0] == TimeDelta::hours(167)
        || p[1] - p[0] == TimeDelta::hours(169)));
    assert!(first.reports.iter().all(|r| matches!(r.result, SlotResult::Ran { .. })));
    let second = run(&w, JobName::TokenRotation, now).await;
    assert!(second.reports.is_empty(), "every slot already succeeded: {:?}", second.reports);
}
both_backends!(
    catch_up_all_runs_every_missed_slot_oldest_first_once,
    super::catch_up_all_runs_every_missed_slot_oldest_first_once
);

async fn an_unanswered_episode_is_prompted_again_still_one_episode(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        let job = s.jobs.iter_mut().find(|j| j.name == JobName::StaleAuthorizationSweep).unwrap();
        if let astra_worker::config::JobParams::StaleAuthorizationSweep(p) = &mut job.params {
            p.reprompt_after = TimeDelta::seconds(1);
        }
    })
    .await;
    let w = rig.worker(None).await;
    let users = rig.seed(&w.store, 1, |_| TimeDelta::days(11)).await;
    let force = RunOptions { force: true, ..Default::default() };
    run_job(&w, JobName::StaleAuthorizationSweep, &force, Utc::now()).await.unwrap();
    // The clock moves past reprompt_after without sleeping: back-date the last prompt.
    with_pool!(&w.store, |p| sqlx::query("UPDATE reauth_episode SET last_prompted_at = $1")
        .bind(Utc::now() - TimeDelta::hours(1))
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    run_job(&w, JobName::StaleAuthorizationSweep, &force, Utc::now()).await.unwrap();
    let prompts = outbox::store::list(&w.store, false, Some("reauthorization_prompt"), 10).await.unwrap();
    let mut keys: Vec<&str> = prompts.iter().map(|m| m.idempotency_key.as_str()).collect();
    keys.sort();
    assert_eq!(keys.len(), 2);
    assert!(keys[0].ends_with(":1") && keys[1].ends_with(":2"), "{keys:?}");
    assert_eq!(episodes(&w.store).await, vec![(users[0].clone(), "expired".to_string())]);
}
both_backends!(
    an_unanswered_episode_is_prompted_again_still_one_episode,
    super::an_unanswered_episode_is_prompted_again_still_one_episode
);

async fn a_slow_astra_answering_out_of_order_kills_no_grant_while_the_backend_reads_tokens(b: Backend) {
    // Astra answers 300 ms late and out of order (up to 2.5 s after applying a rotation); the slot's lease is
    // short and the batch is worked two at a time, so grants late in the batch wait longer than the lease. Two
    // workers (two pools, as two instances) share the slot while the backend asks for every user's token.
    let rig = TestApp::new(b, SandboxSettings { seed: 11, ..Default::default() }, |s| {
        s.astra.request_timeout = Duration::from_secs(10);
        s.astra.access_margin = TimeDelta::hours(3);
        s.runner.claim_lease = TimeDelta::seconds(5);
        for j in &mut s.jobs {
            if let astra_worker::config::JobParams::TokenRotation(p) = &mut j.params {
                p.concurrency = 2;
                p.read_user_status = false;
            }
        }
    })
    .await;
    rig.sandbox.set_faults(Faults { latency_ms: 300, late_answer_ms: 2_500, ..Default::default() });
    let w = Arc::new(rig.worker(None).await);
    let other = rig.worker(None).await;
    let users = rig.seed(&w.store, 16, |_| TimeDelta::days(8)).await;
    // The backend asks for every user's token, over and over, while rotation works.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backend: Vec<_> = users
        .iter()
        .cloned()
        .map(|u| {
            let (w, stop) = (w.clone(), stop.clone());
            tokio::spawn(async move {
                let svc = w.services().unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = tokens::access_token(&w.store, &svc.tokens, &u).await;
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
            })
        })
        .collect();
    let now = Utc::now();
    tokio::join!(run(&w, JobName::TokenRotation, now), run(&other, JobName::TokenRotation, now));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in backend {
        b.await.unwrap();
    }
    assert!(episodes(&w.store).await.is_empty(), "no healthy grant is marked for re-authorization");
    for u in &users {
        assert!(rig.stored_is_live(&w.store, u).await, "{u}: the stored pair is Astra's live pair");
    }
}
both_backends!(
    a_slow_astra_answering_out_of_order_kills_no_grant_while_the_backend_reads_tokens,
    super::a_slow_astra_answering_out_of_order_kills_no_grant_while_the_backend_reads_tokens
);

/// Two reads of a user's status answered and recorded out of order (a webhook's and a rotation's): the read
/// begun later stands, whichever is recorded last.
async fn a_user_status_read_earlier_does_not_overwrite_one_read_later(b: Backend) {
    use astra_worker::astra::UserStatus;
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let u = rig.seed(&w.store, 1, |_| TimeDelta::days(1)).await.remove(0);
    let status = async || grant_store::load(&w.store, &u).await.unwrap().unwrap().user_status;
    let t = Utc::now();
    grant_store::set_user_status(&w.store, &u, UserStatus::Suspended, t).await.unwrap();
    grant_store::set_user_status(&w.store, &u, UserStatus::Approved, t - TimeDelta::seconds(1)).await.unwrap();
    assert_eq!(status().await.as_deref(), Some("suspended"), "the earlier read, recorded last, is not kept");
    grant_store::set_user_status(&w.store, &u, UserStatus::Approved, t + TimeDelta::seconds(1)).await.unwrap();
    assert_eq!(status().await.as_deref(), Some("approved"), "a later read is");
}
both_backends!(
    a_user_status_read_earlier_does_not_overwrite_one_read_later,
    super::a_user_status_read_earlier_does_not_overwrite_one_read_later
);
