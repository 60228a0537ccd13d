//! The Astra client's errors: the kinds the jobs branch on.

use std::time::Duration;

use crate::failure::{Classify, Status};

#[derive(Debug, thiserror::Error)]
pub enum AstraError {
    /// The refresh token or code was refused (`invalid_grant`). `after_ambiguous_attempt` means an earlier
    /// attempt of the same call may have been applied by Astra with its answer lost.
    #[error("Astra rejected the grant (invalid_grant): {description}")]
    GrantRejected { description: String, after_ambiguous_attempt: bool },
    /// Client credentials refused (`invalid_client`): configuration, never retried.
    #[error("Astra rejected the client credentials (invalid_client); check ASTRA_CLIENT_ID and ASTRA_CLIENT_SECRET")]
    ClientRejected,
    /// The user's access token was refused (401 on a Bearer call): refresh and try again.
    #[error("Astra rejected the access token (401) on {endpoint}")]
    AccessTokenRejected { endpoint: String },
    /// 429, still after the retries.
    #[error("Astra rate-limited {endpoint} (429); retry after {}s", retry_after.as_secs())]
    RateLimited { endpoint: String, retry_after: Duration },
    /// 5xx, timeout, connection reset, still after the retries. `maybe_applied`: a token request may have
    /// been applied by Astra though no answer arrived.
    #[error("Astra is unavailable for {endpoint}: {detail}")]
    Transient { endpoint: String, detail: String, maybe_applied: bool },
    #[error("not found at Astra: {endpoint}")]
    NotFound { endpoint: String },
    /// Any other 4xx, with Astra's own error body.
    #[error("Astra refused {endpoint}: {status} {detail}")]
    Refused { endpoint: String, status: u16, detail: String },
    /// A body that does not parse, is incomplete, or is too large.
    #[error("malformed response from Astra on {endpoint}: {detail}")]
    Malformed { endpoint: String, detail: String },
}

impl AstraError {
    /// The final error of a token call an earlier attempt of which may have been applied with its answer lost
    /// (a 504, a timeout): whatever the last attempt met (a 429, a 4xx, a malformed body), the call's outcome is
    /// unknown, so it is reported as such. A rejection of the grant or of the client keeps its kind (each says so
    /// itself, or must stop the run).
    pub(super) fn after_ambiguous_attempt(self, endpoint: &str) -> AstraError {
        match self {
            e @ (AstraError::GrantRejected { .. } | AstraError::ClientRejected | AstraError::Transient { .. }) => e,
            e => AstraError::Transient {
                endpoint: endpoint.into(),
                detail: format!("{e}, after an attempt that may have been applied"),
                maybe_applied: true,
            },
        }
    }

    /// Worth retrying later (not now in this request).
    pub fn is_temporary(&self) -> bool {
        matches!(self, AstraError::RateLimited { .. } | AstraError::Transient { .. })
    }
}

impl Classify for AstraError {
    fn status(&self) -> Status {
        match self {
            AstraError::ClientRejected => Status::Config,
            AstraError::RateLimited { .. } | AstraError::Transient { .. } => Status::Temporary,
            _ => Status::Bug,
        }
    }
}
