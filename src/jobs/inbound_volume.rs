//! `inbound-volume` (daily, just after the bank's midnight): mirrors every user's recent transfers, then for
//! the day just ended and the day now running recomputes each destination's inbound total from the mirror,
//! records and fixes any drift of the counter, and records the decision (ok, warn, blocked) with its evidence.

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use tracing::{instrument, warn};

use super::{ItemOutcome, RunContext};
use crate::{
    app::Services,
    astra::AstraError,
    config::InboundVolumeParams,
    domain::BankDay,
    exit::classify,
    failure::Status,
    reconcile::{
        counters::{self, Decision, LimitState},
        mirror, registry,
    },
    tokens::{self, store as grants},
};

pub(super) async fn run(ctx: &RunContext<'_>, p: &InboundVolumeParams) -> anyhow::Result<()> {
    let svc = ctx.worker.services()?;
    let db = &ctx.worker.store;
    let since = Utc::now() - p.lookback;
    let users = grants::active_users(db).await?;
    if ctx.dry_run {
        ctx.tally("would_mirror_users", users.len() as i64);
    } else {
        futures::stream::iter(users)
            .map(Ok::<_, anyhow::Error>)
            .try_for_each_concurrent(p.concurrency as usize, |u| {
                let svc = svc.clone();
                async move {
                    if !ctx.stopping() {
                        mirror_user(ctx, &svc, &u, since, p.page_size).await?;
                    }
                    Ok(())
                }
            })
            .await?;
    }
    decide(ctx, p).await
}

/// Mirrors one user's transfers since `since`; counts, never fails the run for one user's trouble with Astra.
#[instrument(name = "user", skip_all, fields(user_id = %user_id))]
pub(super) async fn mirror_user(
    ctx: &RunContext<'_>,
    svc: &Services,
    user_id: &str,
    since: DateTime<Utc>,
    page: u32,
) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let call = ctx.call(user_id);
    let listed = tokens::with_access(db, &svc.tokens, call, user_id, |access| async move {
        svc.client().transfers_since(call, &access, since, page).await
    })
    .await;
    let listing = match listed {
        Ok(Ok(l)) => l,
        Ok(Err(e @ AstraError::ClientRejected)) => return Err(e.into()),
        Ok(Err(e)) => {
            ctx.record(ItemOutcome::Retry(format!("could not read the user's transfers: {e}")));
            return Ok(());
        }
        Err(e) if classify(&e) == Status::Config => return Err(e),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "no usable access token; transfers not read");
            ctx.record(ItemOutcome::Skip);
            return Ok(());
        }
    };
    for bad in &listing.rejected {
        warn!(error = %bad, "transfer skipped: it does not parse");
    }
    ctx.tally("transfers_rejected", listing.rejected.len() as i64);
    let now = Utc::now();
    for t in &listing.transfers {
        let u = mirror::upsert(db, user_id, t, now).await?;
        ctx.tally("transfers_new", i64::from(u.new));
        ctx.tally("transfers_changed", i64::from(u.changed));
        ctx.tally("followups", i64::from(u.followups));
        if t.destination_id.is_none() {
            ctx.tally("transfers_without_destination", 1);
        }
    }
    ctx.record(ItemOutcome::Done);
    Ok(())
}

/// Recomputes, fixes drift, records decisions for the day just ended and the day running.
async fn decide(ctx: &RunContext<'_>, p: &InboundVolumeParams) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let now = Utc::now();
    for d in registry::all_destinations(db).await? {
        let today = BankDay::of(d.zone(), now);
        for day in [today.previous(), today] {
            let key = day.key();
            let (total, n) = counters::recompute(db, &d.destination_id, &key).await?;
            let counter = counters::counter(db, &d.destination_id, &key).await?.map(|c| c.0).unwrap_or(0);
            let drift = counter - total;
            if drift != 0 {
                warn!(destination = %d.destination_id, bank_day = %key, counter, recomputed = total, "inbound counter drifted; fixed");
                ctx.tally("drift_found", 1);
                ctx.tally("drift_cents", drift.abs());
            }
            if ctx.dry_run {
                continue;
            }
            if drift != 0 {
                counters::set_counter(db, &d.destination_id, &key, total, n).await?;
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
