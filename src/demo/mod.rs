//! `astra-worker demo`: the built-in Astra sandbox, a fresh SQLite file, about a thousand seeded users of
//! every kind, and every available job run once through the real runner, with a short report. `seed` makes
//! the users, `report` writes what happened.

mod report;
mod seed;
mod service;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::{
    app::Services,
    app::Worker,
    astra::Credentials,
    config::{JobName, Settings},
    domain::money::Cents,
    domain::time::utc_seconds,
    outbox::{self, Deliverer},
    reconcile::registry::{self},
    reconcile::{
        guard::{self, GuardRequest, HoldRequest},
        holds,
    },
    runner::{RunOptions, SlotResult, run_job},
    sandbox::{Faults, Sandbox, SandboxSettings},
    store::{Session, Store},
    tokens::Keyring,
    tokens::episodes,
    tokens::store as grant_store,
};

use report::{Hook, figures, guard_examples, pairs};
use seed::between_jobs;

/// Holds and the same-day sync: one user asks twice the same day before Astra shows anything; the first request
/// is held, the second denied; the routine's transfer appears at Astra, `transfer-sync` reads it within
/// minutes, and the hold ends as the transfer is counted, once.
async fn same_day(worker: &Worker, sandbox: &Sandbox) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let Some((user, _, _)) = guard_examples(&worker.store).await?.into_iter().next() else { return Ok(out) };
    let Some(dest) = registry::destinations_of(&worker.store, &user).await?.into_iter().next() else { return Ok(out) };
    let settings = &worker.settings.guard;
    let ask =
        |cents: i64| GuardRequest { user_id: &user, amount: Cents(cents), destination_id: Some(&dest.destination_id) };
    let now = Utc::now();
    let room = guard::check(&worker.store, settings, &ask(1), now).await?.headroom_cents.unwrap_or(0) + 1;
    let amount = (room * 3 / 4).max(1);
    let hold_for = settings.hold_for;
    let first =
        guard::check_and_hold(&worker.store, settings, &ask(amount), &HoldRequest { key: "demo-r1", hold_for }, now)
            .await?;
    let second =
        guard::check_and_hold(&worker.store, settings, &ask(amount), &HoldRequest { key: "demo-r2", hold_for }, now)
            .await?;
    let verdict = |a: &guard::GuardAnswer| match (a.reason, &a.hold) {
        (None, Some(h)) => format!("allowed and held until {}", utc_seconds(h.expires_at)),
        (None, None) => "allowed".to_string(),
        (Some(r), _) => {
            format!(
                "denied: {r} ({} held, {} left)",
                Cents(a.held_cents.unwrap_or(0)),
                Cents(a.headroom_cents.unwrap_or(0))
            )
        }
    };
    out.push(format!("holds: {user} asks for {} twice the same day, before Astra shows any transfer", Cents(amount)));
    out.push(format!("  --hold demo-r1 -> {}", verdict(&first)));
    out.push(format!("  --hold demo-r2 -> {}", verdict(&second)));
    // The routine demo-r1 stood for is created with client_correlation_id = demo-r1; Astra lists its transfer.
    sandbox.state().add_transfer(crate::sandbox::TransferRec {
        id: "demo-held-transfer".into(),
        user_id: user.clone(),
        routine_id: Some("demo-routine-r1".into()),
        routine_type: Some("one-time".into()),
        client_correlation_id: Some("demo-r1".into()),
        source_id: Some("demo-source".into()),
        destination_id: Some(dest.destination_id.clone()),
        amount: Cents(amount),
        payment_type: "ach".into(),
        initiated: now,
        updated: now,
        estimated_clearing_date: (now + chrono::TimeDelta::days(1)).date_naive(),
        status: crate::astra::TransferStatus::Pending,
        hold: None,
        failure_reason: None,
    });
    let latest = worker.settings.job(JobName::TransferSync).and_then(|j| j.schedule.latest_at_or_before(now));
    let opts = RunOptions { slot: latest, force: true, ..Default::default() };
    for r in run_job(worker, JobName::TransferSync, &opts, now).await?.reports {
        if let SlotResult::Ran { outcome, counts, details, .. } = &r.result {
            out.push(format!(
                "  transfer-sync (every 5 min): {}: {} users read, {} requests; {}",
                outcome.as_str(),
                counts.processed,
                counts.requests,
                figures(details)
            ));
        }
    }
    let ended = holds::get(&mut Session::pooled(&worker.store), "demo-r1").await?.and_then(|(h, _)| h.end_reason);
    let after = guard::check(&worker.store, settings, &ask(1), Utc::now()).await?;
    out.push(format!(
        "  hold demo-r1: {}; the day now counts {} with {} held (transfers read {})",
        ended.unwrap_or_else(|| "open".into()),
        Cents(after.day_total_cents.unwrap_or(0)),
        Cents(after.held_cents.unwrap_or(0)),
        after.as_of.map(utc_seconds).unwrap_or_else(|| "never".into())
    ));
    Ok(out)
}

pub(crate) struct DemoOptions {
    pub users: usize,
    /// The SQLite file the demo writes (replaced if it exists).
    pub database: PathBuf,
    pub requests_per_second: u32,
}

/// Runs the demo and returns the report text.
pub(crate) async fn run(settings: Settings, opts: &DemoOptions) -> anyhow::Result<String> {
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
    settings.astra.burst = crate::config::default_burst(opts.requests_per_second);
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

    let seeded = seed::users(&sandbox, &store, &keyring, opts.users).await?;
    let worker = std::sync::Arc::new(Worker::with_services(settings, store, |s, limiter, store| {
        Services::new(s, credentials, keyring, Some(deliverer), limiter, store)
    })?);

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
    // Retention last: everything here is minutes old, so nothing is past its keeping yet.
    let order = [
        JobName::StaleAuthorizationSweep,
        JobName::TokenRotation,
        JobName::InboundVolume,
        JobName::ReprocessingCheck,
        JobName::Retention,
    ];
    // transfer-sync runs in the same-day part below, once a hold exists.
    for job in order {
        if job == JobName::ReprocessingCheck {
            between_jobs(&sandbox, &worker.store, opts.users).await?;
            w(
                &mut out,
                format!("{:<26} (meanwhile: some frozen cards unfrozen, some landed transfers failed at Astra)", ""),
            );
        }
        for line in run_latest(&worker, job, opts.requests_per_second, now).await? {
            w(&mut out, line);
        }
    }

    w(&mut out, String::new());
    registry::block_user(&worker.store, "demo-user-0005", "demo: manual review", Utc::now()).await?;
    for (user, dollars, dest) in guard_examples(&worker.store).await? {
        let req =
            GuardRequest { user_id: &user, amount: Cents::parse_dollars(dollars)?, destination_id: dest.as_deref() };
        let a = guard::check(&worker.store, &worker.settings.guard, &req, Utc::now()).await?;
        let verdict = match a.reason {
            None => format!("allowed, {} left today", Cents(a.headroom_cents.unwrap_or(0))),
            Some(r) => format!("denied: {r}{}", a.detail.map(|d| format!(" ({d})")).unwrap_or_default()),
        };
        w(&mut out, format!("guard {user} ${dollars:<8} -> {verdict}"));
    }
    w(&mut out, String::new());
    for line in same_day(&worker, &sandbox).await? {
        w(&mut out, line);
    }
    w(&mut out, String::new());
    for line in service::service(&worker, &sandbox).await? {
        w(&mut out, line);
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

/// Runs the latest slot of `job` (only: a catch-up policy of `all` would also run the days before) and
/// reports it in two lines.
async fn run_latest(worker: &Worker, job: JobName, allowed: u32, now: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
    let t = Instant::now();
    let latest = worker.settings.job(job).and_then(|j| j.schedule.latest_at_or_before(now));
    let summary = run_job(worker, job, &RunOptions { slot: latest, ..Default::default() }, now).await?;
    let mut lines = Vec::new();
    for r in &summary.reports {
        if let SlotResult::Ran { outcome, counts, details, .. } = &r.result {
            let secs = t.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { counts.requests as f64 / secs } else { 0.0 };
            lines.push(format!(
                "{job:<26} slot {}  {}: {} processed, {} failed, {} requests in {secs:.1}s ({rate:.0}/s of {allowed}/s allowed)",
                r.slot.format("%Y-%m-%d %H:%M UTC"),
                outcome.as_str(),
                counts.processed,
                counts.failed,
                counts.requests,
            ));
            lines.push(format!("{:<26} {}", "", figures(details)));
        }
    }
    Ok(lines)
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
