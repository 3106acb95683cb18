//! Client-to-server connections (RFC 6120): the listeners, TLS, SASL,
//! resource binding and the session loop.
//!
//! - [`stream`]: a connection's socket, framer and output buffer.
//! - [`negotiate`]: stream header, STARTTLS, SASL, in-band registration
//!   (`preauth`), resource binding and XEP-0198 resumption, up to a bound
//!   session.
//! - [`session`]: the bound session's loop: client stanzas in, routed
//!   stanzas out, stream management, keepalives.
//! - [`sm`]: XEP-0198 stream management state, without I/O.
//! - [`handoff`]: a resumable session moving to the node its client
//!   resumed it on.
//! - [`sasl`], [`tls`]: the mechanisms and the certificate, without I/O;
//!   `auth`: one SASL exchange over a connection, for both profiles.
//! - [`sasl2`]: XEP-0388 SASL2 with inline XEP-0386 Bind 2 and XEP-0198
//!   (its elements without I/O; `sasl2::flow` over a connection).
//! - [`auth_limit`]: authentication throttling per address (slowed, then
//!   blocked; never the account), without I/O.
//! - [`admission`]: which accepted connections are served (pre-auth and
//!   session pools, per-address and per-/64 limits, accept rate), without
//!   I/O; [`addr`]: what an address is for these limits.
//! - [`register_limit`]: XEP-0077 registrations per address per interval,
//!   without I/O.
//! - [`websocket`]: RFC 7395 framing, a WebSocket as a connection's
//!   transport (the HTTP listener, `crate::http`, hands them over through
//!   [`serve_websocket`]).
//!
//! The accept loop ([`serve`]) asks [`admission`] about every connection
//! before anything else: a refused one is closed at once, before TLS, with
//! a stream error written in one non-blocking call and a summarized log
//! line; an admitted one carries a [`Ticket`] that moves it to the session
//! pool when SASL succeeds and frees its slots when it ends.
pub mod addr;
pub mod admission;
mod auth;
pub mod auth_limit;
pub mod handoff;
pub mod negotiate;
mod preauth;
pub mod register_limit;
pub mod sasl;
pub mod sasl2;
mod seen;
pub mod session;
pub mod sm;
pub mod stream;
pub mod tls;
pub mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_raft::ClusterHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
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
    pub admission: Mutex<Gate>,
    pub registrations: Mutex<register_limit::RegistrationLimiter>,
    /// XEP-0198 resumable sessions on this node: SM id -> (bare JID, handle).
    pub resumable: Mutex<HashMap<String, (String, ResumeSender)>>,
    /// What `im` handlers keep per node (PEP limits, caps queries, the
    /// server's contact addresses).
    pub services: crate::im::Services,
    pub shutdown: watch::Receiver<bool>,
    /// Set once this node serves clients (its stale bindings dropped):
    /// part of `/readyz` and `ctl status`.
    pub serving: Arc<std::sync::atomic::AtomicBool>,
    /// Turns at a TLS handshake (`xmpp.max_concurrent_handshakes`).
    pub handshakes: tokio::sync::Semaphore,
}

/// Longest a connection waits for a turn at a TLS handshake before it goes
/// ahead without one, and longest a handshake may keep a turn.
pub(crate) const HANDSHAKE_TURN: Duration = Duration::from_secs(10);

impl Shared {
    /// One of `max_concurrent_handshakes` turns at a TLS handshake, or none
    /// after [`HANDSHAKE_TURN`]: connections that take turns and never
    /// finish a handshake (a slowloris) can slow others' logins by that
    /// much, never stop them. A handshake with a turn must end within
    /// [`HANDSHAKE_TURN`] (see [`Shared::tls_handshake`]).
    pub async fn handshake_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(HANDSHAKE_TURN, self.handshakes.acquire())
            .await
            .ok()?
            .ok()
    }

    /// Runs `handshake` with a turn (within [`HANDSHAKE_TURN`], else
    /// `None`), or without one once none came in time (within `limit`).
    pub async fn tls_handshake<T>(
        &self,
        limit: Duration,
        handshake: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let turn = self.handshake_turn().await;
        let limit = if turn.is_some() {
            HANDSHAKE_TURN
        } else {
            limit
        };
        tokio::time::timeout(limit, handshake).await.ok()
    }

    /// The node's services for `im` handlers.
    pub fn im(&self) -> crate::im::Ctx<'_> {
        crate::im::Ctx {
            domain: &self.domain,
            registration: self.config.registration.enabled(),
            router: &self.router,
            cluster: &self.cluster,
            max_roster_items: self.config.max_roster_items,
            max_block_items: self.config.max_block_items,
            max_push_registrations: self.config.max_push_registrations,
            services: &self.services,
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

/// How often refused connections are logged (one summary line each).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The admission state of a node: the pure counts, the eviction signals of
/// the pre-auth connections, and the refusal summary.
pub struct Gate {
    core: admission::Admission,
    evictions: HashMap<u64, oneshot::Sender<()>>,
    refusals: admission::RefusalLog,
}

impl Gate {
    pub fn new(config: admission::AdmissionConfig) -> Self {
        Gate {
            core: admission::Admission::new(config),
            evictions: HashMap::new(),
            refusals: admission::RefusalLog::new(REFUSAL_LOG_INTERVAL),
        }
    }

    /// Connections open: (pre-auth, sessions).
    pub fn open(&self) -> (usize, usize) {
        self.core.open()
    }

    fn refused(&mut self, why: admission::Refusal, ip: std::net::IpAddr) {
        if let Some(line) = self.refusals.note(why, ip, Instant::now()) {
            warn!("{line}");
        }
    }
}

/// An admitted connection's slot: promoted to the session pool at
/// authentication, given back when dropped.
pub struct Ticket {
    shared: Arc<Shared>,
    slot: Option<admission::Slot>,
}

impl Ticket {
    /// Moves the slot into a new ticket (for a connection that goes on in
    /// another task: a resumption handed to its detached session); this
    /// one is left empty.
    pub fn take(&mut self) -> Ticket {
        Ticket {
            shared: self.shared.clone(),
            slot: self.slot.take(),
        }
    }

    /// The connection authenticated: it takes a session slot.
    pub fn promote(&mut self) -> Result<(), admission::Refusal> {
        let Some(slot) = self.slot.as_mut() else {
            return Ok(());
        };
        let mut gate = self.shared.gate();
        let ip = slot.ip();
        let r = gate.core.promote(slot);
        match r {
            Ok(()) => {
                gate.evictions.remove(&slot.id);
            }
            Err(why) => gate.refused(why, ip),
        }
        r
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut gate = self.shared.gate();
            gate.evictions.remove(&slot.id);
            gate.core.release(slot);
        }
    }
}

impl Shared {
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.admission.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip`, or says why not; an admitted one
    /// comes with the signal of its eviction from the pre-auth pool.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
    ) -> Result<(Ticket, oneshot::Receiver<()>), admission::Refusal> {
        let mut gate = self.gate();
        match gate.core.admit(ip, Instant::now()) {
            Ok(admitted) => {
                if let Some((old, old_ip)) = admitted.evict {
                    if let Some(tx) = gate.evictions.remove(&old) {
                        let _ = tx.send(());
                    }
                    gate.refused(admission::Refusal::Evicted, old_ip);
                }
                let (tx, rx) = oneshot::channel();
                gate.evictions.insert(admitted.slot.id, tx);
                drop(gate);
                Ok((
                    Ticket {
                        shared: self.clone(),
                        slot: Some(admitted.slot),
                    },
                    rx,
                ))
            }
            Err(why) => {
                gate.refused(why, ip);
                Err(why)
            }
        }
    }
}

/// Accepts client connections on `listener` until shutdown. `direct_tls`:
/// XEP-0368, TLS from the first byte.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, direct_tls: bool) {
    let mut shutdown = shared.shutdown.clone();
    let mut next_id: u64 = 0;
    let mut listener = crate::accept::Acceptor::new(listener, "c2s");
    while let Some((tcp, peer)) = listener.next(&mut shutdown).await {
        let (ticket, evicted) = match shared.admit(peer.ip()) {
            Ok(t) => t,
            Err(why) => {
                debug!(%peer, reason = why.as_str(), "connection refused");
                refuse(&shared, tcp, why, direct_tls);
                continue;
            }
        };
        next_id += 1;
        let span = tracing::info_span!("c2s", conn = next_id, %peer, jid = tracing::field::Empty);
        let shared = shared.clone();
        tokio::spawn(
            async move {
                // Once promoted the sender is dropped: only a real
                // eviction ends the connection here.
                let evicted = async {
                    if evicted.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = evicted => debug!("evicted: the unauthenticated pool is full"),
                    _ = handle(shared, tcp, peer, direct_tls, ticket) => {}
                }
            }
            .instrument(span),
        );
    }
}

/// Closes a refused connection at once: on the plaintext port our stream
/// header and the stream error (RFC 6120 §4.9.1.1: a stream error before
/// the client's header still opens our stream) in one non-blocking write,
/// whatever fits; on the direct TLS port nothing can be said before TLS.
fn refuse(shared: &Shared, tcp: TcpStream, why: admission::Refusal, direct_tls: bool) {
    if !direct_tls {
        let mut out = stream::stream_header(&shared.domain, None, &crate::xmpp::id::random_id());
        let text = match why {
            admission::Refusal::AcceptRate => "too many connections from your address; slow down",
            _ => "too many connections",
        };
        out.push_str(&crate::xmpp::StreamError::with_text(why.condition(), text).to_xml());
        out.push_str("</stream:stream>");
        let _ = tcp.try_write(out.as_bytes());
    }
    drop(tcp);
}

async fn handle(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    ticket: Ticket,
) {
    let _ = tcp.set_nodelay(true);
    let mut bindings = sasl::ChannelBindings::default();
    let io = if direct_tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.direct.clone());
        let handshake = shared
            .tls_handshake(
                Duration::from_secs(shared.config.negotiation_timeout_secs),
                acceptor.accept(tcp),
            )
            .await;
        match handshake {
            Some(Ok(tls)) => {
                bindings =
                    tls::channel_bindings(tls.get_ref().1, shared.tls.server_end_point.as_deref());
                stream::Transport::Tls(Box::new(tls))
            }
            Some(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return;
            }
            None => return,
        }
    } else {
        stream::Transport::Tcp(tcp)
    };
    let mut conn = stream::Conn::new(io, shared.limits(), peer, direct_tls);
    conn.channel_bindings = bindings;
    run_connection(shared, conn, ticket).await
}

/// Serves an RFC 7395 WebSocket the HTTP listener admitted (`ticket`,
/// with the signal of its eviction from the pre-auth pool) as a client
/// connection. `secure`: TLS under the WebSocket (`wss://`), or a
/// plaintext listener the operator allowed (loopback, or a proxy that
/// terminates TLS): SASL is offered on it as after STARTTLS.
pub async fn serve_websocket(
    shared: Arc<Shared>,
    ws: websocket::WsTransport,
    peer: SocketAddr,
    bindings: sasl::ChannelBindings,
    ticket: Ticket,
    evicted: oneshot::Receiver<()>,
) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = tracing::info_span!("ws", conn = id, %peer, jid = tracing::field::Empty);
    async move {
        let evicted = async {
            if evicted.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let mut conn = stream::Conn::new(
            stream::Transport::Ws(Box::new(ws)),
            shared.limits(),
            peer,
            true,
        );
        conn.channel_bindings = bindings;
        tokio::select! {
            _ = evicted => debug!("evicted: the unauthenticated pool is full"),
            _ = run_connection(shared, conn, ticket) => {}
        }
    }
    .instrument(span)
    .await
}

/// Negotiates and runs a connection's session.
async fn run_connection(shared: Arc<Shared>, conn: stream::Conn, mut ticket: Ticket) {
    let transport = if conn.is_websocket() {
        crate::metrics::Transport::WebSocket
    } else {
        crate::metrics::Transport::Tcp
    };
    let metrics_shared = shared.clone();
    let _open = metrics_shared
        .router
        .metrics()
        .connections(transport)
        .open();
    match negotiate::negotiate(&shared, conn, &mut ticket).await {
        Some(negotiate::Negotiated::Bound(mut session)) => {
            // The slot goes with the session's connection: a resumption on
            // a new connection swaps in that one's (`Session::resume`).
            session.admission = Some(ticket.take());
            session.run().await
        }
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
