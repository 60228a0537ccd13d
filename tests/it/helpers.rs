//! The tests' one fixture: a fresh store per test on either backend, the Astra sandbox, settings pointed at
//! it, workers and an Astra client built on them, and the built binary as a command.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use astra_worker::{
    app::{Services, Worker},
    astra::{AstraClient, Credentials, RequestLimiter},
    config::{AstraSettings, Settings},
    outbox::Deliverer,
    sandbox::{Sandbox, SandboxSettings},
    store::Store,
    tokens::{self, ImportLine, Keyring},
};
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};

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
    pub(crate) url: String,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database made for the test, dropped with it.
    pg_name: Option<String>,
}

impl TestDb {
    pub(crate) async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDb { url, _dir: Some(dir), pg_name: None }
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
                TestDb { url: url.to_string(), _dir: None, pg_name: Some(name) }
            }
        }
    }

    pub(crate) async fn store(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    /// Drops the test's PostgreSQL database (its connections too), so runs do not pile databases up on the
    /// shared server. On a thread of its own: this runs inside the test's runtime, which must not block on
    /// itself. A failure only leaves the database behind, and says so.
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        let admin = pg_admin_url();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let pool = sqlx::PgPool::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&pool)
                    .await?;
                pool.close().await;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(|e| format!("{name}: {e}"))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("the test database was left behind: {e}");
        }
    }
}

/// The shipped `jobs.toml`.
pub(crate) fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs.toml")
}

/// The shipped `jobs.toml`, pointed at `base_url` when given.
pub(crate) fn shipped_settings(base_url: Option<&str>) -> Settings {
    let text = std::fs::read_to_string(shipped_config()).unwrap();
    Settings::parse(&text, base_url).unwrap()
}

/// A worker on the shipped settings, without Astra services.
pub(crate) async fn worker(db: &TestDb) -> Worker {
    Worker::new(shipped_settings(None), db.store().await)
}

pub(crate) const KEY_A: [u8; 32] = [7; 32];
pub(crate) const KEY_B: [u8; 32] = [9; 32];

pub(crate) fn b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The token keyring of every test: `KEY_A`.
pub(crate) fn keyring() -> Keyring {
    Keyring::from_base64(&b64(&KEY_A), &[]).unwrap()
}

/// The sandbox's default client credentials.
pub(crate) fn sandbox_credentials() -> Credentials {
    let s = SandboxSettings::default();
    Credentials { client_id: s.client_id.into(), client_secret: s.client_secret.into() }
}

/// Astra settings for tests: short timeouts, fast retries, a high rate.
pub(crate) fn test_astra_settings(base_url: &str) -> AstraSettings {
    let mut a = shipped_settings(Some(base_url)).astra;
    a.request_timeout = Duration::from_millis(500);
    a.max_retries = 2;
    a.retry_budget = Duration::from_secs(10);
    a.requests_per_second = 1000;
    a.burst = 20;
    a
}

/// The application under test: a fresh store, a sandbox, and the settings pointed at it.
pub(crate) struct TestApp {
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) db: TestDb,
    pub(crate) settings: Settings,
}

impl TestApp {
    /// A fresh store on `b`, a sandbox with `sb`, the shipped settings pointed at it (test Astra settings),
    /// then `tweak`.
    pub(crate) async fn new(b: Backend, sb: SandboxSettings, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let db = TestDb::new(b).await;
        db.store().await.close().await;
        let sandbox = Arc::new(Sandbox::start_local(sb).await.unwrap());
        let mut settings = shipped_settings(Some(&sandbox.base_url()));
        settings.astra = test_astra_settings(&sandbox.base_url());
        tweak(&mut settings);
        TestApp { sandbox, db, settings }
    }

    /// A worker (its own pool, as another process would have) with services pointed at the sandbox.
    pub(crate) async fn worker(&self, deliverer: Option<Deliverer>) -> Worker {
        Worker::with_services(self.settings.clone(), self.db.store().await, |s, limiter, store| {
            Services::new(s, sandbox_credentials(), keyring(), deliverer, limiter, store)
        })
        .unwrap()
    }

    /// An Astra client of its own (its own limiter) recording its calls in `store`.
    pub(crate) fn client(&self, store: &Store) -> AstraClient {
        let a = &self.settings.astra;
        let limiter = Arc::new(RequestLimiter::new(a.requests_per_second, a.burst));
        AstraClient::new(a, sandbox_credentials(), limiter, Some(store.clone())).unwrap()
    }

    /// Seeds `n` approved users whose grants were issued `age(i)` ago, in the sandbox and the store.
    pub(crate) async fn seed(&self, store: &Store, n: usize, age: impl Fn(usize) -> TimeDelta) -> Vec<String> {
        let mut users = Vec::new();
        let now = Utc::now();
        for i in 0..n {
            let id = format!("user-{i:05}");
            let g = self.sandbox.state().add_approved_user(&id, Some(format!("+1555{i:07}")), now - age(i));
            import(store, &id, &g.access_token, &g.refresh_token, now - age(i), Some(g.access_expires_at)).await;
            users.push(id);
        }
        users
    }

    pub(crate) fn refreshes(&self, user: &str) -> u32 {
        self.sandbox.state().grant_info(user).unwrap().refreshes
    }

    pub(crate) fn token_calls(&self) -> usize {
        self.sandbox.state().calls.iter().filter(|c| c.path == "/v1/oauth/token").count()
    }

    /// The stored pair equals the sandbox's live pair.
    pub(crate) async fn stored_is_live(&self, store: &Store, user: &str) -> bool {
        let g = tokens::load(store, &keyring(), user).await.unwrap().unwrap();
        let live = self.sandbox.state().grant_info(user).unwrap();
        g.refresh.expose_secret() == live.refresh_token && g.access.expose_secret() == live.access_token
    }
}

/// Imports one grant under `KEY_A`.
pub(crate) async fn import(
    store: &Store,
    user: &str,
    access: &str,
    refresh: &str,
    issued: DateTime<Utc>,
    access_exp: Option<DateTime<Utc>>,
) {
    let line = ImportLine {
        user_id: user.into(),
        access_token: SecretString::from(access.to_string()),
        refresh_token: SecretString::from(refresh.to_string()),
        refresh_token_issued_at: Some(issued.fixed_offset()),
        refresh_token_expires_at: None,
        access_token_expires_at: access_exp.map(|t| t.fixed_offset()),
        phone: Some("+15555550100".into()),
    };
    tokens::import(store, &keyring(), &line, Utc::now()).await.unwrap();
}

/// The built binary.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_astra-worker");

/// The built binary with the shipped config, a database, logs at info, and no Astra secret or key from the
/// caller's environment: each test adds what it needs.
pub(crate) fn bin(db_url: &str) -> Command {
    bin_with(db_url, &shipped_config())
}

/// [`bin`] with another configuration file.
pub(crate) fn bin_with(db_url: &str, config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info")
        .env_remove("ASTRA_CLIENT_ID")
        .env_remove("ASTRA_CLIENT_SECRET")
        .env_remove("ASTRA_BASE_URL")
        .env_remove("ASTRA_WORKER_TOKEN_KEY")
        .env_remove("ASTRA_WORKER_TOKEN_KEY_PREVIOUS")
        .env_remove("ASTRA_WORKER_TEST_HOOKS")
        .arg("--config")
        .arg(config);
    c
}

/// Output bytes as text.
pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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

/// Serves `app` on a loopback port of its own, in the background; its base URL (`http://127.0.0.1:PORT`).
pub(crate) async fn serve_on_loopback(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    base
}
