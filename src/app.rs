//! The process: what every run, command and request in it shares — settings, store, the one request
//! limiter, the shutdown signal — and the services built from secrets on first use (the Astra client and
//! token operations, the outbox deliverer).

use std::sync::{Arc, OnceLock};

use crate::{
    astra::{AstraClient, Credentials, RequestLimiter},
    config::Settings,
    failure::Failure,
    outbox::Deliverer,
    secrets,
    shutdown::Shutdown,
    store::Store,
    tokens::{Keyring, Tokens, check_keyring},
};

/// What the jobs that talk to Astra need beyond the store, built once per process from the environment.
#[derive(Debug)]
pub struct Services {
    pub tokens: Tokens,
    pub deliverer: Option<Deliverer>,
    /// Astra's client credentials; the client secret also signs Astra's webhooks.
    pub credentials: Credentials,
}

impl Services {
    pub fn new(
        settings: &Settings,
        credentials: Credentials,
        keyring: Keyring,
        deliverer: Option<Deliverer>,
        limiter: Arc<RequestLimiter>,
        store: &Store,
    ) -> anyhow::Result<Services> {
        let client = AstraClient::new(&settings.astra, credentials.clone(), limiter, Some(store.clone()))?;
        Ok(Services { tokens: Tokens::new(settings, client, &credentials, keyring, store), deliverer, credentials })
    }

    /// From `ASTRA_CLIENT_ID`, `ASTRA_CLIENT_SECRET`, `ASTRA_WORKER_TOKEN_KEY` and, when an outbox endpoint
    /// is configured, `ASTRA_WORKER_OUTBOX_KEY`.
    pub fn from_env(settings: &Settings, limiter: Arc<RequestLimiter>, store: &Store) -> anyhow::Result<Services> {
        let credentials = Credentials::from_env()?;
        let keyring = Keyring::from_env()?;
        let deliverer = match &settings.outbox.endpoint {
            None => None,
            Some(url) => {
                let key = secrets::require("ASTRA_WORKER_OUTBOX_KEY")
                    .map_err(|e| Failure::Config(format!("outbox.endpoint is set: {e:#}")))?;
                Some(Deliverer::new(&settings.outbox, url.clone(), key)?)
            }
        };
        Services::new(settings, credentials, keyring, deliverer, limiter, store)
    }

    /// The Astra client.
    pub fn client(&self) -> &AstraClient {
        &self.tokens.client
    }
}

/// What every run in this process shares: settings, store, limiter, shutdown signal, and the services built
/// from secrets (loaded on first use, so jobs that need none run without them).
pub struct Worker {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub limiter: Arc<RequestLimiter>,
    pub shutdown: Shutdown,
    /// `host:pid`, recorded on claims and runs.
    pub owner: String,
    /// `host:pid:random`: this worker among the processes sharing Astra's request budget.
    pub instance: String,
    services: OnceLock<Arc<Services>>,
    /// Set once a background deliverer runs in this process (the daemon, the service): job runs then leave the
    /// outbox to it.
    pub outbox_in_background: std::sync::atomic::AtomicBool,
}

impl Worker {
    pub fn new(settings: Settings, store: Store) -> Worker {
        let limiter = RequestLimiter::new(settings.astra.requests_per_second, settings.astra.burst);
        let owner = format!("{}:{}", hostname(), std::process::id());
        Worker {
            instance: format!("{owner}:{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            owner,
            settings: Arc::new(settings),
            store,
            limiter: Arc::new(limiter),
            shutdown: Shutdown::new(),
            services: OnceLock::new(),
            outbox_in_background: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A worker with services given (tests, the demo, a backend embedding the library).
    pub fn with_services(
        settings: Settings,
        store: Store,
        build: impl FnOnce(&Settings, Arc<RequestLimiter>, &Store) -> anyhow::Result<Services>,
    ) -> anyhow::Result<Worker> {
        let w = Worker::new(settings, store);
        let svc = build(&w.settings, w.limiter.clone(), &w.store)?;
        let _ = w.services.set(Arc::new(svc));
        Ok(w)
    }

    /// The Astra client, keyring and outbox deliverer; built from the environment on first use.
    pub fn services(&self) -> anyhow::Result<Arc<Services>> {
        if let Some(s) = self.services.get() {
            return Ok(s.clone());
        }
        let svc = Arc::new(Services::from_env(&self.settings, self.limiter.clone(), &self.store)?);
        Ok(self.services.get_or_init(|| svc).clone())
    }

    /// Waits until every Astra call this process's client made so far is in the call log (see
    /// `astra::record`). Nothing to wait for when no service was built.
    pub async fn flush_calls(&self) {
        if let Some(s) = self.services.get() {
            s.client().flush_calls().await;
        }
    }

    /// [`Worker::services`], refused (configuration, exit 78) before anything is written when its keyring
    /// cannot open the grants already stored.
    pub async fn checked_services(&self) -> anyhow::Result<Arc<Services>> {
        let svc = self.services()?;
        check_keyring(&self.store, &svc.tokens.keyring).await?;
        Ok(svc)
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
