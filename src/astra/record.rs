//! The `api_call` table: one row per HTTP attempt to Astra, with its request-id; never a token or a body.
//!
//! Rows are written by a task of their own, not by the request that made them: a request hands its row over
//! and goes on, and the task writes what has arrived, many rows in one statement while the last one was being
//! written. A refresh so no longer waits for the store between Astra's answer and storing the new pair, and a
//! rotation on PostgreSQL commits two statements a grant fewer (see BENCHMARKS.md). The rows of a run are
//! written by the time its report is (the runner flushes); a process flushes every log before it exits. A
//! process killed outright loses the rows it had not written yet (at most the ones of the moment): the call
//! log is Astra's audit trail, not a record anything decides on.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::{store::Store, store::with_pool};

pub(super) struct ApiCall {
    pub run_id: Option<String>,
    pub at: DateTime<Utc>,
    pub method: String,
    pub endpoint: String,
    pub user_id: Option<String>,
    pub attempt: i32,
    pub status: Option<i32>,
    pub latency_ms: i64,
    pub request_id: Option<String>,
    pub outcome: &'static str,
    pub error: Option<String>,
}

/// The most rows one statement writes (11 parameters each: well within PostgreSQL's 65,535 and SQLite's 32,766).
const MOST_TOGETHER: usize = 256;
/// Rows handed over and not yet taken by the writer: a request hands its row over at once until this many
/// wait, then waits its turn (a store that stalls slows the requests down, as writing each row itself did).
const QUEUED: usize = 4096;

enum Msg {
    Call(ApiCall),
    /// Answered once every row handed over before it is written (or failed to be).
    Flush(oneshot::Sender<()>),
}

/// One store's call log: rows handed over to its writer task, started on first use in the runtime of that use.
pub(super) struct CallLog {
    store: Store,
    writer: OnceLock<mpsc::Sender<Msg>>,
}

/// Every call log of the process, for [`flush_all`].
static LOGS: Mutex<Vec<Weak<CallLog>>> = Mutex::new(Vec::new());

impl CallLog {
    pub(super) fn new(store: Store) -> Arc<CallLog> {
        let log = Arc::new(CallLog { store, writer: OnceLock::new() });
        let mut logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
        logs.retain(|l| l.strong_count() > 0);
        logs.push(Arc::downgrade(&log));
        log
    }

    fn writer(&self) -> &mpsc::Sender<Msg> {
        self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUED);
            tokio::spawn(write(self.store.clone(), rx));
            tx
        })
    }

    /// Hands `row` over to the writer. Written at once instead when the writer is gone (its runtime ended).
    pub(super) async fn record(&self, row: ApiCall) {
        if let Err(mpsc::error::SendError(Msg::Call(row))) = self.writer().send(Msg::Call(row)).await {
            write_rows(&self.store, &[row]).await;
        }
    }

    /// Waits until every row handed over so far is written (or its write failed, which is logged).
    pub(super) async fn flush(&self) {
        let Some(writer) = self.writer.get() else { return };
        let (done, written) = oneshot::channel();
        if writer.send(Msg::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// Flushes every call log of the process (before it exits).
pub async fn flush_all() {
    let logs: Vec<Arc<CallLog>> =
        LOGS.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Weak::upgrade).collect();
    for log in logs {
        log.flush().await;
    }
}

/// The writer: takes what has arrived (up to [`MOST_TOGETHER`] rows), writes it in one statement, answers the
/// flushes taken with it, and again; ends when every sender is gone and the rows are written.
async fn write(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let (mut rows, mut flushes) = (Vec::new(), Vec::new());
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Call(row) => rows.push(row),
                Msg::Flush(done) => flushes.push(done),
            }
            next = if rows.len() < MOST_TOGETHER { rx.try_recv().ok() } else { None };
        }
        if !rows.is_empty() {
            write_rows(&store, &rows).await;
            rows.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes `rows` in one statement; a failure is logged with their request-ids, and the rows are not kept.
async fn write_rows(store: &Store, rows: &[ApiCall]) {
    let result = with_pool!(store, |p| {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO api_call (run_id, at, method, endpoint, user_id, attempt, status, latency_ms, request_id,
                                   outcome, error) ",
        );
        q.push_values(rows, |mut b, c| {
            b.push_bind(c.run_id.as_deref())
                .push_bind(c.at)
                .push_bind(c.method.as_str())
                .push_bind(c.endpoint.as_str())
                .push_bind(c.user_id.as_deref())
                .push_bind(c.attempt)
                .push_bind(c.status)
                .push_bind(c.latency_ms)
                .push_bind(c.request_id.as_deref())
                .push_bind(c.outcome)
                .push_bind(c.error.as_deref());
        });
        q.build().execute(p).await.map(|_| ())
    });
    if let Err(e) = result {
        let ids: Vec<&str> = rows.iter().filter_map(|c| c.request_id.as_deref()).collect();
        warn!(error = %e, calls = rows.len(), request_ids = ?ids, "could not record Astra calls");
    }
}

/// Calls older than the cutoff (the `retention` job's `api_calls`).
pub const FORGET: crate::store::forget::Forget =
    crate::store::forget::Forget { table: "api_call", key: "id", done_before: "at < $1" };
