//! The exit-code contract and the failures whose kind is known where they arise. A leaf: it imports nothing
//! of the crate.
//!
//! 0 done (also "slot already ran" and "nothing to do"), 1 the answer is no (guard denied, health stale,
//! input lines rejected), 70 a bug (sysexits' EX_SOFTWARE), 75 temporary failure (the orchestrator may
//! retry), 78 configuration or credential error (never retry).

use std::process::ExitCode;

/// Exit status, ordered by how much it should win when several runs report at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    /// The answer is no: not a failure of the program.
    No,
    Temporary,
    Bug,
    Config,
}

impl Status {
    pub const fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::No => 1,
            Status::Bug => 70,
            Status::Temporary => 75,
            Status::Config => 78,
        }
    }

    /// The worse of two statuses: configuration beats a bug beats a temporary failure beats "no" beats
    /// success.
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
    /// One item of input (an import line, a request field) is refused; the message names the field.
    #[error("{0}")]
    Rejected(String),
}

impl Failure {
    pub fn config(msg: impl Into<String>) -> anyhow::Error {
        Failure::Config(msg.into()).into()
    }

    pub fn rejected(msg: impl Into<String>) -> anyhow::Error {
        Failure::Rejected(msg.into()).into()
    }
}

impl Classify for Failure {
    fn status(&self) -> Status {
        match self {
            Failure::Config(_) => Status::Config,
            Failure::Unavailable(_) | Failure::Interrupted(_) => Status::Temporary,
            Failure::Rejected(_) => Status::No,
        }
    }
}

/// Anything that knows its own exit status (the Astra client's errors, for instance).
pub trait Classify {
    fn status(&self) -> Status;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_wins_over_every_other_status() {
        assert_eq!(Status::Ok.worst(Status::Config), Status::Config);
        assert_eq!(Status::Temporary.worst(Status::Bug), Status::Bug);
        assert_eq!(Status::Temporary.worst(Status::Ok), Status::Temporary);
        assert_eq!(Status::No.worst(Status::Temporary), Status::Temporary);
    }

    #[test]
    fn no_and_a_bug_have_different_exit_codes() {
        assert_eq!(Status::No.code(), 1);
        assert_eq!(Status::Bug.code(), 70);
    }
}
