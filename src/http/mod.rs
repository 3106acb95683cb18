//! The node's HTTP face (`[http]`): one listener, HTTP/1.1, over TLS with
//! the node's client certificate or (loopback, or an operator behind a
//! TLS-terminating proxy) plain.
//!
//! - `/xmpp-websocket`: RFC 7395 XMPP over WebSocket ([`ws`]); the
//!   connection then runs as any c2s connection (`c2s::serve_websocket`).
//! - `/.well-known/host-meta` and `/.well-known/host-meta.json`: XEP-0156
//!   discovery of every node's WebSocket endpoint ([`discovery`]).
//! - `/healthz` (the process answers) and `/readyz` (`crate::readiness`),
//!   for load balancers.
//! - `/metrics`: the node for Prometheus ([`metrics`]), to the peers and
//!   the bearer token `[http] metrics_allow`/`metrics_token_file` admit
//!   ([`access`]; loopback only by default).
//!
//! The routes are one list ([`routes`]): a new endpoint is one line there
//! and a handler taking [`HttpState`].
//!
//! Connections are run here rather than by `axum::serve`, so each one is
//! capped ([`HttpSection::max_connections`]), given a TLS handshake and a
//! header deadline, and tagged with its peer address ([`ConnInfo`]) for
//! admission. A WebSocket takes a c2s admission ticket before it is
//! upgraded (per-address caps, the pre-auth pool), as a TCP connection does
//! when accepted.
pub mod access;
mod discovery;
mod metrics;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, info, Instrument};

use crate::c2s::sasl::ChannelBindings;
use crate::config::HttpSection;
use crate::readiness::Readiness;

/// What every HTTP request handler can reach.
#[derive(Clone)]
pub struct HttpState {
    pub c2s: Arc<crate::c2s::Shared>,
    pub config: Arc<HttpSection>,
    pub readiness: Readiness,
    /// The listener speaks TLS (`https`, `wss`).
    pub tls: bool,
    /// Who may read `/metrics`.
    pub metrics_access: Arc<access::MetricsAccess>,
}

/// The connection a request came on (a request extension).
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The TLS connection's channel-binding data (empty on plain HTTP).
    pub bindings: ChannelBindings,
}

/// Every route of the listener.
pub fn routes(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/xmpp-websocket", get(ws::upgrade))
        .route("/.well-known/host-meta", get(discovery::host_meta_xml))
        .route(
            "/.well-known/host-meta.json",
            get(discovery::host_meta_json),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .with_state(state)
}

/// The process is up and answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the node should get traffic, 503 with the reason otherwise.
async fn readyz(State(st): State<HttpState>) -> axum::response::Response {
    match st.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.as_str()),
        )
            .into_response(),
    }
}

/// Binds the HTTP listener, if configured (before anything else starts).
pub async fn bind(config: &HttpSection) -> std::io::Result<Option<TcpListener>> {
    match config.addr {
        Some(a) => Ok(Some(TcpListener::bind(a).await?)),
        None => Ok(None),
    }
}

/// The URL scheme of the listener's WebSocket.
pub fn ws_scheme(tls: bool) -> &'static str {
    if tls {
        "wss"
    } else {
        "ws"
    }
}

/// Accepts HTTP connections until shutdown.
pub async fn serve(
    state: HttpState,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut shutdown = state.c2s.shutdown.clone();
    let permits = Arc::new(Semaphore::new(state.config.max_connections));
    let router = routes(state.clone());
    let header_timeout = Duration::from_secs(state.config.request_timeout_secs);
    info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "http listening");
    let mut listener = crate::accept::Acceptor::new(listener, "http");
    loop {
        let permit = tokio::select! {
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let Some((tcp, peer)) = listener.next(&mut shutdown).await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let mut stop = shutdown.clone();
        let c2s = state.c2s.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let served = async {
                    match tls {
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            let tls =
                                match tokio::time::timeout(header_timeout, acceptor.accept(tcp))
                                    .await
                                {
                                    Ok(Ok(t)) => t,
                                    Ok(Err(e)) => {
                                        debug!(error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => return,
                                };
                            let bindings = crate::c2s::tls::channel_bindings(
                                tls.get_ref().1,
                                c2s.tls.server_end_point.as_deref(),
                            );
                            serve_connection(
                                router,
                                tls,
                                ConnInfo { peer, bindings },
                                header_timeout,
                            )
                            .await;
                        }
                        None => {
                            let info = ConnInfo {
                                peer,
                                bindings: ChannelBindings::default(),
                            };
                            serve_connection(router, tcp, info, header_timeout).await;
                        }
                    }
                };
                // A WebSocket lives on in its own task after the upgrade;
                // what stops here is plain HTTP.
                tokio::select! {
                    _ = served => {}
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {}
                }
            }
            .instrument(tracing::debug_span!("http", %peer)),
        );
    }
}

/// One HTTP/1.1 connection, upgrades allowed.
async fn serve_connection<I>(router: axum::Router, io: I, info: ConnInfo, header_timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info.clone());
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(error = %e, "http connection ended");
    }
}
