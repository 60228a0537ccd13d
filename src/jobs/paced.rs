//! Working a run's items as fast as the request limiter allows: as many in flight as this process's rate needs
//! at the latency Astra shows ([`RequestLimiter::in_flight`](crate::astra::RequestLimiter::in_flight)), within
//! the job's `concurrency` ceiling; the next batch is fetched while the last one's items are still in flight.
//! Each item runs to its end independently of its siblings: an item's error that may pass (the store, Astra, an
//! unreadable grant) is counted as a retry (the run ends partial), and one that must stop the run
//! (configuration, a bug) stops new items and is returned once those in flight have ended.

use std::future::Future;

use futures::{StreamExt, stream::FuturesUnordered};
use tracing::error;

use super::{ItemOutcome, RunContext};
use crate::{exit::classify, failure::Status};

/// Runs `work` on every item `next_batch` yields until it yields an empty batch or the run stops.
pub(super) async fn run<I, B, BF, W, WF>(
    ctx: &RunContext<'_>,
    ceiling: u32,
    mut next_batch: B,
    work: W,
) -> anyhow::Result<()>
where
    B: FnMut() -> BF,
    BF: Future<Output = anyhow::Result<Vec<I>>>,
    W: Fn(I) -> WF,
    WF: Future<Output = anyhow::Result<()>>,
{
    let mut pending = Vec::new().into_iter();
    let mut exhausted = false;
    let mut running = FuturesUnordered::new();
    // The next batch is fetched while the items in flight go on (they may hold the store's connections).
    let mut fetching = std::pin::pin!(futures::future::OptionFuture::default());
    let mut fetch_pending = false;
    let mut fatal: Option<anyhow::Error> = None;
    let mut peak = 0;
    loop {
        let open = fatal.is_none() && !ctx.stopping();
        let pace = ctx.worker.limiter.in_flight(ceiling);
        while open && running.len() < pace {
            match pending.next() {
                Some(item) => running.push(work(item)),
                None => break,
            }
        }
        peak = peak.max(running.len());
        if open && !exhausted && !fetch_pending && pending.len() == 0 && running.len() < pace {
            fetching.set(Some(next_batch()).into());
            fetch_pending = true;
        }
        if !fetch_pending && running.is_empty() {
            break;
        }
        tokio::select! {
            Some(batch) = &mut fetching, if fetch_pending => {
                fetch_pending = false;
                match batch {
                    Ok(b) if b.is_empty() => exhausted = true,
                    Ok(b) => pending = b.into_iter(),
                    Err(e) => {
                        fatal.get_or_insert(e);
                    }
                }
            }
            Some(done) = running.next(), if !running.is_empty() => match done {
                Ok(()) => {}
                Err(e) => match classify(&e) {
                    Status::Config | Status::Bug => {
                        error!(error = %format!("{e:#}"), "stopping the run: an item met an error that does not pass");
                        fatal.get_or_insert(e);
                    }
                    _ => ctx.record(ItemOutcome::Retry(format!("{e:#}"))),
                },
            },
        }
    }
    ctx.tally_max("peak_in_flight", peak as i64);
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// [`run`] over a list known up front.
pub(super) async fn each<I, W, WF>(ctx: &RunContext<'_>, ceiling: u32, items: Vec<I>, work: W) -> anyhow::Result<()>
where
    W: Fn(I) -> WF,
    WF: Future<Output = anyhow::Result<()>>,
{
    let mut items = Some(items);
    run(ctx, ceiling, || std::future::ready(Ok(items.take().unwrap_or_default())), work).await
}
