//! The Astra client: the worker's only window on Astra. [`AstraClient`] owns the HTTP client, the base URL,
//! the client credentials and the shared rate limiter; its endpoints live in `client`, and `transport`
//! sends every attempt rate-limited, classified, retried where that is safe, recorded in `api_call` (in the
//! background, see `record`) with Astra's request-id, and logged (never a token). It knows nothing of runs or
//! jobs: a [`Call`] says whom a request is for.

mod client;
mod error;
mod limiter;
pub mod model;
mod record;
mod transport;

use std::sync::atomic::{AtomicI64, Ordering};

use secrecy::SecretString;

pub use client::AstraClient;
pub use error::AstraError;
pub use limiter::RequestLimiter;
pub use model::{Card, TokenPair, Transfer, TransferStatus, User, UserStatus};
pub use record::{FLUSH_WITHIN, FORGET as FORGET_CALLS, flush_all as flush_call_logs};

use crate::secrets;

/// Astra's refresh tokens live ten days.
pub const REFRESH_TOKEN_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::days(10);

/// Client credentials. `Debug` prints nothing secret.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_id: SecretString,
    pub client_secret: SecretString,
}

impl Credentials {
    /// From `ASTRA_CLIENT_ID` / `ASTRA_CLIENT_SECRET` (or their `_FILE` and credentials-directory forms).
    pub fn from_env() -> anyhow::Result<Credentials> {
        Ok(Credentials {
            client_id: secrets::require("ASTRA_CLIENT_ID")?,
            client_secret: secrets::require("ASTRA_CLIENT_SECRET")?,
        })
    }
}

/// Whose call this is: the run it is recorded under and counted toward, and the user it concerns.
#[derive(Clone, Copy, Default)]
pub struct Call<'a> {
    pub run_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    /// Counts each HTTP request made for this call (a run's request counter).
    pub requests: Option<&'a AtomicI64>,
}

impl<'a> Call<'a> {
    /// A call on behalf of `user_id`, outside any run (the backend's `token` call, a command).
    pub fn for_user(user_id: &'a str) -> Call<'a> {
        Call { run_id: None, user_id: Some(user_id), requests: None }
    }

    fn count_request(&self) {
        if let Some(c) = self.requests {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}
