//! Accepting TCP connections for the listeners that run their own
//! connections (`c2s::serve`, `http::serve`): the next connection, or
//! `None` at shutdown; an accept error (EMFILE, ENFILE, ENOBUFS: a full
//! table, not a bad client) is logged and waited out with a doubling
//! back-off (5 ms up to 1 s, reset by the next success) rather than spun
//! on, as mini-redis's `Listener::accept` does.
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::warn;

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener with its back-off state.
pub struct Acceptor {
    listener: TcpListener,
    backoff: Duration,
    /// Names the listener in the log line of a failed accept.
    what: &'static str,
}

impl Acceptor {
    pub fn new(listener: TcpListener, what: &'static str) -> Self {
        Acceptor {
            listener,
            backoff: FIRST_BACKOFF,
            what,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection; `None` once `shutdown` turns true.
    pub async fn next(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return None,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok(a) => {
                    self.backoff = FIRST_BACKOFF;
                    return Some(a);
                }
                Err(e) => {
                    warn!(error = %e, listener = self.what, "accept failed");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return None,
                        _ = tokio::time::sleep(self.backoff) => {}
                    }
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
