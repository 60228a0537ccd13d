//! The Astra sandbox: a local simulator of the Astra endpoints the worker uses, faithful to what is known of
//! Astra, with each unknown as a setting and with fault injection (latency, 5xx, hangs, lost refresh
//! responses, malformed bodies, 429 over a rate). Tests, the demo and `astra-worker sandbox` run it on a
//! loopback port; its admin surface (`/_sandbox/…`, loopback only) seeds it and reads its call log.

mod routes;
pub mod state;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use state::{CallRec, CardRec, GrantInfo, Hold, State, TransferRec, UserRec};

/// How the sandbox behaves where Astra's documentation is silent, and what faults it injects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    pub client_id: String,
    pub client_secret: String,
    /// When set, refreshes must carry this `redirect_uri`.
    pub redirect_uri: Option<String>,
    /// A refresh invalidates the old refresh token (Astra: undocumented; default yes).
    pub strict_rotation: bool,
    /// A new refresh token lives ten days from its refresh (Astra: undocumented; default yes).
    pub fresh_refresh_lifetime: bool,
    /// Access token lifetime (Astra: undocumented; default 7200 s).
    pub access_ttl_secs: i64,
    /// Requests per second before 429 (`None`: no limit).
    pub rate_limit: Option<u32>,
    pub retry_after_secs: u64,
    /// The bank's zone, whose midnight ends a daily-limit hold.
    pub bank_time_zone: Tz,
    /// Seeds every random draw (tokens, faults).
    pub seed: u64,
    pub faults: Faults,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            client_id: "sandbox-client".into(),
            client_secret: "sandbox-secret".into(),
            redirect_uri: None,
            strict_rotation: true,
            fresh_refresh_lifetime: true,
            access_ttl_secs: 7200,
            rate_limit: None,
            retry_after_secs: 1,
            bank_time_zone: chrono_tz::America::New_York,
            seed: 7,
            faults: Faults::default(),
        }
    }
}

/// Faults, each a share of API requests (0.0 to 1.0).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fixed latency added to each request, and a uniform random extra up to `latency_jitter_ms`.
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    /// Answer 500/503 instead.
    pub error_rate: f64,
    /// Hang past any client timeout (for `hang_ms`), then answer 504.
    pub hang_rate: f64,
    pub hang_ms: u64,
    /// Apply a refresh's rotation, then lose its answer (hang, as above).
    pub lost_refresh_rate: f64,
    /// Replace a successful body with a malformed one, of one of `malformed_kinds`.
    pub malformed_rate: f64,
    pub malformed_kinds: Vec<MalformedKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// The JSON cut in half.
    Truncated,
    /// An HTML error page with status 200.
    Html,
    /// An empty body.
    Empty,
    /// `{}`: every field missing.
    MissingFields,
}

/// A running sandbox.
pub struct Sandbox {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Sandbox {
    /// Starts on `listen` (loopback only; port 0 picks a free one).
    pub async fn start(listen: SocketAddr, settings: SandboxSettings) -> anyhow::Result<Sandbox> {
        anyhow::ensure!(listen.ip().is_loopback(), "the sandbox listens on loopback only (got {listen})");
        let state = Arc::new(Mutex::new(State::new(settings)));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app = routes::router(state.clone());
        let s = stop.clone();
        tokio::spawn(async move {
            let svc = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, svc).with_graceful_shutdown(async move { s.cancelled().await }).await;
        });
        Ok(Sandbox { state, addr, stop })
    }

    /// Starts on a free loopback port.
    pub async fn start_local(settings: SandboxSettings) -> anyhow::Result<Sandbox> {
        Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), settings).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The sandbox's state, for seeding and inspection.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state().settings.faults = faults;
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A hang long enough to pass any sane client timeout, unless configured.
fn hang_for(f: &Faults) -> Duration {
    Duration::from_millis(if f.hang_ms == 0 { 60_000 } else { f.hang_ms })
}
