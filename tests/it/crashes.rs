//! A real `--run-once token-rotation` process stopped again and again in the middle of rotating 2,000 grants,
//! on both stores, against a sandbox that answers in 20–50 ms and does not replay a refresh by its
//! `Idempotency-Key` (Astra's documented behaviour is silent on it). After `kill -9` at random moments, each
//! grant is healthy (the stored pair is the sandbox's live pair) or has a `lost_rotation` episode, and only a
//! grant whose answer was in flight at a kill (issued by the sandbox, not stored when the process died) may be
//! lost. After SIGTERM instead, nothing is lost: the process finishes what is in flight and exits by itself.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use astra_worker::sandbox::{Faults, SandboxSettings};
use chrono::{DurationRound, TimeDelta, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    both_backends,
    helpers::{Backend, KEY_A, TestApp, b64, bin_with, shipped_config},
    with_pool,
};

const GRANTS: usize = 2_000;
const STOPS: usize = 12;

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Term,
}

/// The shipped file with short leases, a fast rate, and a rotation slot every second (each restart names its
/// own slot, as a person re-running by hand would).
fn config(dir: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(shipped_config()).unwrap();
    for (from, to) in [
        ("grace_period = \"20s\"", "grace_period = \"10s\""),
        ("claim_lease = \"2m\"", "claim_lease = \"5s\""),
        ("requests_per_second = 20 ", "requests_per_second = 400 "),
        ("request_timeout = \"30s\"", "request_timeout = \"2s\""),
        ("retry_budget = \"30s\"", "retry_budget = \"2s\""),
        ("schedule = \"0 0 3 * * Mon\"", "schedule = \"* * * * * *\""),
        ("concurrency = 512", "concurrency = 64"),
    ] {
        assert!(text.contains(from), "the shipped jobs.toml no longer has `{from}`");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join("jobs.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(rig: &TestApp, config: &Path, slot: chrono::DateTime<Utc>) -> Child {
    bin_with(&rig.db.url, config)
        .env("ASTRA_BASE_URL", rig.sandbox.base_url())
        .env("ASTRA_CLIENT_ID", "sandbox-client")
        .env("ASTRA_CLIENT_SECRET", "sandbox-secret")
        .env("ASTRA_WORKER_TOKEN_KEY", b64(&KEY_A))
        .args(["--run-once", "token-rotation", "--slot", &slot.to_rfc3339()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn scalar(rig: &TestApp, sql: &'static str) -> i64 {
    let store = rig.db.store().await;
    let n = with_pool!(&store, |p| sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await.unwrap());
    store.close().await;
    n
}

/// Adds to `in_flight` every grant the sandbox refreshed since the last look whose new pair the store lacks.
async fn note_unstored(
    rig: &TestApp,
    store: &astra_worker::store::Store,
    users: &[String],
    seen: &mut HashMap<String, u32>,
    in_flight: &mut HashSet<String>,
) {
    for u in users {
        let now = rig.refreshes(u);
        if seen.insert(u.clone(), now) != Some(now) && !rig.stored_is_live(store, u).await {
            in_flight.insert(u.clone());
        }
    }
}

async fn stopped_again_and_again(b: Backend, stop: Stop) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store = rig.db.store().await;
    let users = rig.seed(&store, GRANTS, |_| TimeDelta::days(8)).await;
    rig.sandbox.set_faults(Faults { latency_ms: 20, latency_jitter_ms: 30, ..Default::default() });
    let first_slot = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap() - TimeDelta::minutes(10);
    let mut slots = (0..).map(|i| first_slot + TimeDelta::seconds(i));
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut seen: HashMap<String, u32> = users.iter().map(|u| (u.clone(), 0)).collect();
    // Grants whose new pair the sandbox had issued and the store did not hold when a process stopped.
    let mut in_flight = HashSet::new();
    let mut stopped = 0;
    for _ in 0..STOPS {
        let target = rig.sandbox.state().total_refreshes() + rng.random_range(10..=150);
        let mut child = start(&rig, &config, slots.next().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while rig.sandbox.state().total_refreshes() < target && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the rotation made no progress for a minute");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let code = match stop {
            Stop::Kill => {
                let _ = child.kill();
                child.wait().unwrap().code()
            }
            Stop::Term => {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                let code = child.wait().unwrap().code();
                assert!(matches!(code, Some(0 | 75)), "after SIGTERM the process exits by itself, 0 or 75: {code:?}");
                code
            }
        };
        stopped += usize::from(code.is_none() || code == Some(75));
        note_unstored(&rig, &store, &users, &mut seen, &mut in_flight).await;
    }
    // The sandbox may still apply a request a dead process sent, up to its latency (50 ms) after the kill.
    tokio::time::sleep(Duration::from_millis(200)).await;
    note_unstored(&rig, &store, &users, &mut seen, &mut in_flight).await;
    assert!(stopped >= STOPS / 2, "most stops came mid-run ({stopped} of {STOPS})");
    // Runs to the end: the dead processes' leases lapse (a grant's lease is taken for the longest one refresh
    // can take), then their grants are rotated or probed.
    let settings = astra_worker::config::Settings::load(&config).unwrap();
    let leases = astra_worker::tokens::refresh_worst_case(&settings, &store).to_std().unwrap();
    let deadline = Instant::now() + leases + Duration::from_secs(60);
    loop {
        let code = start(&rig, &config, slots.next().unwrap()).wait().unwrap().code();
        let open = scalar(&rig, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await;
        let due =
            scalar(&rig, "SELECT COUNT(*) FROM grant_token WHERE status = 'active' AND last_rotated_at IS NULL").await;
        if code == Some(0) && open == 0 && due == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not finished in time: exit {code:?}, {open} open intents, {due} due");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let episodes: Vec<(String, String)> =
        with_pool!(&store, |p| sqlx::query_as("SELECT user_id, reason FROM reauth_episode")
            .fetch_all(p)
            .await
            .unwrap());
    eprintln!(
        "crashes: {stopped} of {STOPS} stops mid-run, {} answers in flight at them, {} lost",
        in_flight.len(),
        episodes.len()
    );
    for (user, reason) in &episodes {
        assert_eq!(reason, "lost_rotation", "{user}: no grant declared dead without proof");
        assert!(in_flight.contains(user), "{user} was lost but its answer was not in flight at a stop");
    }
    let lost: HashSet<&String> = episodes.iter().map(|e| &e.0).collect();
    for u in &users {
        assert!(lost.contains(u) || rig.stored_is_live(&store, u).await, "{u}: neither healthy nor flagged");
    }
    if stop == Stop::Term {
        assert!(in_flight.is_empty(), "SIGTERM left answers unstored: {in_flight:?}");
        assert!(episodes.is_empty(), "SIGTERM lost grants: {episodes:?}");
    }
    store.close().await;
}

async fn killed(b: Backend) {
    stopped_again_and_again(b, Stop::Kill).await;
}
both_backends!(kill_9_during_rotation_loses_only_answers_in_flight_and_flags_each, super::killed);

async fn terminated(b: Backend) {
    stopped_again_and_again(b, Stop::Term).await;
}
both_backends!(sigterm_during_rotation_loses_nothing, super::terminated);
