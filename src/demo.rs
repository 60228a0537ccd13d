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
    guard::{self, GuardRequest},
    money::Cents,
    outbox::{self, Deliverer},
    registry::{self, AchCreditLine, DestinationLine, ImportLine as RegistryLine},
    runner::{RunOptions, SlotResult, Worker, run_job},
    sandbox::CardRec,
    sandbox::{Faults, Hold, Sandbox, SandboxSettings, TransferRec},
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
        if job == JobName::ReprocessingCheck {
            between_jobs(&sandbox, &worker.store, opts.users).await?;
            w(
                &mut out,
                format!("{:<26} (meanwhile: some frozen cards unfrozen, some landed transfers failed at Astra)", ""),
            );
        }
        let t = Instant::now();
        // The latest slot only (a catch-up policy of `all` would also run the days before).
        let latest = worker.settings.job(job).and_then(|j| j.schedule.latest_at_or_before(now));
        let summary = run_job(&worker, job, &RunOptions { slot: latest, ..Default::default() }, now).await?;
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

    w(&mut out, String::new());
    registry::block_user(&worker.store, "demo-user-0005", "demo: manual review", Utc::now()).await?;
    for (user, dollars, dest) in guard_examples(&worker.store).await? {
        let req =
            GuardRequest { user_id: &user, amount: Cents::parse_dollars(dollars)?, destination_id: dest.as_deref() };
        let a = guard::check(&worker.store, &req, Utc::now()).await?;
        let verdict = match a.reason {
            None => format!("allowed, {} left today", Cents(a.headroom_cents.unwrap_or(0))),
            Some(r) => format!("denied: {r}{}", a.detail.map(|d| format!(" ({d})")).unwrap_or_default()),
        };
        w(&mut out, format!("guard {user} ${dollars:<8} -> {verdict}"));
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
    w(&mut out, format!("  {db} astra-worker guard --user demo-user-0001 --amount 2500.01"));
    worker.store.close().await;
    sandbox.stop();
    Ok(out)
}

/// Users that show each kind of answer: one under its limit, one over it, a frozen card, a blocked user and
/// a suspended one.
async fn guard_examples(store: &Store) -> anyhow::Result<Vec<(String, &'static str, Option<String>)>> {
    async fn pick(store: &Store, sql: String) -> sqlx::Result<Option<String>> {
        crate::with_pool!(store, |p| sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_optional(p)
            .await)
    }
    let healthy = "FROM limit_decision l JOIN destination d ON d.destination_id = l.destination_id \
                   JOIN grant_token g ON g.user_id = d.user_id AND g.status = 'active' AND g.user_status IS NULL";
    let mut out = Vec::new();
    for (state, dollars) in [("ok", "50.00"), ("blocked", "1.00")] {
        let sql = format!(
            "SELECT d.user_id {healthy} WHERE l.state = '{state}' AND l.bank_day = \
             (SELECT MAX(m.bank_day) FROM limit_decision m WHERE m.destination_id = l.destination_id) \
             ORDER BY d.user_id LIMIT 1"
        );
        if let Some(u) = pick(store, sql).await? {
            out.push((u, dollars, None));
        }
    }
    let frozen = "SELECT d.destination_id FROM destination d JOIN grant_token g ON g.user_id = d.user_id \
                  WHERE d.frozen AND g.status = 'active' ORDER BY 1 LIMIT 1";
    if let Some(card) = pick(store, frozen.into()).await? {
        let user = registry::destination(store, &card).await?.map(|d| d.user_id).unwrap_or_default();
        out.push((user, "10.00", Some(card)));
    }
    out.push(("demo-user-0005".into(), "10.00", None));
    let suspended = "SELECT user_id FROM grant_token WHERE user_status = 'suspended' ORDER BY 1 LIMIT 1";
    if let Some(u) = pick(store, suspended.into()).await? {
        out.push((u, "10.00", None));
    }
    Ok(out)
}

/// What happens between the mirror and the reprocessing check: the issuer unfreezes half the frozen cards
/// (in its registry and at Astra), and a few transfers that landed fail at Astra.
async fn between_jobs(sandbox: &Sandbox, store: &Store, users: usize) -> anyhow::Result<()> {
    for i in (3..users).step_by(100) {
        let card = format!("card-{i:04}");
        sandbox.state().set_card_frozen(&card, false);
        registry::set_frozen(store, &card, false, Utc::now()).await?;
    }
    let mut s = sandbox.state();
    for i in (11..users).step_by(40) {
        s.set_transfer_status(
            &format!("demo-trf-{i:04}-1"),
            TransferStatus::Failed,
            Some("R01: insufficient funds".into()),
        );
    }
    Ok(())
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
            let g = s.add_approved_user(&id, Some(format!("+1555{i:07}")), issued);
            if k == Kind::Suspended {
                s.set_user_status(&id, UserStatus::Suspended);
            }
            if k == Kind::Revoked {
                s.revoke_grant(&id);
            }
            // A client-issued card for some users, frozen, holding one transfer.
            if i % 50 == 3 {
                s.add_card(CardRec {
                    id: format!("card-{i:04}"),
                    user_id: id.clone(),
                    status: "approved".into(),
                    push_enabled: true,
                    pull_enabled: true,
                    frozen: true,
                });
                let at = now - TimeDelta::hours(3);
                s.add_transfer(TransferRec {
                    id: format!("demo-trf-{i:04}-card"),
                    user_id: id.clone(),
                    routine_id: Some(format!("rtn-card-{i:04}")),
                    routine_type: Some("account-to-card".into()),
                    source_id: Some(format!("acct-src-{i}")),
                    destination_id: Some(format!("card-{i:04}")),
                    amount: Cents(12_500),
                    payment_type: "debit".into(),
                    initiated: at,
                    updated: at,
                    estimated_clearing_date: at.date_naive(),
                    status: TransferStatus::Pending,
                    hold: Some(Hold::CardFrozen { card_id: format!("card-{i:04}") }),
                    failure_reason: None,
                });
                seeded.transfers += 1;
            }
            // Inbound transfers: one a day, some over the $2,500 limit, a few held for reprocessing.
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
                    destination_id: Some(format!("acct-{i:04}")),
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
        register(store, &id, i).await?;
        if k == Kind::Suspended {
            // What an earlier read of `GET /v1/user` would have recorded.
            grant_store::set_user_status(store, &id, "suspended", now).await?;
        }
        seeded.counts[k as usize] += 1;
    }
    Ok(seeded)
}

/// The fintech's registry: each user's account with a $2,500 daily limit (some banks in Chicago), and the
/// frozen cards.
async fn register(store: &Store, user_id: &str, i: usize) -> anyhow::Result<()> {
    let zone = if i.is_multiple_of(7) { "America/Chicago" } else { "America/New_York" };
    let mut lines = vec![RegistryLine::Destination(DestinationLine {
        destination_id: format!("acct-{i:04}"),
        user_id: user_id.into(),
        kind: "account".into(),
        bank_time_zone: zone.into(),
        daily_limit_cents: DEMO_LIMIT.0,
        frozen: None,
        push_enabled: None,
        pull_enabled: None,
    })];
    if i % 50 == 3 {
        lines.push(RegistryLine::Destination(DestinationLine {
            destination_id: format!("card-{i:04}"),
            user_id: user_id.into(),
            kind: "card".into(),
            bank_time_zone: zone.into(),
            daily_limit_cents: DEMO_LIMIT.0,
            frozen: Some(true),
            push_enabled: Some(true),
            pull_enabled: Some(true),
        }));
        lines.push(RegistryLine::AchCredit(AchCreditLine {
            routine_id: format!("rtn-card-{i:04}"),
            ach_credit_id: format!("ach-{i:04}"),
            addenda: format!("demo payout {i:04}"),
        }));
    }
    for l in &lines {
        registry::import(store, l, Utc::now()).await?;
    }
    Ok(())
}

const DEMO_LIMIT: Cents = Cents(250_000);

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
