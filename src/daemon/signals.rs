//! SIGINT/SIGTERM for `outboxd run` and the CLI's waits: both signals are
//! registered the moment [`Signals::install`] runs (before any slow startup
//! work), so an early signal is never lost or left to its default action.

/// SIGINT/SIGTERM, registered as soon as it is created (before any slow
/// startup work), so an early signal is never lost.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    /// SIGINT too: `ctrl_c()` registers its handler only when first polled,
    /// so a Ctrl-C during startup took the default action (killed, the
    /// lease held until its TTL ran out).
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn one(s: Option<&mut tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = one(self.int.as_mut()) => {},
                _ = one(self.term.as_mut()) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
