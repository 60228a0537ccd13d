//! The Astra sandbox: a local simulator of the Astra endpoints the worker uses, faithful to what is known of
//! Astra, with each unknown as a setting and with fault injection (latency, 5xx, hangs, lost refresh
//! responses, malformed bodies, 429 over a rate) and signed webhooks to a configured URL (late, repeated, out
//! of order). Tests, the demo and `astra-worker sandbox` run it on a
//! loopback port; its admin surface (`/_sandbox/…`, loopback only) seeds it and reads its call log.

mod admin;
mod api;
mod faults;
mod routes;
mod settings;
pub mod state;
mod webhooks;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio_util::sync::CancellationToken;

use settings::hang_for;
pub use settings::{ClearingFormat, CountSemantics, Faults, MalformedKind, SandboxSettings};
pub use state::{CallRec, CardRec, GrantInfo, Hold, State, TransferRec, UserRec};

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
        tokio::spawn(webhooks::run(state.clone(), stop.clone()));
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
