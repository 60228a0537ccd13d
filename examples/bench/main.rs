//! The benchmark harness: `cargo run --release --example bench [-- --pg postgres://…]`.
//!
//! 1. Guard latency: 10,000 users with grants, destinations and today's counters; 20,000 sequential
//!    `guard::check` calls; then 5,000 `check_and_hold` calls from one caller, and 16 concurrent callers
//!    placing 300 holds each on one destination; mean, p50, p99 wall time per call.
//! 2. Sync cost: the requests one `transfer-sync` run makes for 10,000 users when 1 % have an open hold and a
//!    new transfer (the sandbox in its own process).
//! 3. Rotation: N due grants rotated against the sandbox, run as its own process (`astra-worker sandbox`, so
//!    the memory measured is the worker's alone), at a configured rate: achieved rate, the most requests the
//!    sandbox saw in any one second, and this process's peak memory (VmHWM), at two rates and two latencies.
//! 4. The service (`serve`, in this process): `POST /v1/guard` with a hold under `wrk` (Debian's package), and
//!    webhook intake at 200/s with the time from intake to the transfer counted.
//!
//! `BENCH_ONLY=guard|guard-pg|rotation|serve` runs one part.
//!
//! Build the binary first: `cargo build --release && cargo run --release --example bench`.
//!
//! Results are written down in the README with the machine they ran on. Nothing here is a test.

mod serve;

use std::time::{Duration, Instant};

use astra_worker::{
    app::Services,
    app::Worker,
    astra::Credentials,
    config::GuardSettings,
    config::{JobName, Settings},
    domain::Cents,
    reconcile::counters,
    reconcile::guard::{self, GuardRequest, HoldRequest},
    reconcile::registry::{self, DestinationLine, ImportLine as RegistryLine},
    runner::{RunOptions, run_job},
    sandbox::SandboxSettings,
    store::Store,
    tokens::Keyring,
    tokens::{self, ImportLine},
};
use chrono::{TimeDelta, Utc};
use secrecy::SecretString;

fn settings(base: Option<&str>) -> Settings {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs.toml")).unwrap();
    Settings::parse(&text, base).unwrap()
}

fn keyring() -> Keyring {
    Keyring::from_base64("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=", &[]).unwrap()
}

async fn fresh(pg: Option<&str>) -> (String, Option<tempfile::TempDir>) {
    match pg {
        None => {
            let d = tempfile::tempdir().unwrap();
            (format!("sqlite://{}", d.path().join("bench.db").display()), Some(d))
        }
        Some(admin) => {
            let name = format!("aw_bench_{}", uuid::Uuid::new_v4().simple());
            let p = sqlx::PgPool::connect(admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&p).await.unwrap();
            let mut u = reqwest::Url::parse(admin).unwrap();
            u.set_path(&name);
            (u.to_string(), None)
        }
    }
}

/// 10,000 users with grants, one destination each (limit $2,500) and today's counters.
async fn seed_guard_store(url: &str) -> Store {
    let store = Store::open(url).await.unwrap();
    let k = keyring();
    let now = Utc::now();
    let users = 10_000;
    for i in 0..users {
        let id = format!("u{i:05}");
        let line = ImportLine {
            user_id: id.clone(),
            access_token: SecretString::from(format!("at_{i}")),
            refresh_token: SecretString::from(format!("rt_{i}")),
            refresh_token_issued_at: Some(now.fixed_offset()),
            refresh_token_expires_at: None,
            access_token_expires_at: None,
            phone: None,
        };
        tokens::import(&store, &k, &line, now).await.unwrap();
        register_account(&store, &format!("acct-{i:05}"), &id, 250_000).await;
        let day = astra_worker::domain::BankDay::of(chrono_tz::America::New_York, now).key();
        counters::set_counter(&store, &format!("acct-{i:05}"), &day, (i as i64 * 37) % 300_000, 1).await.unwrap();
    }
    // A store that has been live a while: holds of earlier days, ended, and the planner's statistics taken (what
    // autovacuum does within a minute of the first writes; a plan made while `guard_hold` was empty scans it).
    if let Store::Postgres(p) = &store {
        sqlx::query(
            "INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
                 expires_at, ended_at, end_reason)
             SELECT 'old-' || g, 'u' || lpad((g % 10000)::text, 5, '0'), 'acct-' || lpad((g % 10000)::text, 5, '0'),
                    '2026-01-01', 100, '{}', now() - interval '30 days', now() - interval '29 days',
                    now() - interval '29 days', 'expired'
             FROM generate_series(1, 50000) g",
        )
        .execute(p)
        .await
        .unwrap();
        sqlx::query("ANALYZE").execute(p).await.unwrap();
    }
    store
}

const USERS: usize = 10_000;

/// Registers an account in New York with a daily limit.
async fn register_account(store: &Store, dest: &str, user: &str, limit: i64) {
    let line = RegistryLine::Destination(DestinationLine {
        destination_id: dest.into(),
        user_id: user.into(),
        kind: astra_worker::reconcile::registry::DestinationKind::Account,
        bank_time_zone: "America/New_York".into(),
        daily_limit_cents: limit,
        frozen: None,
        push_enabled: None,
        pull_enabled: None,
    });
    registry::import(store, &line, Utc::now()).await.unwrap();
}

fn percentiles(label: &str, what: &str, mut lat: Vec<Duration>, extra: &str) {
    lat.sort();
    let n = lat.len();
    let mean = lat.iter().sum::<Duration>() / n as u32;
    println!("{what} [{label}]: {n} calls: mean {:?}, p50 {:?}, p99 {:?}{extra}", mean, lat[n / 2], lat[n * 99 / 100]);
}

async fn bench_guard(label: &str, url: &str) {
    let store = seed_guard_store(url).await;
    let users = USERS;
    let now = Utc::now();
    let calls = 20_000;
    let mut lat = Vec::with_capacity(calls);
    let mut denied = 0;
    for n in 0..calls {
        let user = format!("u{:05}", (n * 7919) % users);
        let req = GuardRequest { user_id: &user, amount: Cents(10_000), destination_id: None };
        let t = Instant::now();
        let a = guard::check(&store, &astra_worker::config::GuardSettings::default(), &req, now).await.unwrap();
        lat.push(t.elapsed());
        denied += usize::from(!a.allowed);
    }
    percentiles(label, "guard, no hold", lat, &format!(" over {users} users ({denied} denied)"));

    // With a hold: one caller, a different user each time.
    let settings = GuardSettings::default();
    let hold_for = TimeDelta::hours(1);
    let mut lat = Vec::new();
    for n in 0..5_000 {
        let user = format!("u{:05}", (n * 7919) % users);
        let req = GuardRequest { user_id: &user, amount: Cents(100), destination_id: None };
        let key = format!("b1-{n}");
        let t = Instant::now();
        guard::check_and_hold(&store, &settings, &req, &HoldRequest { key: &key, hold_for }, now).await.unwrap();
        lat.push(t.elapsed());
    }
    percentiles(label, "guard with hold, 1 caller", lat, "");

    // With a hold: 16 concurrent callers on one destination (its limit raised so every call holds).
    register_account(&store, "acct-00000", "u00000", 1_000_000_000_000).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                let settings = GuardSettings::default();
                let mut lat = Vec::new();
                for n in 0..300 {
                    let req =
                        GuardRequest { user_id: "u00000", amount: Cents(100), destination_id: Some("acct-00000") };
                    let key = format!("b16-{c}-{n}");
                    let t = Instant::now();
                    let a = guard::check_and_hold(
                        &store,
                        &settings,
                        &req,
                        &HoldRequest { key: &key, hold_for },
                        Utc::now(),
                    )
                    .await
                    .unwrap();
                    assert!(a.allowed);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    percentiles(label, "guard with hold, 16 callers on one destination", lat, &format!(" ({rate:.0} holds/s)"));
    store.close().await;
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// The release binary's sandbox, as a child process; its base URL.
fn spawn_sandbox() -> (std::process::Child, String) {
    use std::io::BufRead;
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|p| p.parent()).map(|p| p.join("astra-worker")).unwrap();
    assert!(bin.exists(), "build the binary first: cargo build --release ({} is missing)", bin.display());
    let mut child = std::process::Command::new(bin)
        .args(["sandbox", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line.trim().to_string())
}

async fn bench_rotation(n: usize, rate: u32, latency_ms: u64) {
    let (mut sandbox, base) = spawn_sandbox();
    let http = reqwest::Client::new();
    let (url, _dir) = fresh(None).await;
    let store = Store::open(&url).await.unwrap();
    let mut s = settings(Some(&base));
    s.astra.requests_per_second = rate;
    s.astra.burst = astra_worker::config::default_burst(rate);
    let now = Utc::now();
    for i in 0..n {
        let id = format!("u{i:06}");
        seed_sandbox_grant(&http, &base, &store, &id, now - TimeDelta::days(8), false).await;
    }
    let sb = SandboxSettings::default();
    let credentials = Credentials { client_id: sb.client_id.into(), client_secret: sb.client_secret.into() };
    let w = Worker::with_services(s, store, |s, l, st| Services::new(s, credentials, keyring(), None, l, st)).unwrap();
    http.post(format!("{base}/_sandbox/faults"))
        .json(&serde_json::json!({"latency_ms": latency_ms}))
        .send()
        .await
        .unwrap();
    let before = peak_rss_kib();
    let t = Instant::now();
    let summary = run_job(&w, JobName::TokenRotation, &RunOptions::default(), Utc::now()).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stats: serde_json::Value =
        http.get(format!("{base}/_sandbox/stats")).send().await.unwrap().json().await.unwrap();
    let requests = stats["requests"].as_u64().unwrap_or(0);
    println!(
        "rotation: {n} grants at {rate}/s allowed, {latency_ms} ms latency: {:.1}s, {requests} requests ({:.0}/s achieved, \
         {:.2} of the rate), at most {} in any one second, refreshes {}, worker peak RSS {} MiB (before the run {} MiB), \
         status {:?}",
        secs,
        requests as f64 / secs,
        requests as f64 / secs / f64::from(rate),
        stats["max_requests_in_one_second"],
        stats["refreshes"],
        peak_rss_kib() / 1024,
        before / 1024,
        summary.status()
    );
    let _ = sandbox.kill();
}

/// An approved user at the sandbox with a grant issued at `issued`, imported into the store; the access token
/// is stored as valid for two hours when `access_valid`, else unknown (the first use refreshes it).
async fn seed_sandbox_grant(
    http: &reqwest::Client,
    base: &str,
    store: &Store,
    id: &str,
    issued: chrono::DateTime<Utc>,
    access_valid: bool,
) {
    http.post(format!("{base}/_sandbox/users")).json(&serde_json::json!({"id": id})).send().await.unwrap();
    let g: serde_json::Value = http
        .post(format!("{base}/_sandbox/grants"))
        .json(&serde_json::json!({"user_id": id, "issued_at": issued}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let line = ImportLine {
        user_id: id.to_string(),
        access_token: SecretString::from(g["access_token"].as_str().unwrap().to_string()),
        refresh_token: SecretString::from(g["refresh_token"].as_str().unwrap().to_string()),
        refresh_token_issued_at: Some(issued.fixed_offset()),
        refresh_token_expires_at: None,
        access_token_expires_at: access_valid.then(|| (issued + TimeDelta::hours(2)).fixed_offset()),
        phone: None,
    };
    tokens::import(store, &keyring(), &line, Utc::now()).await.unwrap();
}

/// Requests one `transfer-sync` run makes for 10,000 users when 1 % have an open hold and one new transfer each.
async fn bench_sync() {
    let (mut sandbox, base) = spawn_sandbox();
    let http = reqwest::Client::new();
    let (url, _dir) = fresh(None).await;
    let store = Store::open(&url).await.unwrap();
    let s = settings(Some(&base));
    let now = Utc::now();
    let active = USERS / 100;
    for i in 0..USERS {
        let id = format!("u{i:05}");
        seed_sandbox_grant(&http, &base, &store, &id, now, true).await;
        if i < active {
            let dest = format!("acct-{i:05}");
            register_account(&store, &dest, &id, 250_000).await;
            let key = format!("r{i:05}");
            let req = GuardRequest { user_id: &id, amount: Cents(10_000), destination_id: Some(&dest) };
            let hold = HoldRequest { key: &key, hold_for: TimeDelta::hours(1) };
            guard::check_and_hold(&store, &GuardSettings::default(), &req, &hold, now).await.unwrap();
            http.post(format!("{base}/_sandbox/transfers"))
                .json(&serde_json::json!({"user_id": id, "amount_cents": 10_000, "destination_id": dest,
                                          "client_correlation_id": key}))
                .send()
                .await
                .unwrap();
        }
    }
    let sb = SandboxSettings::default();
    let credentials = Credentials { client_id: sb.client_id.into(), client_secret: sb.client_secret.into() };
    let w = Worker::with_services(s, store, |s, l, st| Services::new(s, credentials, keyring(), None, l, st)).unwrap();
    let before: serde_json::Value =
        http.get(format!("{base}/_sandbox/stats")).send().await.unwrap().json().await.unwrap();
    let t = Instant::now();
    let summary = run_job(&w, JobName::TransferSync, &RunOptions::default(), Utc::now()).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let after: serde_json::Value =
        http.get(format!("{base}/_sandbox/stats")).send().await.unwrap().json().await.unwrap();
    let requests = after["requests"].as_u64().unwrap_or(0) - before["requests"].as_u64().unwrap_or(0);
    let refreshes = after["refreshes"].as_u64().unwrap_or(0) - before["refreshes"].as_u64().unwrap_or(0);
    let open = astra_worker::reconcile::holds::list(&w.store, true, Utc::now(), 100_000).await.unwrap().len();
    println!(
        "transfer-sync: {USERS} users, {active} with an open hold and a new transfer: {requests} requests \
         ({refreshes} refreshes) in {secs:.1}s; target <= 1.2 x (active users + new pages) = {}; holds still open {open}; \
         status {:?}",
        (1.2 * (2 * active) as f64) as u64,
        summary.status()
    );
    let _ = sandbox.kill();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pg = args.iter().position(|a| a == "--pg").and_then(|i| args.get(i + 1)).cloned();
    let (sqlite, _d) = fresh(None).await;
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "guard-pg" && only != "serve" && only != "rotation" {
        bench_guard("sqlite", &sqlite).await;
    }
    if let Some(admin) = &pg
        && only != "serve"
        && only != "rotation"
    {
        let (url, _) = fresh(Some(admin)).await;
        bench_guard("postgres", &url).await;
    }
    if only.starts_with("guard") {
        return;
    }
    if only == "serve" || only.is_empty() {
        serve::bench_serve(pg.as_deref()).await;
        if only == "serve" {
            return;
        }
    }
    if only != "rotation" {
        bench_sync().await;
    }
    let n = std::env::var("BENCH_GRANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    for (rate, latency_ms) in [(100, 20), (100, 200), (1_000, 20), (1_000, 200)] {
        bench_rotation(n, rate, latency_ms).await;
    }
}
