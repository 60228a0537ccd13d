//! The store: one handle over SQLite (one host) or PostgreSQL (many instances), chosen by `DATABASE_URL`.
//! SQL sits in small functions next to its use (`ledger`, …); the [`with_pool!`] macro runs the same
//! portable statement on whichever pool is open, with `$1` placeholders (SQLite accepts them too).

pub mod faults;
pub mod forget;
pub mod ledger;
mod turns;

pub use turns::Turn;

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use sqlx::{
    PgPool, Postgres, SqlitePool,
    migrate::MigrateError,
    pool::{PoolConnection, PoolOptions},
    postgres::PgConnectOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use crate::failure::{Classify, Status};

/// The default store: a SQLite file in the working directory, created on first use.
pub const DEFAULT_URL: &str = "sqlite://astra-worker.db";

/// How long the process that opens a store lives, which decides how it keeps its PostgreSQL connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lives {
    /// A command or a `--run-once` job: connections are opened as they are needed.
    Briefly,
    /// `serve` and the daemon: `connections` (`store.postgres_connections`) are opened together at the start and
    /// kept for the life of the process (a connection that dies is replaced in the background when it is found
    /// at its release, inline when found at its acquisition), so no request waits for one to be opened. Opening
    /// one is not cheap: with TLS, sqlx 0.9 takes about 90 ms on loopback (its sockets lack `TCP_NODELAY`, so
    /// two handshake flights each wait out a delayed ACK; transact-rs/sqlx#4335). A server that gives fewer
    /// does not stop the start; the pool opens more when they are needed, as a brief one does.
    Long { connections: u32 },
}

/// How long a SQLite writer waits for the database's lock (and for its turn, see [`Store::write_turn`]).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a PostgreSQL statement waits for each lock it needs (another transaction's row, a unique key
/// being inserted), set as `lock_timeout` on every connection as it opens ([`pg_pool_options`]): a statement
/// that waits longer fails as temporary (`55P03`), as a SQLite writer does past [`BUSY_TIMEOUT`], instead of
/// waiting out whatever holds the lock (an operator's open transaction). Migrations wait without it.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets a PostgreSQL session's [`LOCK_TIMEOUT`].
fn set_lock_timeout() -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SET lock_timeout = '{}ms'", LOCK_TIMEOUT.as_millis()))
}

/// A PostgreSQL pool's options: [`pool_options`], and each connection's [`LOCK_TIMEOUT`] set as it opens, by a
/// `SET` (which a connection pooler in front of the server passes on, where a startup option may be refused).
fn pg_pool_options(max_connections: u32) -> PoolOptions<Postgres> {
    pool_options(max_connections).after_connect(|conn, _| {
        Box::pin(async move { sqlx::query(set_lock_timeout()).execute(conn).await.map(|_| ()) })
    })
}

/// The most locks one of a refresh's PostgreSQL statements waits for: storing the pair takes the grant's row,
/// its fingerprint's key and its intent's row in one statement, each waiting up to [`LOCK_TIMEOUT`].
const LOCKS_A_STATEMENT_WAITS_FOR: u32 = 3;

/// The most connections a brief process's PostgreSQL pool opens, and what a long-lived one keeps unless
/// `store.postgres_connections` says otherwise.
pub const PG_CONNECTIONS: u32 = 16;

/// What both stores' pools share. sqlx pings a connection before it hands it out (and after each use), so a
/// connection that died while idle, as each one does in a failover, is replaced instead of failing a
/// statement. The ping stays: skipping it for connections used in the last second took a guard's read from
/// p50 280 to 210 µs on PostgreSQL, but every connection cut in that second then failed a run. A [`Session`]
/// skips it only between the statements of one call, a millisecond or two: a connection cut there fails the
/// call, as one cut during a statement does.
fn pool_options<DB: sqlx::Database>(max_connections: u32) -> PoolOptions<DB> {
    PoolOptions::new().max_connections(max_connections).acquire_timeout(ACQUIRE_TIMEOUT)
}

/// How long a statement waits for one of the pool's connections.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a long-lived store's start waits for the server to give all of its connections.
const WARM_UP: Duration = Duration::from_secs(3);

/// Opens `pool`'s `connections` together before the process answers anything: one must open (a store that
/// cannot be reached or refuses the credentials fails the start); the rest are waited for [`WARM_UP`] at most,
/// and a server that gives fewer is said in a warning, not a failure.
async fn warm_up(pool: PgPool, connections: u32) -> sqlx::Result<PgPool> {
    let first = pool.acquire().await?;
    let rest = (1..connections).map(|_| tokio::time::timeout(WARM_UP, pool.acquire()));
    let opened = futures::future::join_all(rest).await.into_iter().filter(|c| matches!(c, Ok(Ok(_)))).count() + 1;
    drop(first);
    if opened < connections as usize {
        tracing::warn!(opened, wanted = connections, "PostgreSQL gave fewer connections than the pool keeps");
    }
    Ok(pool)
}

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same body against whichever pool the store holds (`$p` is the pool).
macro_rules! with_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($p) => $body,
            $crate::store::Store::Postgres($p) => $body,
        }
    };
}
pub(crate) use with_pool;

/// The statements of one short call on one connection. sqlx pings a connection as it hands it out and again as
/// it takes it back (see [`pool_options`]): a round trip each, about a tenth of the guard service's throughput
/// on PostgreSQL. A call of a few statements (the guard's read, its hold's placement and any look-up of its key)
/// holds one PostgreSQL connection for them, so it pays one pair for all. Never wait on anything but its own
/// statements while one is held ([`Session::release`] it first, as a guard waiting in a destination-day's
/// lane does): callers each holding one and waiting for another would empty the pool. Nothing that outlives a
/// statement (a transaction, a `SET`) is begun on the held connection: it goes back to the pool as it came.
/// On SQLite each statement takes the pool's connection, as with the store.
pub struct Session<'a> {
    store: &'a Store,
    held: Option<PoolConnection<Postgres>>,
}

impl<'a> Session<'a> {
    /// A session holding a PostgreSQL connection from the start (on SQLite, the pool's).
    pub(crate) async fn hold(store: &'a Store) -> sqlx::Result<Session<'a>> {
        let held = match store {
            Store::Postgres(p) => Some(p.acquire().await?),
            Store::Sqlite(_) => None,
        };
        Ok(Session { store, held })
    }

    /// A session whose statements each take the pool's connection.
    pub fn pooled(store: &'a Store) -> Session<'a> {
        Session { store, held: None }
    }

    /// The store the session's statements run on.
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// Gives the held connection back to the pool; the session's later statements take the pool's (a pinged
    /// one: release after a failed statement before trying again).
    pub(crate) fn release(&mut self) {
        self.held = None;
    }

    /// The store, and the connection held if one is (see [`with_session`]).
    pub(crate) fn parts(&mut self) -> (&'a Store, Option<&mut sqlx::PgConnection>) {
        (self.store, self.held.as_deref_mut())
    }
}

/// Runs the same body on a session's held connection, or else on its store's pool (`$e` is the executor). One
/// statement per body: `$e` is moved into it (a `&mut PgConnection` in one arm), and on the pool two would take
/// two connections.
macro_rules! with_session {
    ($session:expr, |$e:ident| $body:expr) => {
        match $session.parts() {
            (_, Some($e)) => $body,
            (store, None) => $crate::store::with_pool!(store, |$e| $body),
        }
    };
}
pub(crate) use with_session;

/// Opening or migrating the store failed; says which store (without its password) and why.
#[derive(Debug, thiserror::Error)]
#[error("database {url}: {what}{}: {source}", if *.disk_full { " (the filesystem holding it is full)" } else { "" })]
pub struct StoreError {
    url: String,
    what: &'static str,
    /// SQLite names a full disk only sometimes (an open fails with a plain I/O error): said when it is so.
    disk_full: bool,
    status: Status,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    fn new(url: &str, what: &'static str, source: sqlx::Error) -> StoreError {
        let disk_full = sqlite_storage_error(&source) && sqlite_disk_full(url);
        // An I/O error on a full disk is temporary: room may be made. Any other stays what it is.
        let status = if disk_full { Status::Temporary } else { classify_sqlx(&source) };
        StoreError { url: crate::secrets::redact_url(url), what, disk_full, status, source: source.into() }
    }
}

/// SQLite's I/O and full-disk result codes.
fn sqlite_storage_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if sqlite_code(db.as_ref()).is_some_and(|c| c == 10 || c == 13))
}

/// Whether the filesystem holding the SQLite database at `url` has (almost) no room left.
fn sqlite_disk_full(url: &str) -> bool {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = Path::new(path.split('?').next().unwrap_or(path));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    rustix::fs::statvfs(dir).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) < 256 * 1024)
}

impl Classify for StoreError {
    fn status(&self) -> Status {
        self.status
    }
}

impl Store {
    /// Opens the store named by `url` for a brief command (applies no migration).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_for(url, Lives::Briefly).await
    }

    /// Opens the store named by `url` for a process that lives as long as `lives` says (applies no migration).
    pub async fn connect_for(url: &str, lives: Lives) -> Result<Store, StoreError> {
        let err = |what, source| StoreError::new(url, what, source);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(|e| err("invalid URL", e))?;
            let pool = match lives {
                Lives::Briefly => pg_pool_options(PG_CONNECTIONS).connect_with(options).await,
                Lives::Long { connections } => {
                    // Kept: no lifetime, no idle timeout, and sqlx opens again what is closed, up to
                    // `min_connections`, in a task of its own.
                    let connections = connections.max(1);
                    let pool = pg_pool_options(connections)
                        .min_connections(connections)
                        .idle_timeout(None)
                        .max_lifetime(None)
                        .connect_lazy_with(options);
                    warm_up(pool, connections).await
                }
            }
            .map_err(|e| err("cannot connect", e))?;
            return Ok(Store::Postgres(pool));
        }
        if !url.starts_with("sqlite:") {
            return Err(err(
                "unsupported URL",
                sqlx::Error::Configuration("DATABASE_URL must start with sqlite: or postgres://".into()),
            ));
        }
        let memory = in_memory(url);
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| err("invalid URL", e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool =
            pool_options(if memory { 1 } else { 8 }).connect_with(opts).await.map_err(|e| err("cannot open", e))?;
        Ok(Store::Sqlite(pool))
    }

    /// Opens the store for a brief command and brings its schema up to date.
    pub async fn open(url: &str) -> anyhow::Result<Store> {
        Store::open_for(url, Lives::Briefly).await
    }

    /// Opens the store for a process that lives as long as `lives` says and brings its schema up to date.
    pub async fn open_for(url: &str, lives: Lives) -> anyhow::Result<Store> {
        let store = Store::connect_for(url, lives).await?;
        // SQLite has no lock of its own around migrations (PostgreSQL's migrator takes an advisory lock): two
        // processes starting on a fresh file would both apply them. A lock file beside the database serializes
        // them.
        let _guard = match &store {
            Store::Sqlite(_) if in_memory(url) => None,
            Store::Sqlite(p) => migration_lock(p).await.map_err(|e| StoreError {
                url: crate::secrets::redact_url(url),
                what: "cannot take the migration lock",
                disk_full: false,
                status: Status::Config,
                source: e.into(),
            })?,
            Store::Postgres(_) => None,
        };
        store.migrate().await.map_err(|e| {
            let (status, disk_full) = match &e {
                MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _) => {
                    (classify_sqlx(inner), sqlite_storage_error(inner) && sqlite_disk_full(url))
                }
                _ => (Status::Config, false),
            };
            StoreError {
                url: crate::secrets::redact_url(url),
                what: "migration failed",
                disk_full,
                status,
                source: e.into(),
            }
        })?;
        Ok(store)
    }

    /// Applies the migrations the schema lacks (callers on SQLite hold the migration lock; see [`Store::open`]).
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        match self {
            Store::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await?,
            Store::Postgres(p) => {
                // Another process's migrations (the migrator's advisory lock) and tables in use are waited for
                // without the statements' lock timeout; the connection goes back with it set again.
                let mut c = p.acquire().await?;
                sqlx::query("SET lock_timeout = 0").execute(&mut *c).await?;
                // `run_direct` on the connection itself (what `run` does once it has one): through `Acquire`, the
                // future is not `Send` for every lifetime, and the store could not be opened in a spawned task.
                let migrated = sqlx::migrate!("./migrations/postgres").run_direct(None, &mut *c, false).await;
                if sqlx::query(set_lock_timeout()).execute(&mut *c).await.is_err() {
                    c.close_on_drop();
                }
                migrated?
            }
        }
        Ok(())
    }

    /// Whether the store answers with every migration this build knows applied (what `/readyz` reports).
    pub async fn is_migrated(&self) -> sqlx::Result<bool> {
        let (known, applied): (usize, i64) = match self {
            Store::Sqlite(p) => (
                sqlx::migrate!("./migrations/sqlite").migrations.len(),
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_one(p).await?,
            ),
            Store::Postgres(p) => (
                sqlx::migrate!("./migrations/postgres").migrations.len(),
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_one(p).await?,
            ),
        };
        Ok(usize::try_from(applied).is_ok_and(|a| a >= known))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// The longest one of a refresh's statements can wait: for a connection, and then on PostgreSQL for each
    /// lock it needs, on SQLite for this process's write turn and the database's lock. (How long it runs
    /// once it has them is the database's affair.)
    pub fn longest_wait(&self) -> Duration {
        match self {
            Store::Postgres(_) => ACQUIRE_TIMEOUT + LOCKS_A_STATEMENT_WAITS_FOR * LOCK_TIMEOUT,
            Store::Sqlite(_) => ACQUIRE_TIMEOUT + 2 * BUSY_TIMEOUT,
        }
    }

    /// Which pool this is: the same for every clone of one store, different for two stores open at once (the
    /// address of the pool's shared connect options, which a pool keeps for its life).
    pub fn identity(&self) -> usize {
        match self {
            Store::Sqlite(p) => std::sync::Arc::as_ptr(&p.connect_options()) as usize,
            Store::Postgres(p) => std::sync::Arc::as_ptr(&p.connect_options()) as usize,
        }
    }

    pub async fn close(&self) {
        with_pool!(self, |p| p.close().await)
    }
}

/// An exclusive lock on `<database file>.migrate-lock`, held until dropped; `None` when the pool has no file.
async fn migration_lock(pool: &SqlitePool) -> std::io::Result<Option<std::fs::File>> {
    let file = pool.connect_options().get_filename().to_path_buf();
    if file.as_os_str().is_empty() {
        return Ok(None);
    }
    let lock_path = PathBuf::from(format!("{}.migrate-lock", file.display()));
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        f.lock()?;
        Ok(Some(f))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Whether a SQLite URL names an in-memory database (`sqlite::memory:`, `mode=memory`, `file::memory:`). Its
/// options cannot tell: sqlx names such a database `file:sqlx-in-memory-N`, which looks like a file's name.
fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Database errors: unreachable, busy or out of space is temporary; refused credentials, a missing
/// database, a read-only or unopenable file is configuration; anything else is a bug.
pub(crate) fn classify_sqlx(e: &sqlx::Error) -> Status {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => Status::Temporary,
        E::Configuration(_) => Status::Config,
        E::Database(db) => match db.code().as_deref() {
            // PostgreSQL: authentication, missing database, missing role.
            Some("28P01" | "28000" | "3D000" | "42501") => Status::Config,
            // PostgreSQL: shutting down, starting up, too many connections, serialization, deadlock, disk full,
            // a lock or a statement that timed out (`lock_timeout`, a `statement_timeout` the URL sets).
            Some("57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "53100" | "55P03" | "57014") => {
                Status::Temporary
            }
            // SQLite primary result codes: BUSY, LOCKED, FULL (temporary); READONLY, CANTOPEN, PERM, AUTH
            // (configuration). An open on a full disk fails with IOERR_SHMSIZE: `StoreError` tells it by the
            // filesystem's free space.
            _ if matches!(sqlite_code(db.as_ref()), Some(5 | 6 | 13)) => Status::Temporary,
            _ if matches!(sqlite_code(db.as_ref()), Some(8 | 14 | 3 | 23)) => Status::Config,
            _ => Status::Bug,
        },
        _ => Status::Bug,
    }
}

/// SQLite's primary result code, of a SQLite error only (PostgreSQL's SQLSTATEs can be numeric too).
fn sqlite_code(db: &dyn sqlx::error::DatabaseError) -> Option<i64> {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    db.code()?.parse::<i64>().ok().map(|c| c & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_temporary() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify_sqlx(&sqlx::Error::Io(io)), Status::Temporary);
        assert_eq!(classify_sqlx(&sqlx::Error::PoolTimedOut), Status::Temporary);
    }
}
