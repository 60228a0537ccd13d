//! The first half: keeping every user's Astra grant alive. Grants are imported from the fintech (or
//! exchanged from an authorization code), sealed at rest under rotatable keys, refreshed under a per-grant
//! lease with an intent written first and a fenced compare-and-swap after, handed out as fresh access
//! tokens, and — when Astra proves one dead — turned into a re-authorization episode.

mod access;
pub(crate) mod episodes;
mod exchange;
mod grants;
mod import;
pub(crate) mod intents;
mod keys;
mod refresh;
pub mod store;

use chrono::TimeDelta;
use secrecy::ExposeSecret;

pub use access::{Access, NoToken, access_token, access_token_until, with_access};
pub use episodes::PromptLink;
pub use exchange::{Exchanged, exchange};
pub use grants::{Grant, GrantStatus, Unreadable, check_keyring, load, rotate_keys};
pub use import::{ImportLine, Imported, import};
pub use keys::{CryptoError, Keyring};
pub use refresh::{Refreshed, refresh_leased};

use crate::{
    astra::{AstraClient, Credentials},
    config::Settings,
    store::Store,
};

/// What a refresh may spend on the store before it calls Astra (renewing its lease and reading the grant,
/// opening its intent). One that has spent more leaves the grant for the next run without calling Astra,
/// since the rest of its lease would no longer cover [`after_the_call`].
pub const BEFORE_THE_CALL: TimeDelta = TimeDelta::seconds(5);

/// The longest a refresh can take from the moment it calls Astra: the call's retries within
/// `astra.retry_budget` and its last attempt's `astra.request_timeout`, storing the pair retried for
/// `runner.grace_period` and the last attempt's wait for the store ([`Store::longest_wait`]), and a margin
/// (a token request waits for the request limiter within the retry budget; the margin covers the rest: the
/// call log's hand-off, a busy scheduler).
fn after_the_call(settings: &Settings, store: &Store) -> TimeDelta {
    let a = &settings.astra;
    let spent = a.retry_budget + a.request_timeout + settings.runner.grace_period + store.longest_wait();
    TimeDelta::from_std(spent).unwrap_or(TimeDelta::MAX) + TimeDelta::seconds(15)
}

/// The longest one refresh can hold its grant's lease: [`BEFORE_THE_CALL`], then [`after_the_call`]. A lease
/// taken for less could lapse while Astra's answer is still to be stored, and whoever took the grant over
/// would find the intent open and probe it as if its owner had died.
pub fn refresh_worst_case(settings: &Settings, store: &Store) -> TimeDelta {
    BEFORE_THE_CALL + after_the_call(settings, store)
}

/// What every token operation needs besides the store: the Astra client, the keyring, the
/// re-authorization link, and the margins from `jobs.toml`.
#[derive(Debug)]
pub struct Tokens {
    pub client: AstraClient,
    pub keyring: Keyring,
    pub link: PromptLink,
    /// Refresh before handing out an access token that expires within this.
    access_margin: TimeDelta,
    /// How long a grant's lease is taken for, just before each refresh: at least the longest a refresh can
    /// hold it ([`refresh_worst_case`]), so the lease never lapses while its call is in flight and nobody
    /// probes a refresh whose owner is alive.
    lease: TimeDelta,
    /// What must be left of the lease when Astra is called ([`after_the_call`]).
    after_the_call: TimeDelta,
    /// How long storing a pair Astra issued is retried when the store fails (`runner.grace_period`).
    commit_retry: std::time::Duration,
}

impl Tokens {
    /// How long a grant's lease is taken for just before its refresh.
    pub fn lease(&self) -> TimeDelta {
        self.lease
    }

    pub fn new(
        settings: &Settings,
        client: AstraClient,
        credentials: &Credentials,
        keyring: Keyring,
        store: &Store,
    ) -> Tokens {
        Tokens {
            client,
            keyring,
            link: PromptLink {
                authorize_url: settings.astra.authorize_url.clone(),
                client_id: credentials.client_id.expose_secret().to_string(),
                redirect_uri: settings.astra.redirect_uri.clone(),
            },
            access_margin: settings.astra.access_margin,
            lease: settings.runner.claim_lease.max(refresh_worst_case(settings, store)),
            after_the_call: after_the_call(settings, store),
            commit_retry: settings.runner.grace_period,
        }
    }
}
