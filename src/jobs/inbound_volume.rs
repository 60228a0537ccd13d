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
    reconcile::{
        counters::{self, Decision, LimitState},
        registry,
    },
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
/// at the slot (catch-up decides each missed slot's days; `--slot` backfills that slot's).
async fn decide(ctx: &RunContext<'_>, p: &InboundVolumeParams) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let now = Utc::now();
    for d in registry::all_destinations(db).await? {
        let today = BankDay::of(d.zone(), ctx.slot);
        for day in [today.previous(), today] {
            let key = day.key();
            let fix = if ctx.dry_run {
                let (total, transfers) = counters::recompute(db, &d.destination_id, &key).await?;
                let counter = counters::counter(db, &d.destination_id, &key).await?.map(|c| c.0).unwrap_or(0);
                counters::DayFix { counter, total, transfers }
            } else {
                counters::fix_day(db, &d.destination_id, &key).await?
            };
            let (total, drift) = (fix.total, fix.drift());
            if drift != 0 {
                warn!(destination = %d.destination_id, bank_day = %key, counter = fix.counter, recomputed = total, "inbound counter drifted; fixed");
                ctx.tally("drift_found", 1);
                ctx.tally("drift_cents", drift.abs());
            }
            if counters::uncertainty(db, &d.destination_id, &key).await?.is_some() {
                ctx.tally("days_uncertain", 1);
            }
            if ctx.dry_run {
                continue;
            }
            let limit = d.daily_limit_cents;
            let state = LimitState::of(total, limit, p.warn_percent);
            if day == today {
                ctx.tally(&format!("today_{}", state.as_str()), 1);
            }
            let decision = Decision { destination_id: &d.destination_id, day: &day, state, total, limit, drift };
            counters::record_decision(db, &decision, now).await?;
        }
    }
    Ok(())
}
