//! `inbound-volume` (daily, just after the bank's midnight): mirrors every user's recent transfers (the daily
//! backstop of `transfer-sync`), then for the slot's bank days — the day just ended and the day running recomputes each destination's inbound total from the mirror,
//! records and fixes any drift of the counter, and records the decision (ok, warn, blocked) with its evidence.

use chrono::{TimeDelta, Utc};
use tracing::warn;

use super::{
    RunContext, paced,
    transfers::{Window, read_user},
};
use crate::{
    config::InboundVolumeParams,
    domain::BankDay,
    reconcile::{counters, registry},
    tokens::store as grants,
};

pub(super) async fn run(ctx: &RunContext<'_>, p: &InboundVolumeParams) -> anyhow::Result<()> {
    let svc = ctx.worker.services()?;
    let db = &ctx.worker.store;
    // Back `lookback` from now, and at least to the start of the day before the slot (a backfill of an older
    // slot reads the days it decides; a bank day starts at most 49 hours before the slot that follows it).
    let since = (Utc::now() - p.lookback).min(ctx.slot - TimeDelta::hours(49));
    let window = Window { since, page_size: p.page_size, max_pages: p.max_pages };
    let users = grants::active_users(db).await?;
    if ctx.dry_run {
        ctx.tally("would_mirror_users", users.len() as i64);
    } else {
        paced::each(ctx, p.concurrency, users, |u: String| {
            let svc = svc.clone();
            async move { read_user(ctx, &svc, &u, window).await }
        })
        .await?;
    }
    decide(ctx, p).await
}

/// Recomputes, fixes drift, records decisions for the slot's bank days: the day just ended and the day running
/// at the slot (catch-up decides each missed slot's days; `--slot` backfills that slot's). Each zone's day is one
/// pass over every destination in it, which returns only the days that drifted or are uncertain; a counter that
/// differs is fixed under its own lock; then each decision that changed is recorded (`computed_at` is when it
/// last changed), with the drifts found as evidence.
async fn decide(ctx: &RunContext<'_>, p: &InboundVolumeParams) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let now = Utc::now();
    for zone_name in registry::zones(db).await? {
        let zone = crate::domain::time::parse_zone(&zone_name).map_err(crate::failure::Failure::Config)?;
        let today = BankDay::of(zone, ctx.slot);
        for day in [today.previous(), today] {
            let key = day.key();
            let mut drifts = Vec::new();
            for f in counters::zone_day_findings(db, &zone_name, &key).await? {
                if f.uncertain {
                    ctx.tally("days_uncertain", 1);
                }
                if f.counter == f.total {
                    continue;
                }
                let fix = if ctx.dry_run {
                    counters::DayFix { counter: f.counter, total: f.total, transfers: f.transfers }
                } else {
                    counters::fix_day(db, &f.destination_id, &key).await?
                };
                let drift = fix.drift();
                if drift != 0 {
                    warn!(destination = %f.destination_id, bank_day = %key, counter = fix.counter, recomputed = fix.total, "inbound counter drifted; fixed");
                    ctx.tally("drift_found", 1);
                    ctx.tally("drift_cents", drift.abs());
                    drifts.push((f.destination_id, drift));
                }
            }
            if ctx.dry_run {
                continue;
            }
            let written = counters::decide_zone_day(db, &zone_name, &day, p.warn_percent, &drifts, now).await?;
            ctx.tally("decisions_written", written as i64);
            if day == today {
                for (state, n) in counters::zone_day_states(db, &zone_name, &key).await? {
                    ctx.tally(&format!("today_{state}"), n);
                }
            }
        }
    }
    Ok(())
}
