//! The benchmark harness: `cargo run --release --example bench [-- --pg postgres://…]`.
//!
//! 1. Guard latency: 100,000 users with grants, destinations and today's counters; 20,000 sequential
//!    `guard::check` calls; then 5,000 `check_and_hold` calls from one caller, and 16 concurrent callers
//!    placing 300 holds each on one destination, as fast as answered and paced; p50, p99 wall time per call.
//! 2. Sync cost: the requests one `transfer-sync` run makes for 10,000 users when 1 % have an open hold and a
//!    new transfer (the sandbox in its own process).
//! 3. Rotation: N due grants rotated against the sandbox, run as its own process (`astra-worker sandbox`, so
//!    the memory measured is the worker's alone), at a configured rate: achieved rate, the most requests the
//!    sandbox saw in any one second, and this process's peak memory (VmHWM), at two rates and two latencies.
//! 4. The service (`serve`, in this process): `POST /v1/guard` with a hold under `wrk` (Debian's package), and
//!    webhook intake at 200/s with the time from intake to the transfer counted.
//!
//! With `--pg` naming a server on this host whose Unix socket is in `/var/run/postgresql`, the one caller's
//! holds and the service's guard rows are measured through the socket too. On PostgreSQL the 16 callers and the
//! service's guard rows are measured with the default's connections kept (`store.postgres_connections`, 16) and
//! with fewer (6, or `BENCH_PG_CONNECTIONS`), in rows marked `pool of N`.
//!
//! 5. Aggregation: the daily recompute over 1,000,000 transfers and 100,000 destinations against a bare
//!    `GROUP BY`; and a no-op `--run-once` as a whole process.
//!
//! `BENCH_ONLY=guard|guard-pg|sync|rotation|aggregation|serve|serve-pg|no-op` runs one part (`rotation` includes
//! the by-hand loop; `guard-pg` and `serve-pg` the guard's PostgreSQL rows alone); `BENCH_GRANTS` sets the rotation's grants (20,000). `BENCH_ONLY=rotation-large` (not part of
//! the full run) rotates 200,000 grants on both stores at 1,000/s; `rotation-large-slow` runs the four 100/s cases
//! at that size at once.
//!
//! Build the binary first: `cargo build --release --bins --examples && ./target/release/examples/bench`. The
//! figures are written to `BENCHMARKS.md` (see `report`). Nothing here is a test.

mod aggregation;
mod noop;
mod report;
mod rotation;
mod serve;

use report::Report;

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
    store::{Lives, PG_CONNECTIONS, Store},
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

/// The PostgreSQL databases this process made (admin URL, name), dropped by [`drop_made`] as it ends.
static MADE: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Drops the databases [`fresh`] made, with whatever connections are still open to them, so runs do not pile
/// databases up on the server (a run that panics leaves its own behind).
async fn drop_made() {
    let made = std::mem::take(&mut *MADE.lock().unwrap());
    for (admin, name) in made {
        let p = sqlx::PgPool::connect(&admin).await.unwrap();
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&p).await {
            eprintln!("bench: could not drop {name}: {e}");
        }
        p.close().await;
    }
}

async fn fresh(pg: Option<&str>) -> (String, Option<tempfile::TempDir>) {
    match pg {
        None => {
            let d = tempfile::tempdir().unwrap();
            (format!("sqlite://{}", d.path().join("bench.db").display()), Some(d))
        }
        Some(admin) => (made(admin, "").await, None),
    }
}

/// A new PostgreSQL database as `url`'s is now (PostgreSQL's copy of a template: rows and statistics, in
/// seconds, where seeding them again takes minutes); no one may be connected to `url`'s.
async fn copy_of(admin: &str, url: &str) -> String {
    let from = reqwest::Url::parse(url).unwrap().path().trim_start_matches('/').to_string();
    made(admin, &format!(" TEMPLATE {from}")).await
}

/// Creates a database (`CREATE DATABASE name{how}`) that [`drop_made`] drops; its URL.
async fn made(admin: &str, how: &str) -> String {
    let name = format!("aw_bench_{}", uuid::Uuid::new_v4().simple());
    let p = sqlx::PgPool::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}{how}"))).execute(&p).await.unwrap();
    p.close().await;
    MADE.lock().unwrap().push((admin.to_string(), name.clone()));
    let mut u = reqwest::Url::parse(admin).unwrap();
    u.set_path(&name);
    u.to_string()
}

/// What the rows marked `Unix socket` measured.
const SOCKET_NOTE: &str = "[PostgreSQL, Unix socket]: the same server through its Unix socket \
    (`?host=/var/run/postgresql` in the URL), as a service on the database's host would reach it: no TCP, and no \
    TLS, which sqlx takes on loopback TCP by default (`sslmode=prefer`).";

/// What the rows marked `pool of N` measured.
const POOL_NOTE: &str = "[…, pool of N]: the PostgreSQL connections the process keeps open \
    (`store.postgres_connections`, 16 by default), the default's beside fewer.";

/// `url` through the server's Unix socket, when it names a server on this host whose socket is where Debian's
/// packages put it: as a service on the database's host reaches it, without TCP, and without the TLS sqlx takes
/// on loopback TCP by default (`sslmode=prefer`).
fn over_socket(url: &str) -> Option<String> {
    const DIR: &str = "/var/run/postgresql";
    let mut u = reqwest::Url::parse(url).ok()?;
    let local = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let socket = format!("{DIR}/.s.PGSQL.{}", u.port().unwrap_or(5432));
    (local && std::path::Path::new(&socket).exists()).then(|| {
        u.query_pairs_mut().append_pair("host", DIR);
        u.to_string()
    })
}

/// [`guard_users`] users with grants, one destination each (daily limit `limit` cents) and today's counters,
/// written by eight callers at once; a PostgreSQL store keeps `connections` open.
async fn seed_guard_store(url: &str, limit: i64, connections: u32) -> Store {
    use futures::StreamExt;
    let store = Store::open_for(url, Lives::Long { connections }).await.unwrap();
    let now = Utc::now();
    let day = astra_worker::domain::BankDay::of(chrono_tz::America::New_York, now).key();
    futures::stream::iter(0..guard_users())
        .for_each_concurrent(8, |i| {
            let (store, day) = (&store, &day);
            async move {
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
                tokens::import(store, &keyring(), &line, now).await.unwrap();
                register_account(store, &format!("acct-{i:05}"), &id, limit).await;
                let held = (i as i64 * 37) % 300_000;
                counters::set_counter(store, &format!("acct-{i:05}"), day, held, 1).await.unwrap();
            }
        })
        .await;
    // A store that has been live a while: holds of earlier days, ended, and the planner's statistics taken (what
    // autovacuum does within a minute of the first writes; a plan made while `guard_hold` was empty scans it).
    if let Store::Postgres(p) = &store {
        sqlx::query(
            "INSERT INTO guard_hold (hold_key, user_id, destination_id, bank_day, amount_cents, answer, created_at,
                 expires_at, ended_at, end_reason)
             SELECT 'old-' || g, 'u' || lpad((g % $1)::text, 5, '0'), 'acct-' || lpad((g % $1)::text, 5, '0'),
                    '2026-01-01', 100, '{}', now() - interval '30 days', now() - interval '29 days',
                    now() - interval '29 days', 'expired'
             FROM generate_series(1, 50000) g",
        )
        .bind(guard_users() as i32)
        .execute(p)
        .await
        .unwrap();
        sqlx::query("ANALYZE").execute(p).await.unwrap();
    }
    store
}

/// The users the guard's benches (the library call and the service) choose from: 100,000, or
/// `BENCH_GUARD_USERS` (a quick try of the harness).
fn guard_users() -> usize {
    // The 16 callers take users 0 to 6 × RUNS − 1.
    std::env::var("BENCH_GUARD_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000).max(6 * RUNS)
}

/// The users of the sync bench.
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

/// Latency percentiles of one measured loop.
#[derive(Clone, Copy)]
struct Lat {
    p50: Duration,
    p99: Duration,
}

fn percentiles(mut lat: Vec<Duration>) -> Lat {
    lat.sort();
    let n = lat.len();
    Lat { p50: lat[n / 2], p99: lat[n * 99 / 100] }
}

/// The median, over several runs, of each percentile; with the spread of the p99s.
fn median_of(mut runs: Vec<Lat>) -> String {
    let mid = runs.len() / 2;
    runs.sort_by_key(|l| l.p50);
    let p50 = runs[mid].p50;
    runs.sort_by_key(|l| l.p99);
    let (p99, lo, hi) = (runs[mid].p99, runs[0].p99, runs[runs.len() - 1].p99);
    format!("p50 {}, p99 {} (runs' p99 {}–{})", human(p50), human(p99), human(lo), human(hi))
}

fn human(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

/// How many times each latency loop is measured; the figures are the median.
const RUNS: usize = 3;

async fn bench_guard(report: &mut Report, label: &str, url: &str) {
    let store = seed_guard_store(url, 250_000, PG_CONNECTIONS).await;
    let users = guard_users();
    let now = Utc::now();
    let (mut free, mut one, mut again, mut sixteen, mut paced, mut rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        let mut lat = Vec::with_capacity(20_000);
        for n in 0..20_000 {
            let user = format!("u{:05}", (n * 7919) % users);
            let req = GuardRequest { user_id: &user, amount: Cents(10_000), destination_id: None };
            let t = Instant::now();
            guard::check(&store, &GuardSettings::default(), &req, now).await.unwrap();
            lat.push(t.elapsed());
        }
        free.push(percentiles(lat));

        // With a hold: one caller, a different user each time; then the same requests again, keys and all (a
        // client's retries after a lost answer), each answered as the first time.
        let (lat, first) = one_caller(&store, users, run, now).await;
        one.push(percentiles(lat));
        let (lat, retried) = one_caller(&store, users, run, now).await;
        for (a, b) in first.iter().zip(&retried) {
            assert_eq!((a.allowed, &a.hold), (b.allowed, &b.hold), "a retry is answered as the first time");
        }
        again.push(percentiles(lat));

        sixteen_callers_both(&store, run, "16", &mut sixteen, &mut paced, &mut rates).await;
    }
    let method = format!("{users} users with grants, destinations and counters; median of {RUNS} runs");
    report.row(
        "guard",
        format!("no hold [{label}]"),
        format!("{method}; 20,000 sequential `guard::check`"),
        median_of(free),
    );
    report.row(
        "guard",
        format!("with a hold, one caller [{label}]"),
        format!("{method}; 5,000 sequential `check_and_hold`, a different user each"),
        median_of(one),
    );
    report.row(
        "guard",
        format!("with a hold, the same request again [{label}]"),
        format!("{method}; the one caller's 5,000 requests again, the same keys (a client's retries)"),
        median_of(again),
    );
    sixteen_rows(report, label, &method, sixteen, paced, rates);
    // The 16 callers again with fewer connections kept (`store.postgres_connections`), on users of their own.
    if let Store::Postgres(_) = store {
        let connections = fewer_connections();
        let few = Store::open_for(url, Lives::Long { connections }).await.unwrap();
        let (mut sixteen, mut paced, mut rates) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..RUNS {
            sixteen_callers_both(&few, 2 * RUNS + run, "f16", &mut sixteen, &mut paced, &mut rates).await;
        }
        sixteen_rows(report, &format!("{label}, pool of {connections}"), &method, sixteen, paced, rates);
        report.note("guard", POOL_NOTE.into());
        few.close().await;
    }
    // The one caller again on the same database through its Unix socket (see [`over_socket`]).
    if let Some(socket) = over_socket(url) {
        let near = Store::open(&socket).await.unwrap();
        let mut lat = Vec::new();
        for run in 0..RUNS {
            lat.push(percentiles(one_caller(&near, users, 2 * RUNS + run, now).await.0));
        }
        report.row(
            "guard",
            format!("with a hold, one caller [{label}, Unix socket]"),
            format!("{method}; the one caller's loop on the same database through its Unix socket, new keys"),
            median_of(lat),
        );
        report.note("guard", SOCKET_NOTE.into());
        near.close().await;
    }
    store.close().await;
}

/// The PostgreSQL connections kept in the rows beside the default's (`store.postgres_connections`): 6, about
/// three per core of this host, which runs the database too; `BENCH_PG_CONNECTIONS` sets another.
fn fewer_connections() -> u32 {
    std::env::var("BENCH_PG_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(6)
}

/// With a hold: 16 concurrent callers on one destination (its limit raised so every call holds), each asking
/// again as soon as it is answered; then the same, paced: together [`PACED_HOLDS_PER_SECOND`]. Destinations
/// (users) from `first` × 2 on, new each run, so no run sums the holds an earlier one left open.
async fn sixteen_callers_both(
    store: &Store,
    first: usize,
    tag: &str,
    sixteen: &mut Vec<Lat>,
    paced: &mut Vec<Lat>,
    rates: &mut Vec<f64>,
) {
    let (lat, rate) = sixteen_callers(store, 2 * first, &format!("b{tag}"), None).await;
    rates.push(rate);
    sixteen.push(percentiles(lat));
    let period = Duration::from_secs_f64(16.0 / PACED_HOLDS_PER_SECOND);
    let (lat, _) = sixteen_callers(store, 2 * first + 1, &format!("p{tag}"), Some(period)).await;
    paced.push(percentiles(lat));
}

/// The rows of [`sixteen_callers_both`]'s runs.
fn sixteen_rows(
    report: &mut Report,
    label: &str,
    method: &str,
    sixteen: Vec<Lat>,
    paced: Vec<Lat>,
    mut rates: Vec<f64>,
) {
    rates.sort_by(f64::total_cmp);
    report.row(
        "guard",
        format!("with a hold, 16 callers on one destination [{label}]"),
        format!("{method}; 16 tasks × 300 holds on one store (the holds waiting on the day are placed together, in its lane)"),
        format!("{}, {:.0} holds/s", median_of(sixteen), rates[rates.len() / 2]),
    );
    report.row(
        "guard",
        format!("with a hold, 16 callers on one destination, paced [{label}]"),
        format!(
            "{method}; 16 tasks × 300 holds on one store, each due every {:.0} ms ({PACED_HOLDS_PER_SECOND:.0} \
             holds/s together), each time counted from when its call was due",
            16_000.0 / PACED_HOLDS_PER_SECOND
        ),
        median_of(paced),
    );
}

/// 5,000 sequential `check_and_hold`s of one caller, a different user each, keys tagged with `run`: their
/// latencies and answers.
async fn one_caller(
    store: &Store,
    users: usize,
    run: usize,
    now: chrono::DateTime<Utc>,
) -> (Vec<Duration>, Vec<guard::GuardAnswer>) {
    let (mut lat, mut answers) = (Vec::new(), Vec::new());
    for n in 0..5_000 {
        let user = format!("u{:05}", (n * 7919) % users);
        let req = GuardRequest { user_id: &user, amount: Cents(100), destination_id: None };
        let key = format!("b1-{run}-{n}");
        let hold = HoldRequest { key: &key, hold_for: TimeDelta::hours(1) };
        let t = Instant::now();
        answers.push(guard::check_and_hold(store, &GuardSettings::default(), &req, &hold, now).await.unwrap());
        lat.push(t.elapsed());
    }
    (lat, answers)
}

/// What the 16 paced callers ask together, in holds per second: far above what one destination sees (a few
/// transfers a day), below what the 16 reach unpaced.
const PACED_HOLDS_PER_SECOND: f64 = 1_000.0;

/// 16 tasks placing 300 holds each on one destination, a different one each run (`run`, keys tagged `tag`):
/// one after another as each is answered, or, with `period`, each call due `period` after the task's previous
/// one was due, its time counted from then (a late answer delays the next call, and that wait is counted too).
/// The latencies and the holds placed per second.
async fn sixteen_callers(store: &Store, i: usize, tag: &str, period: Option<Duration>) -> (Vec<Duration>, f64) {
    // User `i`'s own destination, its limit raised: a second one would make the one-caller loop's guards,
    // which name none, ambiguous.
    let (user, dest) = (format!("u{i:05}"), format!("acct-{i:05}"));
    register_account(store, &dest, &user, 1_000_000_000_000).await;
    let hold_for = TimeDelta::hours(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..16u32)
        .map(|c| {
            let (store, user, dest, tag) = (store.clone(), user.clone(), dest.clone(), tag.to_string());
            tokio::spawn(async move {
                // Paced callers start spread over one period, so they do not all ask at once.
                let mut due = period.map(|p| {
                    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p * c / 16, p);
                    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    i
                });
                let mut lat = Vec::new();
                for n in 0..300 {
                    let t = match due.as_mut() {
                        Some(i) => i.tick().await.into_std(),
                        None => Instant::now(),
                    };
                    let req = GuardRequest { user_id: &user, amount: Cents(100), destination_id: Some(&dest) };
                    let key = format!("{tag}-{i}-{c}-{n}");
                    let hold = HoldRequest { key: &key, hold_for };
                    let a = guard::check_and_hold(&store, &GuardSettings::default(), &req, &hold, Utc::now())
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
    (lat, rate)
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
    // Started under `nice`, so every thread it makes inherits the niceness (it is a thread's own on Linux:
    // renicing the process afterwards reaches its main thread alone).
    let mut child = std::process::Command::new("nice")
        .args(["-n", SANDBOX_NICE])
        .arg(bin)
        .args(["sandbox", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let nice = thread_nice(child.id());
    if nice.iter().any(|n| n.to_string() != SANDBOX_NICE) {
        eprintln!("the sandbox's threads run at nice {nice:?}, not {SANDBOX_NICE}: it shares the cores on equal terms");
    }
    (child, line.trim().to_string())
}

/// The niceness the sandbox is started at: it stands for Astra, whose servers do not share the worker's two
/// cores, so the arrivals it counts should not wait for a core the worker or the database holds.
const SANDBOX_NICE: &str = "-10";

/// The niceness of each thread of process `pid` (field 19 of `/proc/PID/task/TID/stat`).
fn thread_nice(pid: u32) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        // The command name, in parentheses, may hold spaces: the fields are counted after it.
        .filter_map(|stat| stat.rsplit_once(')')?.1.split_whitespace().nth(16)?.parse().ok())
        .collect()
}

/// Whether this harness can start a process at [`SANDBOX_NICE`] (it needs root or `CAP_SYS_NICE`), for the
/// report's machine line: `nice` run under `nice` prints the niceness it was given.
fn sandbox_favoured() -> bool {
    std::process::Command::new("nice")
        .args(["-n", SANDBOX_NICE, "nice"])
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == SANDBOX_NICE.as_bytes())
}

/// An approved user at the sandbox with a grant issued at `issued`: the grant's tokens as the sandbox gives them.
async fn sandbox_grant(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    issued: chrono::DateTime<Utc>,
) -> serde_json::Value {
    http.post(format!("{base}/_sandbox/users")).json(&serde_json::json!({"id": id})).send().await.unwrap();
    http.post(format!("{base}/_sandbox/grants"))
        .json(&serde_json::json!({"user_id": id, "issued_at": issued}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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
    let g = sandbox_grant(http, base, id, issued).await;
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
async fn bench_sync(report: &mut Report) {
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
    let target = (1.2 * (2 * active) as f64) as u64;
    report.row(
        "sync",
        "requests of one `transfer-sync` run",
        format!("{USERS} users, {active} with an open hold and one new transfer each; one run, SQLite"),
        format!(
            "{requests} requests ({refreshes} refreshes) in {secs:.1} s (target ≤ 1.2 × (users with activity + new \
             pages) = {target}); holds still open: {open}; status {:?}",
            summary.status()
        ),
    );
    let _ = sandbox.kill();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pg = args.iter().position(|a| a == "--pg").and_then(|i| args.get(i + 1)).cloned();
    if let Some(i) = args.iter().position(|a| a == "--rotation-case") {
        let n = |k: usize| args[i + k].parse::<u64>().unwrap();
        rotation::case(pg.as_deref(), n(1) as usize, n(2) as u32, n(3)).await;
        drop_made().await;
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    let mut report = Report::new(report::machine(pg.as_deref()).await);
    if part("guard") || part("guard-pg") {
        if only != "guard-pg" {
            let (sqlite, _d) = fresh(None).await;
            bench_guard(&mut report, "SQLite", &sqlite).await;
        }
        if let Some(admin) = &pg {
            let (url, _) = fresh(Some(admin)).await;
            bench_guard(&mut report, "PostgreSQL", &url).await;
            if only == "guard-pg" {
                report.keep_earlier_rows("guard");
                report.note("guard", "This run measured PostgreSQL only; the SQLite rows are an earlier run's.".into());
            }
        }
        report.write();
    }
    if part("serve") || part("serve-pg") {
        serve::bench_serve(&mut report, pg.as_deref(), only == "serve-pg").await;
        report.write();
    }
    if part("sync") {
        bench_sync(&mut report).await;
        report.write();
    }
    if part("aggregation") {
        aggregation::bench(&mut report, pg.as_deref()).await;
        report.write();
    }
    if part("no-op") {
        noop::bench(&mut report);
        report.write();
    }
    if part("rotation") {
        let n = std::env::var("BENCH_GRANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        let worker = rotation::bench(&mut report, pg.as_deref(), n).await;
        rotation::by_hand(&mut report, &worker).await;
    }
    // Not in the full run: `BENCH_ONLY=rotation-large` (about 40 minutes), `rotation-large-slow` (85 minutes).
    let large_grants = || std::env::var("BENCH_GRANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    if only == "rotation-large" {
        rotation::large(&mut report, pg.as_deref(), large_grants()).await;
    }
    if only == "rotation-large-slow" {
        rotation::large_slow(&mut report, pg.as_deref(), large_grants()).await;
    }
    report.write();
    drop_made().await;
}
