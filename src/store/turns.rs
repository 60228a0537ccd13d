//! Writers' turns on a SQLite database, within one process. SQLite lets one writer in at a time; the others
//! wait in its busy handler, which sleeps in steps that grow to 100 ms and so misses the moment the lock is
//! free. Under concurrent holds that was the service's p99 on SQLite (`POST /v1/guard`, 8 connections: 174–366
//! ms; with turns 7.6–8.5 ms, at the same 2,200–2,300 req/s). A write transaction takes its turn here before
//! it begins, so the write transactions of one process queue in order and each starts when the one before it
//! ends. Single-statement writes (the call log, leases, the inbox) take no turn: they, and writers of other
//! processes, still meet the transactions in the busy handler (busy timeout 10 s). PostgreSQL has no turns:
//! its writers lock only the rows they write.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, LazyLock, Mutex, PoisonError},
};

use tokio::sync::OwnedMutexGuard;

use super::{BUSY_TIMEOUT, Store};

/// One queue per database file, shared by every store of this process that opened it by that name.
static TURNS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = LazyLock::new(Default::default);

/// A writer's turn, held until it is dropped (`None` on PostgreSQL).
pub struct Turn {
    _held: Option<OwnedMutexGuard<()>>,
}

impl Store {
    /// Waits for this process's turn to write to the store's database, in the order asked: take it before a
    /// write transaction begins, and hold it until the transaction has committed or rolled back. Never take
    /// a second one while holding one. A turn not had within the busy timeout is a temporary store error, as
    /// SQLite's own wait would be.
    pub async fn write_turn(&self) -> sqlx::Result<Turn> {
        let Store::Sqlite(p) = self else { return Ok(Turn { _held: None }) };
        let file = p.connect_options().get_filename().to_path_buf();
        let queue = TURNS.lock().unwrap_or_else(PoisonError::into_inner).entry(file).or_default().clone();
        match tokio::time::timeout(BUSY_TIMEOUT, queue.lock_owned()).await {
            Ok(held) => Ok(Turn { _held: Some(held) }),
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no turn to write to the SQLite database within {} s", BUSY_TIMEOUT.as_secs()),
            ))),
        }
    }
}
