//! `transfer-sync` (every few minutes): reads the transfers of the users who need it now — those with a hold
//! open, so each hold meets its transfer within minutes, or one that expired in the last day — newest first,
//! back only to the newest transfer already seen (less an overlap). Its cost grows with activity, not with the
//! number of users; expired holds are closed on the way. The daily `inbound-volume` stays the backstop for
//! everyone.

use chrono::Utc;

use super::{
    RunContext, paced,
    transfers::{Window, read_user},
};
use crate::{
    config::TransferSyncParams,
    reconcile::{holds, mirror},
};

pub(super) async fn run(ctx: &RunContext<'_>, p: &TransferSyncParams) -> anyhow::Result<()> {
    let db = &ctx.worker.store;
    let now = Utc::now();
    let users = holds::users_to_sync(db, now).await?;
    if ctx.dry_run {
        ctx.tally("would_read_users", users.len() as i64);
        return Ok(());
    }
    let expired = holds::end_expired(db, now).await?;
    ctx.tally("holds_expired", expired as i64);
    if users.is_empty() {
        return Ok(());
    }
    let svc = ctx.worker.services()?;
    paced::each(ctx, p.concurrency, users, |u: String| {
        let svc = svc.clone();
        async move {
            let floor = now - p.lookback;
            let since = match mirror::newest_seen(&ctx.worker.store, &u).await? {
                Some(newest) => (newest - p.overlap).max(floor),
                None => floor,
            };
            read_user(ctx, &svc, &u, Window { since, page_size: p.page_size, max_pages: p.max_pages }).await
        }
    })
    .await
}
