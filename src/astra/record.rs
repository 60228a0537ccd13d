//! The `api_call` table: one row per HTTP attempt to Astra, with its request-id; never a token or a body.
//!
//! Rows are written by a task of their own, not by the request that made them: a request hands its row over
//! and goes on, and the task writes what has arrived, many rows in one statement while the last one was being
//! written. A refresh so no longer waits for the store between Astra's answer and storing the new pair, and a
//! rotation commits two statements a grant fewer (see the README's Performance section). The rows of a run are
//! written by the time its report is (the runner flushes, within [`FLUSH_WITHIN`]); before a process exits it
//! flushes every log and waits for the writers of dropped ones. A process killed outright (or ending on a
//! broken stdout) loses the rows it had not written yet, the ones of its last moment: the call log is Astra's
//! audit trail, not a record anything decides on.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use chrono::{DateTime, Utc};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
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
/// The longest the end of a run waits for its calls to be written: a store that takes longer leaves them to be
/// written after the run's end (or before the process exits), and the run's claim is not held up for it.
pub const FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

enum Msg {
    Call(ApiCall),
    /// Answered once every row handed over before it is written (or failed to be).
    Flush(oneshot::Sender<()>),
}

/// One store's call log: rows handed over to its writer task, started on first use in the runtime of that use.
pub(super) struct CallLog {
    store: Store,
    writer: OnceLock<mpsc::Sender<Msg>>,
    /// The writer task, handed to [`DRAINING`] when the log is dropped: it ends once it has written what it holds.
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Every call log of the process, for [`flush_all`].
static LOGS: Mutex<Vec<Weak<CallLog>>> = Mutex::new(Vec::new());
/// The writers of logs dropped (their client gone, as a command's is when it returns) and perhaps still
/// writing: [`flush_all`] waits for them.
static DRAINING: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CallLog {
    pub(super) fn new(store: Store) -> Arc<CallLog> {
        let log = Arc::new(CallLog { store, writer: OnceLock::new(), task: Mutex::new(None) });
        let mut logs = locked(&LOGS);
        logs.retain(|l| l.strong_count() > 0);
        logs.push(Arc::downgrade(&log));
        log
    }

    fn writer(&self) -> &mpsc::Sender<Msg> {
        self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUED);
            *locked(&self.task) = Some(tokio::spawn(write(self.store.clone(), rx)));
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

impl Drop for CallLog {
    fn drop(&mut self) {
        if let Some(task) = locked(&self.task).take() {
            let mut draining = locked(&DRAINING);
            draining.retain(|t| !t.is_finished());
            draining.push(task);
        }
    }
}

/// Flushes every call log of the process and waits for the writers of those dropped to finish (before the
/// process exits).
pub async fn flush_all() {
    let logs: Vec<Arc<CallLog>> = locked(&LOGS).iter().filter_map(Weak::upgrade).collect();
    for log in logs {
        log.flush().await;
    }
    let draining: Vec<JoinHandle<()>> = locked(&DRAINING).drain(..).collect();
    for task in draining {
        let _ = task.await;
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

/// Writes `rows` in one statement; when that fails, each on its own (one row the store refuses costs that row
/// alone). A row that cannot be written is logged with its request-id and not kept.
async fn write_rows(store: &Store, rows: &[ApiCall]) {
    if rows.len() > 1 && insert(store, rows).await.is_ok() {
        return;
    }
    for row in rows {
        if let Err(e) = insert(store, std::slice::from_ref(row)).await {
            warn!(error = %e, request_id = row.request_id.as_deref(), "could not record an Astra call");
        }
    }
}

async fn insert(store: &Store, rows: &[ApiCall]) -> sqlx::Result<()> {
    with_pool!(store, |p| {
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
    })
}

/// Calls older than the cutoff (the `retention` job's `api_calls`).
pub const FORGET: crate::store::forget::Forget =
    crate::store::forget::Forget { table: "api_call", key: "id", done_before: "at < $1" };
