//! The service under load, against the sandbox in its own process: `POST /v1/guard` with a hold from `wrk`
//! (Debian's package, a process of its own, on loopback) — requests/s and latency percentiles; and webhook
//! intake at a fixed rate — accepted per second and the time from intake to the transfer counted
//! (`processed_at - received_at` in the inbox: processing a `transfer_created` is counting it).

use std::{sync::Arc, time::Duration};

use astra_worker::{
    app::Services,
    app::Worker,
    astra::Credentials,
    sandbox::SandboxSettings,
    store::{Lives, PG_CONNECTIONS, Store},
};
use chrono::{TimeDelta, Utc};
use secrecy::SecretString;

use super::{
    POOL_NOTE, Report, SOCKET_NOTE, copy_of, fewer_connections, fresh, guard_users, keyring, over_socket,
    register_account, seed_guard_store, seed_sandbox_grant, settings, spawn_sandbox,
};

const KEY: &str = "bench-api-key-0123456789";

/// Starts the service in this process on a free port; its base URL.
async fn start(store: Store, base: &str) -> (Arc<Worker>, String) {
    let mut s = settings(Some(base));
    s.astra.requests_per_second = 2_000;
    s.astra.burst = astra_worker::config::default_burst(2_000);
    let sb = SandboxSettings::default();
    let credentials = Credentials { client_id: sb.client_id.into(), client_secret: sb.client_secret.into() };
    let w = Arc::new(
        Worker::with_services(s, store, |s, l, st| Services::new(s, credentials, keyring(), None, l, st)).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(astra_worker::serve::serve_on(w.clone(), listener, SecretString::from(KEY.to_string())));
    (w, url)
}

/// `wrk` against `POST /v1/guard` with a new hold key per request, over [`guard_users`] users (limits raised so
/// every request holds). Each of wrk's threads seeds its own random users and tags its keys: seeded alike (by
/// the second), the two threads sent the same requests, so half of them were retries of a hold just placed.
/// `store` is one [`seed_guard_store`] filled with [`LIMIT`].
async fn guard_under_wrk(report: &mut Report, label: &str, store: Store, sandbox: &str) {
    let (w, base) = start(store, sandbox).await;
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        script.path(),
        format!(
            r#"threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end
init = function(args)
  math.randomseed(os.time() * 1000 + id)
end
n = 0
request = function()
  n = n + 1
  local u = math.random(0, {last})
  local body = string.format('{{"user_id":"u%05d","amount_cents":100,"destination_id":"acct-%05d","hold_key":"w%d-%d-%d"}}', u, u, id, n, math.random(1, 1000000000))
  return wrk.format("POST", "/v1/guard", {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {KEY}"}}, body)
end
"#,
            last = guard_users() - 1
        ),
    )
    .unwrap();
    // Saturation (as fast as 8 and 32 connections go), then paced: each connection waits 15–33 ms (24 on
    // average) after every answer before its next request, so it sends 1 ÷ (24 ms + its latency) requests/s:
    // 28, 56 and 64 connections offer about 1,000, 2,000 and 2,300 at a few milliseconds' latency (56 reach
    // 2,000 only at under 4 ms), and a slow answer delays only its own connection.
    let paced = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        paced.path(),
        std::fs::read_to_string(script.path()).unwrap() + "delay = function()\n  return math.random(15, 33)\nend\n",
    )
    .unwrap();
    for (connections, pacing) in
        [(8, None), (32, None), (28, Some(paced.path())), (56, Some(paced.path())), (64, Some(paced.path()))]
    {
        let out = std::process::Command::new("wrk")
            .args(["-t2", &format!("-c{connections}"), "-d10s", "--latency", "-s"])
            .arg(pacing.unwrap_or(script.path()))
            .arg(format!("{base}/v1/guard"))
            .output();
        match out {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                let pick = |p: &str| {
                    text.lines()
                        .find(|l| l.trim_start().starts_with(p))
                        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
                };
                let rps = text.lines().find(|l| l.starts_with("Requests/sec")).unwrap_or("Requests/sec: ?").to_string();
                let non2xx = text.lines().find(|l| l.contains("Non-2xx")).unwrap_or("").trim().to_string();
                let how = match pacing {
                    None => format!("{connections} connections"),
                    Some(_) => format!("paced, {connections} connections, 15–33 ms between requests"),
                };
                report.row(
                    "service",
                    format!("`POST /v1/guard` with a hold, {how} [{label}]"),
                    format!(
                        "`serve` in the harness's process, `wrk -t2 -d10s` on loopback, a new hold key per request \
                         over {} users",
                        guard_users()
                    ),
                    format!(
                        "{}, p50 {}, p99 {} {non2xx}",
                        rps.replace("Requests/sec:", "").trim().to_string() + " req/s",
                        pick("50%").unwrap_or_default(),
                        pick("99%").unwrap_or_default()
                    ),
                );
            }
            Err(e) => println!("POST /v1/guard under wrk [{label}]: wrk is not installed ({e}): apt-get install wrk"),
        }
    }
    w.shutdown.trigger("bench");
    w.store.close().await;
}

/// Webhooks at `rate` per second for `secs` seconds, each a new transfer at the sandbox.
async fn webhook_intake(report: &mut Report, label: &str, url: &str, sandbox: &str, rate: u32, secs: u32) {
    let store = Store::open_for(url, Lives::Long { connections: PG_CONNECTIONS }).await.unwrap();
    let http = reqwest::Client::new();
    let users = 200;
    for i in 0..users {
        let id = format!("wh{i:04}");
        seed_sandbox_grant(&http, sandbox, &store, &id, Utc::now() - TimeDelta::days(1), true).await;
        register_account(&store, &format!("acct-wh{i:04}"), &id, 1_000_000_000).await;
    }
    let (w, base) = start(store, sandbox).await;
    let secret = SecretString::from(SandboxSettings::default().client_secret);
    let total = rate * secs;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let started = std::time::Instant::now();
    let mut sends = Vec::new();
    for n in 0..total {
        tick.tick().await;
        let user = format!("wh{:04}", n % users);
        let id = format!("twh-{n}");
        http.post(format!("{sandbox}/_sandbox/transfers"))
            .json(&serde_json::json!({"id": id, "user_id": user, "amount_cents": 100, "destination_id": format!("acct-{user}")}))
            .send()
            .await
            .unwrap();
        let body = serde_json::json!({"webhook_type": "transfer_created", "webhook_id": format!("bw-{n}"), "user_id": user, "resource_id": id}).to_string();
        let sig = astra_worker::inbox::signature::sign(&secret, body.as_bytes());
        let (http, base) = (http.clone(), base.clone());
        sends.push(tokio::spawn(async move {
            http.post(format!("{base}/webhooks/astra"))
                .header("Astra-Verification", sig)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    for s in sends {
        ok += usize::from(matches!(s.await, Ok(Ok(200))));
    }
    let sent_for = started.elapsed().as_secs_f64();
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    let pending = || async {
        match &w.store {
            Store::Sqlite(p) => {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_inbox WHERE processed_at IS NULL")
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
            Store::Postgres(p) => {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_inbox WHERE processed_at IS NULL")
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
        }
    };
    while pending().await > 0 && std::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = astra_worker::inbox::store::list(&w.store, 1_000_000).await.unwrap();
    let mut lat: Vec<i64> =
        rows.iter().filter_map(|r| r.processed_at.map(|p| (p - r.received_at).num_milliseconds())).collect();
    lat.sort();
    let pct = |q: usize| lat.get(lat.len() * q / 100).copied().unwrap_or(-1);
    report.row(
        "service",
        format!("webhook intake [{label}]"),
        format!(
            "{total} signed `transfer_created` webhooks at {rate}/s, each a new transfer at the sandbox (its own \
             process); intake to counted is `processed_at − received_at`"
        ),
        format!(
            "{ok} of {total} accepted ({:.0}/s); intake to counted p50 {} ms, p99 {} ms, max {} ms (target p99 < 2 s); \
             {} processed",
            f64::from(ok as u32) / sent_for,
            pct(50),
            pct(99),
            lat.last().copied().unwrap_or(-1),
            lat.len()
        ),
    );
    w.shutdown.trigger("bench");
}

/// The daily limit of the service's users: high enough that every request holds.
const LIMIT: i64 = 1_000_000_000;

/// Both measurements on SQLite, and on PostgreSQL when given; with `guard_pg_only`, the guard's PostgreSQL rows
/// alone (the section's other rows stay as an earlier run left them).
pub(super) async fn bench_serve(report: &mut Report, pg: Option<&str>, guard_pg_only: bool) {
    report.note(
        "service",
        "Rows by connections alone are saturation: `wrk` sends as fast as its connections get answers, so req/s is \
         the capacity and p99 the queue at capacity. Paced rows offer a load (each connection waits 15–33 ms \
         after every answer): req/s is what was served of it, p50/p99 the latency at that load. wrk, the service, \
         the database and the sandbox share the 2 cores."
            .into(),
    );
    let (mut sandbox, base) = spawn_sandbox();
    if guard_pg_only {
        report.keep_earlier_rows("service");
        report.note(
            "service",
            "This run measured the guard on PostgreSQL only; the other rows are an earlier run's.".into(),
        );
    } else {
        let (sqlite, _d) = fresh(None).await;
        guard_under_wrk(report, "SQLite", seed_guard_store(&sqlite, LIMIT, PG_CONNECTIONS).await, &base).await;
        let (sqlite2, _d2) = fresh(None).await;
        webhook_intake(report, "SQLite", &sqlite2, &base, 200, 15).await;
    }
    if let Some(admin) = pg {
        // Over TCP, then through the Unix socket; each with the default's connections kept, then fewer; each on
        // a copy of one seeded database.
        let (seeded, _) = fresh(Some(admin)).await;
        seed_guard_store(&seeded, LIMIT, PG_CONNECTIONS).await.close().await;
        let socket = over_socket(&seeded).is_some();
        report.note("service", POOL_NOTE.into());
        if socket {
            report.note("service", SOCKET_NOTE.into());
        }
        for (label, near) in [("PostgreSQL", false), ("PostgreSQL, Unix socket", true)] {
            if near && !socket {
                continue;
            }
            for connections in [PG_CONNECTIONS, fewer_connections()] {
                let url = copy_of(admin, &seeded).await;
                let served = if near { over_socket(&url).unwrap() } else { url };
                let store = Store::open_for(&served, Lives::Long { connections }).await.unwrap();
                guard_under_wrk(report, &format!("{label}, pool of {connections}"), store, &base).await;
            }
        }
        if !guard_pg_only {
            let (url, _) = fresh(Some(admin)).await;
            webhook_intake(report, "PostgreSQL", &url, &base, 200, 15).await;
        }
    }
    let _ = sandbox.kill();
}
