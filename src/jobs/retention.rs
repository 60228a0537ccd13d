//! `retention` (daily): forgets the rows whose work is over and whose keeping has passed (the Astra call log,
//! processed webhooks, ended holds, finished runs and their slot claims, closed refresh intents), a batch at
//! a time, so the store does not grow without end. Money records (the transfer mirror, its events, the day
//! counters and decisions) and the outbox are never forgotten. Calls nobody: it needs no secrets.

use chrono::{TimeDelta, Utc};

use super::RunContext;
use crate::{
    astra, config::RetentionParams, inbox, reconcile::holds, store::forget::Forget, store::ledger, tokens::intents,
};

pub(super) async fn run(ctx: &RunContext<'_>, p: &RetentionParams) -> anyhow::Result<()> {
    let tables: [(&str, &Forget, TimeDelta); 6] = [
        ("api_calls", &astra::FORGET_CALLS, p.api_calls),
        ("webhooks", &inbox::store::FORGET, p.webhooks),
        ("holds", &holds::FORGET, p.holds),
        ("job_runs", &ledger::FORGET_RUNS, p.job_runs),
        ("slot_claims", &ledger::FORGET_CLAIMS, p.job_runs),
        ("refresh_intents", &intents::FORGET, p.refresh_intents),
    ];
    let db = &ctx.worker.store;
    let now = Utc::now();
    for (name, forget, keep) in tables {
        let cutoff = now - keep;
        if ctx.dry_run {
            ctx.tally(&format!("would_forget_{name}"), forget.count(db, cutoff).await?);
            continue;
        }
        let mut forgotten = 0;
        let stopped = loop {
            if ctx.stopping() {
                break true;
            }
            let n = forget.some(db, cutoff, p.batch_size).await?;
            forgotten += n;
            ctx.processed(n as i64);
            if n < u64::from(p.batch_size) {
                break false;
            }
        };
        ctx.tally(&format!("forgot_{name}"), forgotten as i64);
        if stopped {
            break;
        }
    }
    Ok(())
}
