//! What the jobs that talk to Astra need beyond the store, built once per process from the environment:
//! the Astra client, the token keyring, and the outbox deliverer.

use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::{
    astra::{AstraClient, Credentials},
    config::Settings,
    crypto::Keyring,
    episodes::PromptLink,
    exit::Failure,
    limiter::RequestLimiter,
    outbox::Deliverer,
    secrets,
    store::Store,
};

#[derive(Debug)]
pub struct Services {
    pub client: AstraClient,
    pub keyring: Keyring,
    pub deliverer: Option<Deliverer>,
    client_id: String,
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
        let client_id = credentials.client_id.expose_secret().to_string();
        let client = AstraClient::new(&settings.astra, credentials, limiter, Some(store.clone()))?;
        Ok(Services { client, keyring, deliverer, client_id })
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

    /// The re-authorization link's fixed parts.
    pub fn prompt_link<'a>(&'a self, settings: &'a Settings) -> PromptLink<'a> {
        PromptLink {
            authorize_url: &settings.astra.authorize_url,
            client_id: &self.client_id,
            redirect_uri: &settings.astra.redirect_uri,
        }
    }
}
