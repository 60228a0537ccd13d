//! How an error is classified into the exit-code contract of [`crate::failure::Status`]: the first cause
//! in its chain that knows its kind decides; an error nobody classified is a bug.

use crate::{
    astra::AstraError,
    failure::{Classify, Failure, Status},
    store::{StoreError, classify_sqlx},
    tokens::{CryptoError, NoToken, Unreadable},
};

/// Walks the error chain and picks the status of the first cause that knows its kind.
pub fn classify(err: &anyhow::Error) -> Status {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.status();
        }
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return classify_sqlx(e);
        }
        if let Some(e) = cause.downcast_ref::<AstraError>() {
            return e.status();
        }
        if let Some(e) = cause.downcast_ref::<Unreadable>() {
            return e.status();
        }
        if let Some(e) = cause.downcast_ref::<CryptoError>() {
            return e.status();
        }
        if let Some(e) = cause.downcast_ref::<NoToken>() {
            return e.status();
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return e.status();
        }
    }
    Status::Bug
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_deep_in_the_chain_decides_the_status() {
        let err = anyhow::Error::from(Failure::Unavailable("db down".into())).context("claiming the slot");
        assert_eq!(classify(&err), Status::Temporary);
        let err = Failure::config("bad key").context("loading jobs.toml");
        assert_eq!(classify(&err), Status::Config);
        let err = Failure::rejected("line 3: user_id is empty").context("importing");
        assert_eq!(classify(&err), Status::No);
        assert_eq!(classify(&anyhow::anyhow!("plain")), Status::Bug);
    }
}
