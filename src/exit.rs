//! The exit-code contract of the command line, and how an error is classified into it.
//!
//! 0 done (also "slot already ran" and "nothing to do"), 75 temporary failure (the orchestrator may retry),
//! 78 configuration or credential error (never retry), 1 anything else (a bug).

use std::process::ExitCode;

/// Exit status, ordered by how much it should win when several runs report at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Temporary,
    Bug,
    Config,
}

impl Status {
    pub const fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Bug => 1,
            Status::Temporary => 75,
            Status::Config => 78,
        }
    }

    /// The worse of two statuses: configuration beats a bug beats a temporary failure beats success.
    pub fn worst(self, other: Status) -> Status {
        self.max(other)
    }
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> Self {
        ExitCode::from(s.code())
    }
}

/// Failures whose exit status is known where they arise.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Configuration, credentials or usage: retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// Something outside is unreachable for now: retrying later may help.
    #[error("{0}")]
    Unavailable(String),
    /// A signal stopped the run; in-flight work was finished or abandoned within the grace period.
    #[error("interrupted by {0}: stopped claiming work; the rest is left for the next run")]
    Interrupted(&'static str),
}

impl Failure {
    pub fn config(msg: impl Into<String>) -> anyhow::Error {
        Failure::Config(msg.into()).into()
    }
}

/// Anything that knows its own exit status (the Astra client's errors, for instance).
pub trait Classify {
    fn status(&self) -> Status;
}

/// Walks the error chain and picks the status of the first cause that knows its kind.
pub fn classify(err: &anyhow::Error) -> Status {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::Config(_) => Status::Config,
                Failure::Unavailable(_) | Failure::Interrupted(_) => Status::Temporary,
            };
        }
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return classify_sqlx(e);
        }
        if let Some(e) = cause.downcast_ref::<crate::astra::AstraError>() {
            return e.status();
        }
        if let Some(e) = cause.downcast_ref::<crate::crypto::CryptoError>() {
            return e.status();
        }
        if let Some(e) = cause.downcast_ref::<crate::store::StoreError>() {
            return e.status();
        }
    }
    Status::Bug
}

/// Database errors: unreachable or busy is temporary; refused credentials, a missing database, a read-only
/// or unopenable file is configuration.
pub fn classify_sqlx(e: &sqlx::Error) -> Status {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => Status::Temporary,
        E::Configuration(_) => Status::Config,
        E::Database(db) => match db.code().as_deref() {
            // PostgreSQL: authentication, missing database, missing role.
            Some("28P01" | "28000" | "3D000" | "42501") => Status::Config,
            // PostgreSQL: shutting down, starting up, too many connections, serialization, deadlock.
            Some("57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01") => Status::Temporary,
            // SQLite primary result codes: BUSY, LOCKED (temporary), READONLY, CANTOPEN, PERM (configuration).
            Some(c) if sqlite_primary(c) == Some(5) || sqlite_primary(c) == Some(6) => Status::Temporary,
            Some(c) if matches!(sqlite_primary(c), Some(8 | 14 | 3 | 23)) => Status::Config,
            _ => Status::Bug,
        },
        _ => Status::Bug,
    }
}

fn sqlite_primary(code: &str) -> Option<i64> {
    code.parse::<i64>().ok().map(|c| c & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_wins_over_every_other_status() {
        assert_eq!(Status::Ok.worst(Status::Config), Status::Config);
        assert_eq!(Status::Temporary.worst(Status::Bug), Status::Bug);
        assert_eq!(Status::Temporary.worst(Status::Ok), Status::Temporary);
    }

    #[test]
    fn a_failure_deep_in_the_chain_decides_the_status() {
        let err = anyhow::Error::from(Failure::Unavailable("db down".into())).context("claiming the slot");
        assert_eq!(classify(&err), Status::Temporary);
        let err = Failure::config("bad key").context("loading jobs.toml");
        assert_eq!(classify(&err), Status::Config);
        assert_eq!(classify(&anyhow::anyhow!("plain")), Status::Bug);
    }

    #[test]
    fn an_unreachable_database_is_temporary() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify_sqlx(&sqlx::Error::Io(io)), Status::Temporary);
        assert_eq!(classify_sqlx(&sqlx::Error::PoolTimedOut), Status::Temporary);
    }
}
