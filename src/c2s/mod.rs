//! Client-to-server connections (RFC 6120): the listeners, TLS, SASL,
//! resource binding and the session loop.
//!
//! - [`stream`]: a connection's socket, framer and output buffer.
//! - [`negotiate`]: stream header, STARTTLS, SASL, in-band registration,
//!   resource binding and XEP-0198 resumption, up to a bound session.
//! - [`session`]: the bound session's loop: client stanzas in, routed
//!   stanzas out, stream management, keepalives.
//! - [`sm`]: XEP-0198 stream management state, without I/O.
//! - [`handoff`]: a resumable session moving to the node its client
//!   resumed it on.
//! - [`sasl`], [`tls`]: the mechanisms and the certificate, without I/O.
//! - [`auth_limit`]: failed-authentication limits per account and address,
//!   without I/O.
pub mod auth_limit;
pub mod handoff;
pub mod negotiate;
pub mod sasl;
mod seen;
pub mod session;
pub mod sm;
pub mod stream;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_raft::ClusterHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::config::XmppSection;
use crate::router::Router;
use crate::xmpp::framer::Limits;

/// A detached XEP-0198 session waiting for its client to resume: the new
/// connection is handed over through this channel.
pub type ResumeSender = mpsc::Sender<negotiate::Resumption>;

/// What every connection of this node shares.
pub struct Shared {
    pub config: XmppSection,
    pub domain: String,
    pub router: Router,
    pub cluster: ClusterHandle,
    pub tls: tls::TlsConfigs,
    pub limiter: Mutex<auth_limit::AuthLimiter>,
    /// XEP-0198 resumable sessions on this node: SM id -> (bare JID, handle).
    pub resumable: Mutex<HashMap<String, (String, ResumeSender)>>,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The node's services for `im` handlers.
    pub fn im(&self) -> crate::im::Ctx<'_> {
        crate::im::Ctx {
            domain: &self.domain,
            registration: self.config.registration,
            router: &self.router,
            cluster: &self.cluster,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.config.max_stanza_bytes,
            max_depth: self.config.max_depth,
            ..Limits::default()
        }
    }
}

/// Accepts client connections on `listener` until shutdown. `direct_tls`:
/// XEP-0368, TLS from the first byte.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    direct_tls: bool,
    connections: Arc<Semaphore>,
) {
    let mut shutdown = shared.shutdown.clone();
    let mut next_id: u64 = 0;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "connection limit reached");
            tokio::spawn(refuse(shared.clone(), tcp, peer));
            continue;
        };
        next_id += 1;
        let span = tracing::info_span!("c2s", conn = next_id, %peer, jid = tracing::field::Empty);
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                handle(shared, tcp, peer, direct_tls).await;
            }
            .instrument(span),
        );
    }
}

/// Over the connection limit: a `resource-constraint` stream error.
async fn refuse(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let mut conn = stream::Conn::new(stream::Transport::Tcp(tcp), shared.limits(), peer, false);
    conn.fail(
        &crate::xmpp::StreamError::with_text(
            crate::xmpp::StreamCondition::ResourceConstraint,
            "too many connections",
        ),
        &shared.domain,
    )
    .await;
}

async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let _ = tcp.set_nodelay(true);
    let io = if direct_tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.direct.clone());
        let handshake = tokio::time::timeout(
            Duration::from_secs(shared.config.negotiation_timeout_secs),
            acceptor.accept(tcp),
        )
        .await;
        match handshake {
            Ok(Ok(tls)) => stream::Transport::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        }
    } else {
        stream::Transport::Tcp(tcp)
    };
    let conn = stream::Conn::new(io, shared.limits(), peer, direct_tls);
    match negotiate::negotiate(&shared, conn).await {
        Some(negotiate::Negotiated::Bound(session)) => session.run().await,
        Some(negotiate::Negotiated::Resumed) | None => {}
    }
}

/// Binds the client listeners (before anything else starts, so a port in
/// use fails fast).
pub async fn bind(config: &XmppSection) -> std::io::Result<(TcpListener, Option<TcpListener>)> {
    let plain = TcpListener::bind(config.client_addr).await?;
    let direct = match config.direct_tls_addr {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    info!(client_addr = %config.client_addr, direct_tls_addr = ?config.direct_tls_addr, "c2s listening");
    Ok((plain, direct))
}
