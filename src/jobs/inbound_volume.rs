//! `inbound-volume` (daily, just after the bank's midnight): mirrors every user's recent transfers, then for
//! the day just ended and the day now running recomputes each destination's inbound total from the mirror,
//! records and fixes any drift of the counter, and records the decision (ok, warn, blocked) with its evidence.

use chrono::{TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};
use tracing::warn;

use crate::{
    astra::Call, bankday::BankDay, config::InboundVolumeParams, mirror, registry, runner::RunContext,
    services::Services, store::Store, tokens, with_pool,
};

pub async fn run(ctx: &RunContext<'_>, p: &InboundVolumeParams) -> anyhow::Result<()> {
    let svc = ctx.worker.services()?;
    let db = &ctx.worker.store;
    let since = Utc::now() - TimeDelta::from_std(p.lookback).unwrap_or(TimeDelta::days(3));
    let users = active_users(db).await?;
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

async fn active_users(db: &Store) -> sqlx::Result<Vec<String>> {
    with_pool!(db, |p| sqlx::query_scalar("SELECT user_id FROM grant_token WHERE status = 'active' ORDER BY user_id")
        .fetch_all(p)
        .await)
}

/// Mirrors one user's transfers since `since`; counts, never fails the run for one user's trouble with Astra.
pub async fn mirror_user(
    ctx: &RunContext<'_>,
    svc: &Services,
    user_id: &str,
    since: chrono::DateTime<Utc>,
    page: u32,
) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let call = Call::of(ctx, user_id);
    let listed = tokens::with_access(db, svc, &ctx.worker.settings, call, user_id, |access| async move {
        svc.client.transfers_since(call, &access, since, page).await
    })
    .await;
    let listing = match listed {
        Ok(Ok(l)) => l,
        Ok(Err(e)) if matches!(e, crate::astra::AstraError::ClientRejected) => return Err(e.into()),
        Ok(Err(e)) => {
            warn!(user_id, error = %e, "could not read the user's transfers; left for the next run");
            ctx.failed(1);
            return Ok(());
        }
        Err(e) if crate::exit::classify(&e) == crate::exit::Status::Config => return Err(e),
        Err(e) => {
            warn!(user_id, error = %format!("{e:#}"), "no usable access token; transfers not read");
            ctx.skipped(1);
            return Ok(());
        }
    };
    for bad in &listing.rejected {
        warn!(user_id, error = %bad, "transfer skipped: it does not parse");
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
    ctx.processed(1);
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
            let (total, n) = mirror::recompute(db, &d.destination_id, &key).await?;
            let counter = mirror::counter(db, &d.destination_id, &key).await?.map(|c| c.0).unwrap_or(0);
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
                mirror::set_counter(db, &d.destination_id, &key, total, n).await?;
            }
            let limit = d.daily_limit_cents;
            let state = if total >= limit {
                "blocked"
            } else if i128::from(total) * 100 >= i128::from(limit) * i128::from(p.warn_percent) {
                "warn"
            } else {
                "ok"
            };
            if day == today {
                ctx.tally(&format!("today_{state}"), 1);
            }
            record(db, &d.destination_id, &day, state, total, limit, drift, now).await?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn record(
    db: &Store,
    destination: &str,
    day: &BankDay,
    state: &str,
    total: i64,
    limit: i64,
    drift: i64,
    now: chrono::DateTime<Utc>,
) -> sqlx::Result<()> {
    with_pool!(db, |p| sqlx::query(
        "INSERT INTO limit_decision (destination_id, bank_day, state, total_cents, limit_cents, window_start,
             window_end, drift_cents, computed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (destination_id, bank_day) DO UPDATE SET state = excluded.state,
             total_cents = excluded.total_cents, limit_cents = excluded.limit_cents, drift_cents = excluded.drift_cents,
             computed_at = excluded.computed_at"
    )
    .bind(destination)
    .bind(day.key())
    .bind(state)
    .bind(total)
    .bind(limit)
    .bind(day.start())
    .bind(day.end())
    .bind(drift)
    .bind(now)
    .execute(p)
    .await
    .map(|_| ()))
}
