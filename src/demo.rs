//! `astra-worker demo`: the built-in Astra sandbox, a fresh SQLite file, about a thousand seeded users of
//! every kind, and every available job run once through the real runner, with a short report.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use anyhow::Context as _;
use base64::Engine as _;
use chrono::{TimeDelta, Utc};
use secrecy::SecretString;

use crate::{
    astra::{Credentials, TransferStatus, UserStatus},
    config::{JobName, Settings},
    crypto::Keyring,
    episodes,
    money::Cents,
    outbox::{self, Deliverer},
    runner::{RunOptions, SlotResult, Worker, run_job},
    sandbox::{Faults, Hold, Sandbox, SandboxSettings, TransferRec, UserRec},
    services::Services,
    store::Store,
    tokens::{self, ImportLine, store as grant_store},
};

pub struct DemoOptions {
    pub users: usize,
    /// The SQLite file the demo writes (replaced if it exists).
    pub database: PathBuf,
    pub requests_per_second: u32,
}

/// Kinds of seeded users, by share of the total.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fresh,
    Due,
    NearExpiry,
    Expired,
    Revoked,
    Suspended,
}

fn kind_of(i: usize) -> Kind {
    match i % 20 {
        0..=7 => Kind::Fresh,
        8..=14 => Kind::Due,
        15 | 16 => Kind::NearExpiry,
        17 => Kind::Expired,
        18 => Kind::Revoked,
        _ => Kind::Suspended,
    }
}

fn age(k: Kind, i: usize) -> TimeDelta {
    let jitter = TimeDelta::minutes((i as i64 * 37) % 600);
    match k {
        Kind::Fresh => TimeDelta::days(1) + jitter,
        Kind::Due | Kind::Revoked => TimeDelta::days(7) + jitter,
        Kind::NearExpiry => TimeDelta::days(9) + TimeDelta::hours(12) + jitter / 10,
        Kind::Expired | Kind::Suspended => TimeDelta::days(11) + jitter,
    }
}

/// Runs the demo and returns the report text.
pub async fn run(settings: Settings, opts: &DemoOptions) -> anyhow::Result<String> {
    let started = Instant::now();
    let sandbox = Sandbox::start_local(SandboxSettings::default()).await?;
    sandbox.set_faults(Faults {
        latency_ms: 1,
        latency_jitter_ms: 4,
        error_rate: 0.01,
        lost_refresh_rate: 0.01,
        hang_ms: 1500,
        ..Default::default()
    });
    let hook = Hook::start().await?;

    let mut settings = settings;
    settings.astra.base_url = reqwest::Url::parse(&sandbox.base_url())?;
    settings.astra.requests_per_second = opts.requests_per_second;
    settings.astra.burst = crate::limiter::default_burst(opts.requests_per_second);
    settings.astra.request_timeout = std::time::Duration::from_secs(1);
    settings.outbox.endpoint = Some(reqwest::Url::parse(&hook.url)?);

    remove_sqlite(&opts.database)?;
    let url = format!("sqlite://{}", opts.database.display());
    let store = Store::open(&url).await?;
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let keyring = Keyring::from_base64(&key_b64, &[])?;
    let sb = SandboxSettings::default();
    let credentials = Credentials { client_id: sb.client_id.into(), client_secret: sb.client_secret.into() };
    let hook_key = SecretString::from("demo-outbox-key".to_string());
    let deliverer = Deliverer::new(&settings.outbox, reqwest::Url::parse(&hook.url)?, hook_key)?;

    let seeded = seed(&sandbox, &store, &keyring, opts.users).await?;
    let worker = Worker::with_services(settings, store, |s, limiter, store| {
        Services::new(s, credentials, keyring, Some(deliverer), limiter, store)
    })?;

    let mut out = String::new();
    let w = |out: &mut String, line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    w(
        &mut out,
        format!("astra-worker demo: {} users against the built-in Astra sandbox ({})", opts.users, sandbox.base_url()),
    );
    w(&mut out, format!("  seeded: {}", seeded.describe()));
    w(&mut out, format!("  store:  {url}\n"));

    // The daily sweep first (it catches what a late rotation would miss), then the weekly rotation.
    let now = Utc::now();
    let order =
        [JobName::StaleAuthorizationSweep, JobName::TokenRotation, JobName::InboundVolume, JobName::ReprocessingCheck];
    for job in order {
        let t = Instant::now();
        let summary = run_job(&worker, job, &RunOptions::default(), now).await?;
        for r in &summary.reports {
            if let SlotResult::Ran { outcome, counts, details, .. } = &r.result {
                let secs = t.elapsed().as_secs_f64();
                let rate = if secs > 0.0 { counts.requests as f64 / secs } else { 0.0 };
                w(
                    &mut out,
                    format!(
                        "{job:<26} slot {}  {}: {} processed, {} failed, {} requests in {secs:.1}s ({rate:.0}/s of {}/s allowed)",
                        r.slot.format("%Y-%m-%d %H:%M UTC"),
                        outcome.as_str(),
                        counts.processed,
                        counts.failed,
                        counts.requests,
                        opts.requests_per_second
                    ),
                );
                w(&mut out, format!("{:<26} {}", "", figures(details)));
            }
        }
    }

    let grants = grant_store::count_by_status(&worker.store).await?;
    let eps = episodes::open_by_reason(&worker.store).await?;
    let msgs = outbox::store::count_by_kind(&worker.store).await?;
    w(&mut out, String::new());
    w(&mut out, format!("grants:   {}", pairs(&grants)));
    w(&mut out, format!("episodes: {} open ({})", eps.iter().map(|e| e.1).sum::<i64>(), pairs(&eps)));
    for (kind, total, delivered) in msgs {
        w(&mut out, format!("outbox:   {kind}: {total} written, {delivered} delivered (signed) to the demo endpoint"));
    }
    w(
        &mut out,
        format!("suspended users prompted: {}", hook.suspended_prompted.load(std::sync::atomic::Ordering::SeqCst)),
    );
    {
        let s = sandbox.state();
        w(
            &mut out,
            format!(
                "sandbox:  {} requests, {} refreshes, at most {} in any one second",
                s.calls.len(),
                s.total_refreshes(),
                s.max_in_one_second
            ),
        );
    }
    w(&mut out, format!("finished in {:.1}s\n", started.elapsed().as_secs_f64()));
    let db = format!("DATABASE_URL=sqlite://{}", opts.database.display());
    w(&mut out, "try next:".into());
    w(&mut out, format!("  {db} astra-worker runs"));
    w(&mut out, format!("  {db} astra-worker grants list --status needs_reauth"));
    w(&mut out, format!("  {db} astra-worker prompts list --kind reauthorization_prompt"));
    worker.store.close().await;
    sandbox.stop();
    Ok(out)
}

fn figures(details: &serde_json::Value) -> String {
    details
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.ends_with("_unix"))
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn pairs(v: &[(String, i64)]) -> String {
    v.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

fn remove_sqlite(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing the previous demo file {}", p.display()))?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Seeded {
    counts: [usize; 6],
    transfers: usize,
}

impl Seeded {
    fn describe(&self) -> String {
        let [fresh, due, near, expired, revoked, suspended] = self.counts;
        format!(
            "{fresh} fresh, {due} due this week, {near} near expiry, {expired} expired, {revoked} revoked at Astra, \
             {suspended} suspended (and expired); {} transfers, some over the bank limit or held for reprocessing",
            self.transfers
        )
    }
}

async fn seed(sandbox: &Sandbox, store: &Store, keyring: &Keyring, n: usize) -> anyhow::Result<Seeded> {
    let mut seeded = Seeded::default();
    let now = Utc::now();
    for i in 0..n {
        let k = kind_of(i);
        let id = format!("demo-user-{i:04}");
        let issued = now - age(k, i);
        let g = {
            let mut s = sandbox.state();
            let status = if k == Kind::Suspended { UserStatus::Suspended } else { UserStatus::Approved };
            s.upsert_user(UserRec { id: id.clone(), status, phone: Some(format!("+1555{i:07}")), email: None });
            let g = s.issue_grant(&id, issued);
            if k == Kind::Revoked {
                s.revoke_grant(&id);
            }
            // Inbound transfers: a few a day, some users over a $2,500 limit, a few held for reprocessing.
            for d in 0..3 {
                let at = now - TimeDelta::hours(6 + 24 * d);
                let cents = 40_000 + ((i as i64 * 7919 + d * 104_729) % 250_000);
                let hold = match (i % 25, d) {
                    (3, 0) => Some(Hold::DailyLimit { clears_at: s.bank_day_end(at) }),
                    _ => None,
                };
                let tid = format!("demo-trf-{i:04}-{d}");
                s.add_transfer(TransferRec {
                    id: tid,
                    user_id: id.clone(),
                    routine_id: None,
                    routine_type: Some("one-time".into()),
                    source_id: Some(format!("acct-src-{i}")),
                    destination_id: Some(format!("acct-dst-{i}")),
                    amount: Cents(cents),
                    payment_type: "ach".into(),
                    initiated: at,
                    updated: at,
                    estimated_clearing_date: (at + TimeDelta::days(1)).date_naive(),
                    status: if hold.is_some() { TransferStatus::Pending } else { TransferStatus::Processed },
                    hold,
                    failure_reason: None,
                });
                seeded.transfers += 1;
            }
            g
        };
        let line = ImportLine {
            user_id: id.clone(),
            access_token: SecretString::from(g.access_token),
            refresh_token: SecretString::from(g.refresh_token),
            refresh_token_issued_at: Some(issued.fixed_offset()),
            refresh_token_expires_at: None,
            access_token_expires_at: Some(g.access_expires_at.fixed_offset()),
            phone: Some(format!("+1555{i:07}")),
        };
        tokens::import(store, keyring, &line, now).await?;
        if k == Kind::Suspended {
            // What an earlier read of `GET /v1/user` would have recorded.
            grant_store::set_user_status(store, &id, "suspended", now).await?;
        }
        seeded.counts[k as usize] += 1;
    }
    Ok(seeded)
}

/// The fintech's endpoint, stood in by a loopback receiver that acknowledges every message.
struct Hook {
    url: String,
    suspended_prompted: Arc<AtomicU64>,
}

impl Hook {
    async fn start() -> anyhow::Result<Hook> {
        use axum::{Router, routing::post};
        let suspended_prompted = Arc::new(AtomicU64::new(0));
        let counter = suspended_prompted.clone();
        let app = Router::new().route(
            "/astra-worker/events",
            post(move |body: String| {
                let counter = counter.clone();
                async move {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let uid = v["user_id"].as_str().unwrap_or_default();
                    let idx: usize = uid.trim_start_matches("demo-user-").parse().unwrap_or(0);
                    if v["kind"] == "reauthorization_prompt" && kind_of(idx) == Kind::Suspended {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/astra-worker/events", l.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Ok(Hook { url, suspended_prompted })
    }
}
