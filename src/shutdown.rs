//! The process-wide stop signal: SIGTERM or SIGINT stops every run from claiming new work.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    reason: Arc<OnceLock<&'static str>>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Stops every run from claiming more work; `why` names the signal.
    pub fn trigger(&self, why: &'static str) {
        let _ = self.reason.set(why);
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    pub fn reason(&self) -> Option<&'static str> {
        self.reason.get().copied()
    }

    /// A token cancelled with this one, which a run may also cancel on its own.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Triggers on SIGTERM or SIGINT (Ctrl-C).
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let me = self.clone();
        tokio::spawn(async move {
            let why = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::warn!(signal = why, "stop requested: finishing in-flight work, claiming nothing new");
            me.trigger(why);
        });
        Ok(())
    }
}
