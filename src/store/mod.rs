//! The store: one handle over SQLite (one host) or PostgreSQL (many instances), chosen by `DATABASE_URL`.
//! SQL sits in small functions next to its use (`ledger`, …); the [`with_pool!`] macro runs the same
//! portable statement on whichever pool is open, with `$1` placeholders (SQLite accepts them too).

pub mod ledger;

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    migrate::MigrateError,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::exit::{Status, classify_sqlx};

/// The default store: a SQLite file in the working directory, created on first use.
pub const DEFAULT_URL: &str = "sqlite://astra-worker.db";

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same body against whichever pool the store holds (`$p` is the pool).
#[macro_export]
macro_rules! with_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($p) => $body,
            $crate::store::Store::Postgres($p) => $body,
        }
    };
}

/// Opening or migrating the store failed; says which store (without its password) and why.
#[derive(Debug, thiserror::Error)]
#[error("database {url}: {what}: {source}")]
pub struct StoreError {
    url: String,
    what: &'static str,
    status: Status,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    fn new(url: &str, what: &'static str, source: sqlx::Error) -> StoreError {
        StoreError { url: redact_url(url), what, status: classify_sqlx(&source), source: source.into() }
    }

    pub fn status(&self) -> Status {
        self.status
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// Opens the store named by `url` (applies no migration).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let err = |what, source| StoreError::new(url, what, source);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|e| err("cannot connect", e))?;
            return Ok(Store::Postgres(pool));
        }
        if !url.starts_with("sqlite:") {
            return Err(err(
                "unsupported URL",
                sqlx::Error::Configuration("DATABASE_URL must start with sqlite: or postgres://".into()),
            ));
        }
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| err("invalid URL", e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| err("cannot open", e))?;
        Ok(Store::Sqlite(pool))
    }

    /// Opens the store and brings its schema up to date.
    pub async fn open(url: &str) -> anyhow::Result<Store> {
        let store = Store::connect(url).await?;
        store.migrate().await.map_err(|e| {
            let status = match &e {
                MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _) => classify_sqlx(inner),
                _ => Status::Config,
            };
            StoreError { url: redact_url(url), what: "migration failed", status, source: e.into() }
        })?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), MigrateError> {
        match self {
            Store::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await?,
            Store::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    pub async fn close(&self) {
        with_pool!(self, |p| p.close().await)
    }
}
