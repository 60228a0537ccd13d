//! Rotation against the sandbox in its own process. Each case runs in a child process of the harness
//! (`bench --rotation-case …`), so the peak memory (VmHWM) measured is that case's worker alone: achieved ÷
//! configured request rate, the most requests the sandbox saw in any one second (a sliding window) against
//! rate + burst with the longest the sandbox held its state locked (a stall of its own bunches what it counts
//! next), and the per-grant cost with Astra answering at once (the store, HTTP and CPU). Beside it, the
//! loop a fintech writes by hand: one refresh at a time, the new pair stored after each.

use std::time::Instant;

use astra_worker::{
    app::{Services, Worker},
    astra::Credentials,
    config::JobName,
    runner::{RunOptions, run_job},
    sandbox::SandboxSettings,
    store::Store,
};
use chrono::{TimeDelta, Utc};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{Report, fresh, keyring, peak_rss_kib, sandbox_grant, seed_sandbox_grant, settings, spawn_sandbox};

/// One case: `n` due grants rotated at `rate` requests/s with Astra answering in `latency_ms`; the figures as
/// one JSON line on stdout.
pub(super) async fn case(pg: Option<&str>, n: usize, rate: u32, latency_ms: u64) {
    let (mut sandbox, base) = spawn_sandbox();
    let http = reqwest::Client::new();
    let (url, _dir) = fresh(pg).await;
    let store = Store::open(&url).await.unwrap();
    let mut s = settings(Some(&base));
    s.astra.requests_per_second = rate;
    s.astra.burst = astra_worker::config::default_burst(rate);
    let now = Utc::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let (http, base, store) = (&http, &base, &store);
            async move {
                seed_sandbox_grant(http, base, store, &format!("u{i:06}"), now - TimeDelta::days(8), false).await
            }
        })
        .await;
    settle(&store).await;
    let sb = SandboxSettings::default();
    let credentials = Credentials { client_id: sb.client_id.into(), client_secret: sb.client_secret.into() };
    let w = Worker::with_services(s, store, |s, l, st| Services::new(s, credentials, keyring(), None, l, st)).unwrap();
    if std::env::var_os(GATE).is_some() {
        // Seeded: wait for the harness's word, given once every case running beside this one has seeded too.
        println!("{SEEDED}");
        std::io::stdin().read_line(&mut String::new()).unwrap();
    }
    http.post(format!("{base}/_sandbox/faults")).json(&json!({"latency_ms": latency_ms})).send().await.unwrap();
    let before = peak_rss_kib();
    let t = Instant::now();
    let summary = run_job(&w, JobName::TokenRotation, &RunOptions::default(), Utc::now()).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stats: Value = http.get(format!("{base}/_sandbox/stats")).send().await.unwrap().json().await.unwrap();
    println!(
        "{}",
        json!({
            "secs": secs, "requests": stats["requests"], "refreshes": stats["refreshes"],
            "max_in_one_second": stats["max_requests_in_one_second"], "burst": astra_worker::config::default_burst(rate),
            "sandbox_longest_hold_ms": stats["longest_lock_hold_ms"],
            "rss_mib": peak_rss_kib() / 1024, "rss_before_mib": before / 1024, "status": format!("{:?}", summary.status()),
        })
    );
    if std::env::var_os("BENCH_TIMELINE").is_some() {
        timeline(&http, &base, stats["requests"].as_u64().unwrap_or(0)).await;
    }
    let _ = sandbox.kill();
}

/// Leaves the seeded store as a week between the import and the rotation would: the seeding's writes flushed
/// by a checkpoint and, on PostgreSQL, its dead row versions vacuumed and the tables analyzed. (The machines
/// this runs on keep PostgreSQL's autovacuum off; a production server runs it.) Otherwise the rotation's first
/// minute pays for the seeding: at 200,000 grants on PostgreSQL its commits waited on WAL writes while the
/// checkpoint of the seeding's writes ran, and it reached 0.60–0.65 of the rate there.
async fn settle(store: &Store) {
    match store {
        Store::Postgres(p) => {
            sqlx::raw_sql("VACUUM ANALYZE").execute(p).await.unwrap();
            sqlx::raw_sql("CHECKPOINT").execute(p).await.unwrap();
        }
        Store::Sqlite(p) => drop(sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)").execute(p).await.unwrap()),
    }
}

/// To stderr, for a case that falls short of its rate: the requests the sandbox saw in each 10 s of the run,
/// so a shortfall shows whether it is the start, the end or a dip on the way.
async fn timeline(http: &reqwest::Client, base: &str, requests: u64) {
    let calls: Vec<Value> =
        http.get(format!("{base}/_sandbox/calls?limit={requests}")).send().await.unwrap().json().await.unwrap();
    let at = |c: &Value| c["at"].as_str().and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok());
    let times: Vec<_> = calls.iter().filter_map(at).collect();
    let (Some(&first), Some(&last)) = (times.iter().min(), times.iter().max()) else { return };
    eprintln!(
        "timeline: {} requests over {:.1} s from the first to the last",
        times.len(),
        (last - first).as_seconds_f64()
    );
    let mut buckets = std::collections::BTreeMap::<i64, u64>::new();
    for t in times {
        *buckets.entry((t - first).num_seconds() / 10).or_default() += 1;
    }
    let line: Vec<String> = buckets.iter().map(|(b, n)| format!("{}s:{n}", b * 10)).collect();
    eprintln!("timeline (requests per 10 s from the first): {}", line.join(" "));
}

/// Set in a case's environment: it says [`SEEDED`] on stdout once seeded and waits for a line on stdin.
const GATE: &str = "BENCH_CASE_GATE";
const SEEDED: &str = "seeded";

/// A case's child process, its stdout read line by line.
struct CaseChild {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

fn spawn_case(pg: Option<&str>, n: usize, rate: u32, latency_ms: u64, gated: bool) -> CaseChild {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args(["--rotation-case", &n.to_string(), &rate.to_string(), &latency_ms.to_string()]);
    if let Some(pg) = pg {
        c.args(["--pg", pg]);
    }
    if gated {
        c.env(GATE, "1").stdin(std::process::Stdio::piped());
    }
    let mut child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::inherit()).spawn().unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    CaseChild { child, out }
}

impl CaseChild {
    /// Reads until the gated case says it has seeded.
    fn seeded(&mut self) {
        use std::io::BufRead;
        let mut line = String::new();
        while line.trim() != SEEDED {
            line.clear();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "a case ended before it had seeded");
        }
    }

    /// Lets a gated case start measuring.
    fn go(&mut self) {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
    }

    /// The figures the case printed last.
    fn figures(mut self) -> Value {
        use std::io::Read;
        let mut text = String::new();
        self.out.read_to_string(&mut text).unwrap();
        self.child.wait().unwrap();
        serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_else(|_| panic!("case output: {text}"))
    }
}

fn run_case(pg: Option<&str>, n: usize, rate: u32, latency_ms: u64) -> Value {
    spawn_case(pg, n, rate, latency_ms, false).figures()
}

/// The cases, both stores at both rates and latencies (and on SQLite 200/s at 100 ms, the grants issue's own
/// case), and the per-grant cost.
pub(super) async fn bench(report: &mut Report, pg: Option<&str>, n: usize) -> Vec<(u64, f64)> {
    let mut by_latency = Vec::new();
    type Cases<'a> = (&'a str, Option<&'a str>, &'a [(u32, u64)]);
    let stores: Vec<Cases> = vec![
        ("SQLite", None, &[(100, 20), (100, 200), (200, 100), (1_000, 20), (1_000, 200)]),
        ("PostgreSQL", pg, &[(100, 20), (100, 200), (1_000, 20), (1_000, 200)]),
    ];
    let (mut figures, mut ceilings) = (Vec::new(), Vec::new());
    for (label, url, cases) in stores {
        if label == "PostgreSQL" && url.is_none() {
            continue;
        }
        for &(rate, latency_ms) in cases {
            let c = measured_case(report, "rotation", label, url, n, rate, latency_ms);
            if label == "SQLite" && rate == 1_000 {
                by_latency.push((latency_ms, c.grants_per_second));
            }
            figures.push(c);
        }
        let v = run_case(url, 5_000, 100_000, 0);
        let per = v["secs"].as_f64().unwrap() * 1e3 / 5_000.0;
        ceilings.push(format!("{label} {per:.2} ms a grant, so at most about {:.0} requests/s", 2_000.0 / per));
        report.row(
            "rotation",
            format!("per-grant cost, Astra answering at once [{label}]"),
            "5,000 due grants at 100,000/s and no latency: wall time ÷ grants (the store, HTTP and CPU, two cores)",
            format!("{per:.2} ms per grant"),
        );
    }
    report.note("rotation", targets(&figures));
    report.note(
        "rotation",
        format!(
            "What the store and the CPU allow with Astra answering at once (two requests a grant, the worker, the \
             sandbox and the database on the same two cores): {}. A configured rate above that is not reached.",
            ceilings.join("; ")
        ),
    );
    by_latency
}

/// The note that weighs `figures` against the targets.
fn targets(figures: &[CaseFigures]) -> String {
    let worst = figures.iter().map(|c| c.ratio).fold(f64::MAX, f64::min);
    let over: Vec<_> = figures.iter().filter_map(|c| c.over.clone()).collect();
    format!(
        "Targets: achieved ÷ configured ≥ 0.97 (worst here {worst:.2}); the most in any one second ≤ rate + burst \
         ({}); peak RSS flat and under 64 MiB.",
        if over.is_empty() { "met in every case".to_string() } else { format!("not met in {}", over.join("; ")) }
    )
}

/// What one measured case came to.
struct CaseFigures {
    ratio: f64,
    /// Set when the most requests in any one second passed rate + burst.
    over: Option<String>,
    grants_per_second: f64,
}

/// Runs one case in its child process and writes its row into `section`.
fn measured_case(
    report: &mut Report,
    section: &'static str,
    label: &str,
    url: Option<&str>,
    n: usize,
    rate: u32,
    latency_ms: u64,
) -> CaseFigures {
    let v = run_case(url, n, rate, latency_ms);
    record_case(report, section, label, n, rate, latency_ms, "", &v)
}

/// Writes one case's figures (`v`, its child's JSON line) into `section`.
#[allow(clippy::too_many_arguments)]
fn record_case(
    report: &mut Report,
    section: &'static str,
    label: &str,
    n: usize,
    rate: u32,
    latency_ms: u64,
    alongside: &str,
    v: &Value,
) -> CaseFigures {
    let secs = v["secs"].as_f64().unwrap();
    let requests = v["requests"].as_f64().unwrap();
    let ratio = requests / secs / f64::from(rate);
    let (max, burst) = (v["max_in_one_second"].as_u64().unwrap(), v["burst"].as_u64().unwrap());
    let over = (max > u64::from(rate) + burst)
        .then(|| format!("{label} {rate}/s at {latency_ms} ms: {max} > {}", u64::from(rate) + burst));
    report.row(
        section,
        format!("{n} due grants, {rate}/s, {latency_ms} ms [{label}]"),
        format!(
            "one run: a refresh and a `GET /v1/user` per grant; the worker in a child process of its own{alongside}"
        ),
        format!(
            "{:.2} of the rate ({:.0} req/s over {secs:.0} s); at most {max} in any one second (rate + burst = {}); \
             the sandbox's state locked at most {:.1} ms at a time; peak RSS {} MiB; {}",
            ratio,
            requests / secs,
            u64::from(rate) + burst,
            v["sandbox_longest_hold_ms"].as_f64().unwrap_or(f64::NAN),
            v["rss_mib"],
            v["status"].as_str().unwrap_or("?")
        ),
    );
    CaseFigures { ratio, over, grants_per_second: v["refreshes"].as_f64().unwrap() / secs }
}

/// Rotation of `n` (200,000) due grants on SQLite and PostgreSQL at 1,000 requests/s, 20 and 200 ms, one case at
/// a time: the rate held and the memory flat at ten times the grants. The report is written after each case.
pub(super) async fn large(report: &mut Report, pg: Option<&str>, n: usize) {
    let mut figures = Vec::new();
    for (label, url) in stores(pg) {
        for latency_ms in [20, 200] {
            figures.push(measured_case(report, "rotation-large", label, url, n, 1_000, latency_ms));
            report.write();
        }
    }
    report.note("rotation-large", targets(&figures));
}

/// The four cases of `n` (200,000) due grants at 100 requests/s (67 minutes each at this size), SQLite and
/// PostgreSQL at 20 and 200 ms, run at once, each with its own sandbox, worker and database (together they ask
/// less of the cores than one case at 1,000/s), measuring from when all four have seeded.
pub(super) async fn large_slow(report: &mut Report, pg: Option<&str>, n: usize) {
    let cases: Vec<(&str, Option<String>, u64)> = stores(pg)
        .into_iter()
        .flat_map(|(label, url)| [20, 200].map(|l| (label, url.map(str::to_string), l)))
        .collect();
    let together = cases.len();
    // Each seeds, then all start measuring together: no case is measured beside another's seeding.
    let mut children: Vec<_> = cases
        .into_iter()
        .map(|(label, url, latency_ms)| (label, latency_ms, spawn_case(url.as_deref(), n, 100, latency_ms, true)))
        .collect();
    children.iter_mut().for_each(|(_, _, c)| c.seeded());
    children.iter_mut().for_each(|(_, _, c)| c.go());
    let mut figures = Vec::new();
    for (label, latency_ms, child) in children {
        let v = child.figures();
        let alongside = format!("; the {together} cases seeded, then measured at once");
        figures.push(record_case(report, "rotation-large-slow", label, n, 100, latency_ms, &alongside, &v));
    }
    report.note("rotation-large-slow", targets(&figures));
}

/// SQLite, and PostgreSQL when the harness was given its URL.
fn stores(pg: Option<&str>) -> Vec<(&'static str, Option<&str>)> {
    let mut s = vec![("SQLite", None)];
    if pg.is_some() {
        s.push(("PostgreSQL", pg));
    }
    s
}

/// The loop a fintech writes by hand, at each latency: one refresh at a time, stored after each (SQLite);
/// its refreshes per second against the worker's at 1,000 requests/s configured.
pub(super) async fn by_hand(report: &mut Report, worker: &[(u64, f64)]) {
    for &(latency_ms, worker_rate) in worker {
        let (mut sandbox, base) = spawn_sandbox();
        let http = reqwest::Client::new();
        let (url, _dir) = fresh(None).await;
        let db = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc")).await.unwrap();
        sqlx::query("CREATE TABLE grants (user_id TEXT PRIMARY KEY, access_token TEXT, refresh_token TEXT)")
            .execute(&db)
            .await
            .unwrap();
        let n = 400;
        for i in 0..n {
            let id = format!("h{i:04}");
            let g = sandbox_grant(&http, &base, &id, Utc::now() - TimeDelta::days(8)).await;
            sqlx::query("INSERT INTO grants VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(g["access_token"].as_str())
                .bind(g["refresh_token"].as_str())
                .execute(&db)
                .await
                .unwrap();
        }
        http.post(format!("{base}/_sandbox/faults")).json(&json!({"latency_ms": latency_ms})).send().await.unwrap();
        let sb = SandboxSettings::default();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, refresh_token FROM grants").fetch_all(&db).await.unwrap();
        let t = Instant::now();
        for (user, refresh) in &rows {
            let pair: Value = http
                .post(format!("{base}/v1/oauth/token"))
                .basic_auth(&sb.client_id, Some(&sb.client_secret))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            sqlx::query("UPDATE grants SET access_token = $1, refresh_token = $2 WHERE user_id = $3")
                .bind(pair["access_token"].as_str())
                .bind(pair["refresh_token"].as_str())
                .bind(user)
                .execute(&db)
                .await
                .unwrap();
        }
        let rate = f64::from(n) / t.elapsed().as_secs_f64();
        report.row(
            "by-hand",
            format!("{latency_ms} ms latency"),
            format!(
                "{n} grants refreshed one at a time, each new pair written to SQLite before the next; the worker's \
                 figure is its rotation at 1,000 requests/s configured, same latency (a refresh and a status read \
                 per grant)"
            ),
            format!(
                "by hand {rate:.1} refreshes/s; the worker {worker_rate:.0} grants/s: {:.0}× as fast",
                worker_rate / rate
            ),
        );
        let _ = sandbox.kill();
    }
}
