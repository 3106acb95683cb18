//! One client connection's byte stream: the socket (plain or TLS), the
//! framer that cuts it into events, and the output buffer.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::sasl::ChannelBindings;
use crate::xmpp::framer::{Event, Framer, FramerError, Limits};
use crate::xmpp::StreamError;

/// A socket: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// The connection's transport. Plain TCP is read by readiness into a
/// per-thread buffer, so an idle plaintext session owns no read buffer;
/// TLS (rustls keeps its own record buffers) is read into a small one.
pub enum Transport {
    Tcp(TcpStream),
    Tls(BoxIo),
    /// RFC 7395: XMPP over a WebSocket (see [`super::websocket`]).
    Ws(Box<super::websocket::WsTransport>),
}

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffer of a TLS connection.
const TLS_READ_CHUNK: usize = 4 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the TCP connection without closing the stream.
    #[error("connection closed by peer")]
    Eof,
    /// We must send this stream error and close.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The peer sent `</stream:stream>`.
    #[error("stream closed by peer")]
    Closed,
}

impl From<FramerError> for ConnError {
    fn from(e: FramerError) -> Self {
        ConnError::Stream(StreamError::with_text(e.condition(), e.to_string()))
    }
}

pub struct Conn {
    io: Option<Transport>,
    framer: Framer,
    /// Read buffer for TLS only.
    rbuf: Vec<u8>,
    out: String,
    pub peer: SocketAddr,
    /// TLS is in place (STARTTLS done, or direct TLS).
    pub secure: bool,
    /// The TLS connection's channel-binding data for SCRAM-*-PLUS; empty
    /// without TLS.
    pub channel_bindings: ChannelBindings,
    /// Whether our stream header was sent (a stream error needs one first).
    pub header_sent: bool,
}

impl Conn {
    /// Whether this is a WebSocket connection (no STARTTLS, no stream
    /// restart bytes: RFC 7395).
    pub fn is_websocket(&self) -> bool {
        matches!(self.io, Some(Transport::Ws(_)))
    }

    /// When the client last sent anything at all, where the transport
    /// knows better than the framer's events (WebSocket pings and pongs).
    pub fn last_heard(&self) -> Option<std::time::Instant> {
        match &self.io {
            Some(Transport::Ws(ws)) => Some(ws.last_heard),
            _ => None,
        }
    }

    pub fn new(io: Transport, limits: Limits, peer: SocketAddr, secure: bool) -> Self {
        Conn {
            io: Some(io),
            framer: Framer::new(limits),
            rbuf: Vec::new(),
            out: String::new(),
            peer,
            secure,
            channel_bindings: ChannelBindings::default(),
            header_sent: false,
        }
    }

    /// The next stream event. Cancel-safe: bytes are only consumed by the
    /// framer once read.
    pub async fn next_event(&mut self) -> Result<Event, ConnError> {
        loop {
            if let Some(ev) = self.framer.next_event()? {
                return Ok(ev);
            }
            let Conn {
                io, rbuf, framer, ..
            } = self;
            let io = io
                .as_mut()
                .ok_or_else(|| std::io::Error::other("connection is being upgraded"))?;
            match io {
                Transport::Tcp(tcp) => {
                    framer.shrink_idle();
                    tcp.readable().await?;
                    let read = READ_BUF.with(|b| {
                        let mut b = b.borrow_mut();
                        match tcp.try_read(&mut b) {
                            Ok(n) => {
                                framer.feed(&b[..n]);
                                Ok(n)
                            }
                            Err(e) => Err(e),
                        }
                    });
                    match read {
                        Ok(0) => return Err(ConnError::Eof),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Transport::Tls(tls) => {
                    framer.shrink_idle();
                    if rbuf.len() != TLS_READ_CHUNK {
                        rbuf.resize(TLS_READ_CHUNK, 0);
                    }
                    let n = tls.read(rbuf).await?;
                    if n == 0 {
                        return Err(ConnError::Eof);
                    }
                    framer.feed(&rbuf[..n]);
                }
                Transport::Ws(ws) => {
                    framer.shrink_idle();
                    match ws.recv().await? {
                        super::websocket::Inbound::Nothing => continue,
                        super::websocket::Inbound::Gone => return Err(ConnError::Eof),
                        super::websocket::Inbound::Feed(text) => {
                            framer.feed(text.as_bytes());
                            // RFC 7395 §3.3.1: every message is one
                            // complete element, parsable by itself.
                            let ev = framer.next_event()?;
                            if ev.is_none() || framer.buffered() > 0 {
                                return Err(StreamError::with_text(
                                    crate::xmpp::StreamCondition::BadFormat,
                                    "each WebSocket message must be exactly one complete XML element (RFC 7395 §3.3.1)",
                                )
                                .into());
                            }
                            if let Some(ev) = ev {
                                return Ok(ev);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A stream restart (RFC 6120 §4.3.3): forget the parser state; the
    /// new stream needs a new header from us too.
    pub fn restart(&mut self) {
        self.framer.reset();
        self.header_sent = false;
    }

    /// Queue raw XML for sending.
    pub fn queue(&mut self, xml: &str) {
        self.out.push_str(xml);
    }

    /// The output buffer, to serialize into directly.
    pub fn out(&mut self) -> &mut String {
        &mut self.out
    }

    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        match self.io.as_mut() {
            Some(Transport::Tcp(t)) => t.write_all(out.as_bytes()).await?,
            Some(Transport::Tls(t)) => {
                t.write_all(out.as_bytes()).await?;
                t.flush().await?;
            }
            Some(Transport::Ws(ws)) => ws.send(&out).await.map_err(std::io::Error::other)?,
            None => return Err(std::io::Error::other("no socket").into()),
        }
        // Keep a modest buffer for the next burst; an idle session holds
        // little.
        if out.capacity() <= 4096 {
            self.out = out;
            self.out.clear();
        }
        Ok(())
    }

    /// Write everything queued, or fail if the client does not take it
    /// within `limit` (a client that stopped reading).
    pub async fn flush_within(&mut self, limit: std::time::Duration) -> Result<(), ConnError> {
        match tokio::time::timeout(limit, self.flush()).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read for too long",
            )
            .into()),
        }
    }

    /// XEP-0198 §4: queue an ack with our count `h`.
    pub fn ack(&mut self, h: u32) {
        self.queue(&format!("<a xmlns='{}' h='{h}'/>", crate::xmpp::ns::SM));
    }

    /// XEP-0198 §4: queue an ack request.
    pub fn request_ack(&mut self) {
        self.queue(&format!("<r xmlns='{}'/>", crate::xmpp::ns::SM));
    }

    /// Queue and write.
    pub async fn send(&mut self, xml: &str) -> Result<(), ConnError> {
        self.queue(xml);
        self.flush().await
    }

    /// Replace the socket with TLS over it (STARTTLS, RFC 6120 §5.4.3.3).
    /// `server_end_point`: the certificate's `tls-server-end-point` value
    /// (see [`super::tls::TlsConfigs`]).
    pub async fn upgrade_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        server_end_point: Option<&[u8]>,
    ) -> Result<(), ConnError> {
        let io = self
            .io
            .take()
            .ok_or_else(|| std::io::Error::other("no socket"))?;
        let (tls, bindings): (BoxIo, _) = match io {
            Transport::Tcp(tcp) => {
                let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
                let b = super::tls::channel_bindings(tls.get_ref().1, server_end_point);
                (Box::new(tls), b)
            }
            Transport::Tls(inner) => {
                let tls = tokio_rustls::TlsAcceptor::from(config)
                    .accept(inner)
                    .await?;
                let b = super::tls::channel_bindings(tls.get_ref().1, server_end_point);
                (Box::new(tls), b)
            }
            ws @ Transport::Ws(_) => {
                // RFC 7395: TLS is the WebSocket's; STARTTLS is never
                // offered on it (`negotiate::features`).
                self.io = Some(ws);
                return Err(std::io::Error::other("no STARTTLS over WebSocket").into());
            }
        };
        self.channel_bindings = bindings;
        self.io = Some(Transport::Tls(tls));
        self.secure = true;
        self.restart();
        Ok(())
    }

    /// Send a stream error (with our header first if it was not sent, RFC
    /// 6120 §4.9.1.2) and close the stream.
    pub async fn fail(&mut self, err: &StreamError, domain: &str) {
        if !self.header_sent {
            let header = stream_header(domain, None, &crate::xmpp::id::random_id());
            self.queue(&header);
        }
        let xml = err.to_xml();
        self.queue(&xml);
        self.queue("</stream:stream>");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.flush()).await;
        self.shutdown().await;
    }

    /// Close the stream from our side and the socket.
    pub async fn close(&mut self) {
        self.queue("</stream:stream>");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.flush()).await;
        self.shutdown().await;
    }

    pub async fn shutdown(&mut self) {
        let wait = std::time::Duration::from_secs(1);
        match self.io.as_mut() {
            Some(Transport::Tcp(t)) => {
                let _ = tokio::time::timeout(wait, t.shutdown()).await;
            }
            Some(Transport::Tls(t)) => {
                let _ = tokio::time::timeout(wait, t.shutdown()).await;
            }
            Some(Transport::Ws(ws)) => {
                let _ = tokio::time::timeout(wait, ws.close()).await;
            }
            None => {}
        }
    }
}

/// Our stream header (RFC 6120 §4.7).
pub fn stream_header(domain: &str, to: Option<&str>, id: &str) -> String {
    let mut h = String::with_capacity(256);
    h.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='");
    h.push_str(id);
    h.push_str("' from='");
    crate::xmpp::element::escape_into(&mut h, domain, true);
    h.push('\'');
    if let Some(to) = to {
        h.push_str(" to='");
        crate::xmpp::element::escape_into(&mut h, to, true);
        h.push('\'');
    }
    h.push_str(" version='1.0' xml:lang='en'>");
    h
}
