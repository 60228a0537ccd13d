//! Shared test helpers: a fresh store per test on either backend, and the worker built on it.

use astra_worker::{app::Worker, config::Settings, store::Store};

/// The PostgreSQL server tests use (`.ci/run` sets it; the default is this machine's local server).
pub(crate) fn pg_admin_url() -> String {
    std::env::var("ASTRA_WORKER_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database: a SQLite file in its own temporary folder, or a new PostgreSQL database.
pub(crate) struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub(crate) async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDb { url, _dir: Some(dir) }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("aw_test_{}", uuid::Uuid::new_v4().simple());
                let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL tests need a server at {admin} (set ASTRA_WORKER_TEST_PG_URL): {e}")
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
                pool.close().await;
                let mut url = reqwest::Url::parse(&admin).unwrap();
                url.set_path(&name);
                TestDb { url: url.to_string(), _dir: None }
            }
        }
    }

    pub(crate) async fn store(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }
}

/// The shipped `jobs.toml`, pointed at `base_url` when given.
pub(crate) fn shipped_settings(base_url: Option<&str>) -> Settings {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs.toml")).unwrap();
    Settings::parse(&text, base_url).unwrap()
}

pub(crate) async fn worker(db: &TestDb) -> Worker {
    Worker::new(shipped_settings(None), db.store().await)
}

/// Runs an async test body once per backend: `both_backends!(name, body_fn)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body($crate::helpers::Backend::Postgres).await
            }
        }
    };
}

/// Runs the same raw SQL body against whichever pool a store holds (`$p` is the pool): the tests' own way to
/// arrange and inspect rows.
#[macro_export]
macro_rules! with_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match $store {
            astra_worker::store::Store::Sqlite($p) => $body,
            astra_worker::store::Store::Postgres($p) => $body,
        }
    };
}
