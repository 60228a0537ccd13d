//! `test-hold`: holds each of a few items in flight for a while, for tests of the runner (signals, grace
//! period, slot claims). Exists only with `ASTRA_WORKER_TEST_HOOKS=1`.

use std::time::Duration;

use tracing::info;

use crate::jobs::RunContext;

pub(super) async fn run(ctx: &RunContext<'_>, items: u32, hold: Duration) -> anyhow::Result<()> {
    for item in 0..items {
        if ctx.stopping() {
            ctx.skipped(i64::from(items - item));
            break;
        }
        info!(item, "holding an item in flight");
        tokio::time::sleep(hold).await;
        ctx.processed(1);
    }
    Ok(())
}
