//! A small raw XMPP client for black-box tests: it speaks bytes on the
//! wire (so tests can send malformed or hostile input) and parses what the
//! server says with Starling's own framer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use starling::c2s::stream::BoxIo;
use starling::xmpp::framer::{Event, Framer, Limits};
use starling::xmpp::{ns, Element};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(15);

pub struct RawClient {
    io: Option<BoxIo>,
    framer: Framer,
    pub jid: String,
    /// What the TLS handshake gave for channel binding (SCRAM-*-PLUS):
    /// the RFC 9266 `tls-exporter` value (TLS 1.3 only) and the server's
    /// leaf certificate (DER), for RFC 5929 `tls-server-end-point`.
    pub tls_exporter: Option<Vec<u8>>,
    pub server_cert: Option<Vec<u8>>,
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    super::tls::insecure_tls_config().unwrap()
}

/// A stream error's condition, if `el` is one.
pub fn stream_error(el: &Element) -> Option<String> {
    if !el.is("error", ns::STREAM) {
        return None;
    }
    el.children()
        .find(|c| c.ns() == ns::STREAM_ERRORS && c.name() != "text")
        .map(|c| c.name().to_string())
}

/// A stanza error's condition, if `el` is one.
pub fn stanza_error(el: &Element) -> Option<String> {
    if el.attr("type") != Some("error") {
        return None;
    }
    el.get_child("error", ns::CLIENT)?
        .children()
        .find(|c| c.ns() == ns::STANZA_ERRORS && c.name() != "text")
        .map(|c| c.name().to_string())
}

pub fn body_of(el: &Element) -> Option<String> {
    el.get_child("body", ns::CLIENT).map(|b| b.text())
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let deadline = std::time::Instant::now() + WAIT;
        let tcp = loop {
            match TcpStream::connect(addr).await {
                Ok(t) => break t,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot connect to {addr}: {e}"),
            }
        };
        tcp.set_nodelay(true).unwrap();
        RawClient::from_tcp(tcp)
    }

    /// A client on a connected socket, before any stream.
    fn from_tcp(tcp: TcpStream) -> RawClient {
        RawClient {
            io: Some(Box::new(tcp)),
            framer: Framer::new(Limits {
                max_stanza_bytes: 4 << 20,
                ..Limits::default()
            }),
            jid: String::new(),
            tls_exporter: None,
            server_cert: None,
        }
    }

    /// Connects from a chosen local address (Linux routes all of
    /// 127.0.0.0/8 to loopback: tests use 127.0.0.2, .3... as distinct
    /// remote addresses for the server's per-address limits).
    pub async fn connect_from(
        addr: SocketAddr,
        local: std::net::IpAddr,
    ) -> std::io::Result<RawClient> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(local, 0))?;
        let tcp = sock.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(RawClient::from_tcp(tcp))
    }

    /// STARTTLS and PLAIN from `local`; returns the client (ready for a
    /// stream restart on success) and the server's answer.
    pub async fn auth_from(
        addr: SocketAddr,
        local: std::net::IpAddr,
        user: &str,
        password: &str,
    ) -> (RawClient, Element) {
        let mut c = RawClient::connect_from(addr, local)
            .await
            .unwrap_or_else(|e| panic!("cannot connect from {local}: {e}"));
        c.open().await;
        c.starttls().await;
        c.open().await;
        let r = c.auth_plain(user, password).await;
        (c, r)
    }

    /// STARTTLS, PLAIN, bind from `local`: a ready session.
    pub async fn login_from(
        addr: SocketAddr,
        local: std::net::IpAddr,
        user: &str,
        password: &str,
        resource: &str,
    ) -> RawClient {
        let (mut c, r) = RawClient::auth_from(addr, local, user, password).await;
        assert!(
            r.is("success", ns::SASL),
            "login of {user} from {local} failed: {r}"
        );
        c.open().await;
        let b = c.bind(Some(resource)).await;
        let jid = b
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind failed: {b}"));
        c.jid = jid;
        c
    }

    pub async fn send(&mut self, s: &str) {
        let io = self.io.as_mut().unwrap();
        io.write_all(s.as_bytes()).await.unwrap();
        io.flush().await.unwrap();
    }

    /// Sends, tolerating a connection the server already closed.
    pub async fn try_send(&mut self, s: &[u8]) -> bool {
        let io = self.io.as_mut().unwrap();
        io.write_all(s).await.is_ok() && io.flush().await.is_ok()
    }

    /// The next event; `None` when the server closed the connection.
    pub async fn event(&mut self) -> Option<Event> {
        let mut buf = [0u8; 16384];
        loop {
            match self.framer.next_event() {
                Ok(Some(e)) => return Some(e),
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            let io = self.io.as_mut().unwrap();
            let n = match tokio::time::timeout(WAIT, io.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => panic!("no data from the server for {WAIT:?} (client {})", self.jid),
            };
            if n == 0 {
                return None;
            }
            self.framer.feed(&buf[..n]);
        }
    }

    /// The next top-level element (stanza, nonza or stream error).
    pub async fn next(&mut self) -> Element {
        loop {
            match self.event().await {
                Some(Event::Stanza(el)) => return el,
                Some(Event::StreamOpen { .. }) => continue,
                Some(Event::StreamClose) => panic!("stream closed by the server ({})", self.jid),
                None => panic!("connection closed by the server ({})", self.jid),
            }
        }
    }

    /// Skips elements until `pred` matches one.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        let fut = async {
            loop {
                let el = self.next().await;
                if pred(&el) {
                    return el;
                }
            }
        };
        match tokio::time::timeout(WAIT, fut).await {
            Ok(el) => el,
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }

    /// Reads until the stream error and the close; returns the condition.
    pub async fn expect_stream_error(&mut self) -> String {
        let fut = async {
            loop {
                match self.event().await {
                    Some(Event::Stanza(el)) => {
                        if let Some(c) = stream_error(&el) {
                            return c;
                        }
                    }
                    Some(Event::StreamOpen { .. }) => {}
                    Some(Event::StreamClose) | None => panic!("closed without a stream error"),
                }
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("timed out waiting for a stream error")
    }

    /// Opens a stream; returns the features.
    pub async fn open(&mut self) -> Element {
        self.framer = Framer::new(Limits {
            max_stanza_bytes: 4 << 20,
            ..Limits::default()
        });
        self.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").await;
        match self.event().await {
            Some(Event::StreamOpen { .. }) => {}
            other => panic!("expected the server's stream header, got {other:?}"),
        }
        self.expect("stream features", |e| e.is("features", ns::STREAM))
            .await
    }

    /// Direct TLS from the first byte (XEP-0368), ALPN `xmpp-client`.
    pub async fn connect_direct_tls(addr: SocketAddr) -> RawClient {
        let mut c = RawClient::connect(addr).await;
        let io = c.io.take().unwrap();
        let config = super::tls::insecure_direct_tls_config().unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector
            .connect(name, io)
            .await
            .expect("direct TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"xmpp-client"[..]),
            "ALPN"
        );
        c.keep_channel_binding(tls.get_ref().1);
        c.io = Some(Box::new(tls));
        c
    }

    fn keep_channel_binding(&mut self, tls: &rustls::ClientConnection) {
        self.tls_exporter = match tls.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some(
                tls.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", Some(&[]))
                    .unwrap(),
            ),
            _ => None,
        };
        self.server_cert = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
    }

    pub async fn starttls(&mut self) {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let p = self.next().await;
        assert!(p.is("proceed", ns::TLS), "expected <proceed/>, got {p}");
        let io = self.io.take().unwrap();
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, io).await.expect("TLS handshake");
        self.keep_channel_binding(tls.get_ref().1);
        self.io = Some(Box::new(tls));
    }

    /// SASL PLAIN; returns the server's answer (`success` or `failure`).
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Element {
        let payload = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{user}\0{password}").as_bytes());
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        self.next().await
    }

    pub async fn bind(&mut self, resource: Option<&str>) -> Element {
        let res = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>"
        ))
        .await;
        self.expect("bind result", |e| e.attr("id") == Some("bind1"))
            .await
    }

    /// STARTTLS, PLAIN, bind: a ready session.
    pub async fn login(addr: SocketAddr, user: &str, password: &str, resource: &str) -> RawClient {
        let mut c = RawClient::connect(addr).await;
        c.open().await;
        c.starttls().await;
        c.open().await;
        let r = c.auth_plain(user, password).await;
        assert!(r.is("success", ns::SASL), "login of {user} failed: {r}");
        c.open().await;
        let b = c.bind(Some(resource)).await;
        let jid = b
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind failed: {b}"));
        c.jid = jid;
        c
    }

    /// Sends an iq ping and waits for its answer: everything the server
    /// sent before it has arrived.
    pub async fn sync(&mut self) -> Vec<Element> {
        let id = format!("sync-{}", rand::random::<u32>());
        self.send(&format!(
            "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let mut before = Vec::new();
        let fut = async {
            loop {
                let el = self.next().await;
                if el.attr("id") == Some(id.as_str()) {
                    return;
                }
                before.push(el);
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("timed out waiting for the ping result");
        before
    }
}

// Messages: what the delivery, resumption and SASL2 tests send and read.

pub fn chat(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")
}

pub fn stanza_id(el: &Element, by: &str) -> Option<String> {
    el.children()
        .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by))
        .and_then(|c| c.attr("id"))
        .map(str::to_string)
}

/// Enables XEP-0198 (resumable when asked); returns the SM id.
pub async fn enable_sm(c: &mut RawClient, resume: bool) -> String {
    let attr = if resume { " resume='true'" } else { "" };
    c.send(&format!("<enable xmlns='urn:xmpp:sm:3'{attr}/>"))
        .await;
    let e = c.expect("enabled", |e| e.is("enabled", ns::SM)).await;
    e.attr("id").unwrap_or_default().to_string()
}

/// Sends `bodies` to `to` then `<r/>`, and waits for the server's ack
/// counting all of them (`base` stanzas were counted before).
pub async fn send_acked(c: &mut RawClient, to: &str, bodies: &[String], base: u32) {
    let mut out = String::new();
    for b in bodies {
        out.push_str(&chat(to, b));
    }
    out.push_str("<r xmlns='urn:xmpp:sm:3'/>");
    c.send(&out).await;
    let want = base + bodies.len() as u32;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no ack for {want} stanzas");
        let a = c.expect("sm ack", |e| e.is("a", ns::SM)).await;
        let h: u32 = a.attr("h").and_then(|h| h.parse().ok()).unwrap();
        if h == want {
            return;
        }
        assert!(h < want, "acked more than was sent: {a}");
    }
}

/// Reads until `n` messages arrived (answering the server's `<r/>` with
/// the count of stanzas read when `ack`), returns (body, stanza id) pairs.
pub async fn read_messages(
    c: &mut RawClient,
    n: usize,
    by: &str,
    ack: bool,
    within: Duration,
) -> Vec<(String, String)> {
    let mut stanzas = 0u32;
    read_counting(c, n, by, ack, within, &mut stanzas).await
}

/// As [`read_messages`], counting the stanzas read in `stanzas` (the `h`
/// for a final acknowledgement).
pub async fn read_counting(
    c: &mut RawClient,
    n: usize,
    by: &str,
    ack: bool,
    within: Duration,
    stanzas: &mut u32,
) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let el = match tokio::time::timeout(left, c.next()).await {
            Ok(el) => el,
            Err(_) => panic!("{} of {n} messages within {within:?}: {got:?}", got.len()),
        };
        assert!(
            !el.is("error", ns::STREAM),
            "stream error after {} messages: {el}",
            got.len()
        );
        // None come in the middle of a session (after an inline XEP-0388
        // resumption, say).
        assert!(!el.is("features", ns::STREAM), "stream features: {el}");
        if el.is("r", ns::SM) {
            if ack {
                c.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{stanzas}'/>"))
                    .await;
            }
            continue;
        }
        if matches!(el.name(), "message" | "presence" | "iq") && el.ns() == ns::CLIENT {
            *stanzas += 1;
        }
        if el.name() == "message" {
            if let Some(b) = body_of(&el) {
                let id = stanza_id(&el, by).unwrap_or_else(|| panic!("no stanza id: {el}"));
                got.push((b, id));
            }
        }
    }
    got
}
