//! Reading one user's transfers from Astra into the mirror, failing closed: what `inbound-volume` and
//! `transfer-sync` share. An item that does not parse marks the bank day it would count toward uncertain and
//! makes the run partial; a listing cut at its page cap makes the run partial; a token that cannot be had
//! for a reason that may pass makes the run partial. A complete, clean reading records when the user's
//! transfers were read (the guard's `as_of`) and clears what earlier readings left uncertain.

use chrono::{DateTime, Utc};
use tracing::{instrument, warn};

use super::{ItemOutcome, RunContext};
use crate::{
    app::Services,
    astra::{AstraError, model::Rejected},
    domain::BankDay,
    exit::classify,
    failure::Status,
    reconcile::{counters, mirror, registry},
    tokens::{self, NoToken},
};

/// How far back and how much one reading covers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) since: DateTime<Utc>,
    pub(super) page_size: u32,
    pub(super) max_pages: u32,
}

/// Mirrors one user's transfers within `w`; counts the outcome, and fails the run only for what must stop it.
#[instrument(name = "user", skip_all, fields(user_id = %user_id))]
pub(super) async fn read_user(ctx: &RunContext<'_>, svc: &Services, user_id: &str, w: Window) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let call = ctx.call(user_id);
    let started = Utc::now();
    let listed = tokens::with_access(db, &svc.tokens, call, user_id, |access| async move {
        svc.client().transfers_since(call, &access, w.since, w.page_size, w.max_pages).await
    })
    .await;
    let listing = match listed {
        Ok(Ok(l)) => l,
        Ok(Err(e @ AstraError::ClientRejected)) => return Err(e.into()),
        Ok(Err(e)) => {
            ctx.record(ItemOutcome::Retry(format!("could not read the user's transfers: {e}")));
            return Ok(());
        }
        Err(e) if e.downcast_ref::<NoToken>().is_some() => {
            // The grant died meanwhile: its episode prompts the user; nothing to read until then.
            warn!(error = %format!("{e:#}"), "no access token: transfers not read");
            ctx.record(ItemOutcome::Skip);
            return Ok(());
        }
        Err(e) if classify(&e) == Status::Config => return Err(e),
        Err(e) => {
            ctx.record(ItemOutcome::Retry(format!("no usable access token: {e:#}")));
            return Ok(());
        }
    };
    let now = Utc::now();
    for t in &listing.transfers {
        let u = mirror::upsert(db, user_id, t, now).await?;
        ctx.tally("uncertain_days_cleared", counters::clear_uncertain_transfer(db, &t.id).await? as i64);
        ctx.tally("transfers_new", i64::from(u.new));
        ctx.tally("transfers_changed", i64::from(u.changed));
        ctx.tally("followups", i64::from(u.followups));
        if t.destination_id.is_none() {
            ctx.tally("transfers_without_destination", 1);
        }
    }
    for bad in &listing.rejected {
        warn!(error = %bad.detail, "transfer not counted: it does not parse; its day is uncertain");
        mark_uncertain(ctx, user_id, bad, now).await?;
    }
    ctx.tally("transfers_rejected", listing.rejected.len() as i64);
    if !listing.rejected.is_empty() {
        let n = listing.rejected.len();
        ctx.record(ItemOutcome::Retry(format!("{n} transfers could not be read; their days are uncertain")));
        return Ok(());
    }
    if listing.truncated {
        ctx.tally("listings_truncated", 1);
        ctx.record(ItemOutcome::Retry(format!("the listing stopped at {} pages", w.max_pages)));
        return Ok(());
    }
    let newest = listing.transfers.iter().map(|t| t.initiated).max();
    mirror::record_read(db, user_id, started, newest).await?;
    let first_day = (w.since - chrono::TimeDelta::days(1)).date_naive().format("%Y-%m-%d").to_string();
    let cleared = counters::clear_uncertain_without_id(db, user_id, &first_day, started).await?;
    ctx.tally("uncertain_days_cleared", cleared as i64);
    ctx.record(ItemOutcome::Done);
    Ok(())
}

/// Marks the day an unreadable transfer would count toward: its destination's, or every destination of the
/// user when the item names none; the day of its `initiated` time, or today when that is unreadable too.
async fn mark_uncertain(ctx: &RunContext<'_>, user_id: &str, bad: &Rejected, now: DateTime<Utc>) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let destinations = match &bad.destination_id {
        Some(id) => registry::destination(db, id).await?.into_iter().collect(),
        None => registry::destinations_of(db, user_id).await?,
    };
    for d in destinations {
        let day = BankDay::of(d.zone(), bad.initiated.unwrap_or(now));
        let why = counters::Unreadable { transfer_id: bad.id.as_deref(), user_id, detail: &bad.detail };
        counters::mark_uncertain(db, &d.destination_id, &day.key(), &why, now).await?;
        ctx.tally("uncertain_days_marked", 1);
    }
    Ok(())
}
