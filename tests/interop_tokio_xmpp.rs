//! Interop: xmpp-rs's `tokio-xmpp` client against a three-node Starling
//! cluster on loopback.
//!
//! alice (node 1) and bob (node 2) log in over STARTTLS + SCRAM, fetch their
//! empty rosters, send initial presence, subscribe to each other both ways
//! (RFC 6121 §3.1: pushes, subscription stanzas, presence after approval,
//! rosters ending in `both`) and chat across nodes (bare-JID delivery with
//! a XEP-0359 stanza-id, then a reply to the full JID); carol (node 1) gets
//! a message from alice on the same node.
//!
//! Every client goes through tokio-xmpp's own stream, SASL, resource
//! binding, stanza and IQ machinery. Only the transport is ours: tokio-xmpp's
//! stock STARTTLS connector trusts the system roots alone and has no knob
//! for another trust anchor, so [`PinnedStartTls`] does the same STARTTLS
//! exchange with tokio-xmpp's XML stream primitives and a rustls (ring)
//! client config that trusts exactly the node's self-signed certificate
//! (`<data_dir>/tls/cert.pem`) and checks it against the domain,
//! `localhost`. It also records every byte of the stream in clear text so a
//! failure shows what the server sent.
//!
//! alice and carol bind to the channel as tokio-xmpp's own connector does
//! over TLS 1.3: SCRAM-SHA-256-PLUS with `p=tls-exporter` (RFC 9266, the
//! exporter value from rustls); bob's connector says no channel binding
//! is in use, and he logs in with SCRAM-SHA-256 and the GS2 flag `n`. (A
//! client that sends `y` while `-PLUS` is offered is refused, RFC 5802 §6:
//! tests/channel_binding.rs.)
//!
//! Set `STARLING_INTEROP_WIRE=1` to print the wire traffic as it happens; on
//! a failure it is printed anyway, with the node logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use futures::{SinkExt, StreamExt};
use sasl::common::ChannelBinding;
use tokio::io::{AsyncRead, AsyncWrite, BufStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_xmpp::connect::ServerConnector;
use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::roster::{Ask, Item, Roster, Subscription};
use tokio_xmpp::parsers::stanza_id::StanzaId;
use tokio_xmpp::parsers::starttls;
use tokio_xmpp::xmlstream::{
    initiate_stream, PendingFeaturesRecv, ReadError, StreamHeader, Timeouts, XmppStream,
    XmppStreamElement,
};
use tokio_xmpp::{Client, Event, IqRequest, IqResponse, Stanza};

/// Every wait for the server.
const T: Duration = Duration::from_secs(15);
/// Cluster start-up: leader, listeners, a client's first login.
const START: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Wire transcript

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    FromServer,
    Note,
}

/// The clear-text traffic of one client's connections.
#[derive(Clone)]
struct Wire {
    who: &'static str,
    live: bool,
    chunks: Arc<Mutex<Vec<(Dir, String)>>>,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wire({})", self.who)
    }
}

impl Wire {
    fn new(who: &'static str) -> Wire {
        Wire {
            who,
            live: std::env::var_os("STARLING_INTEROP_WIRE").is_some(),
            chunks: Arc::default(),
        }
    }

    fn record(&self, dir: Dir, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        if self.live {
            eprintln!("[{}] {} {}", self.who, arrow(dir), text);
        }
        let mut chunks = self.chunks.lock().unwrap();
        match chunks.last_mut() {
            Some((d, s)) if *d == dir && dir != Dir::Note => s.push_str(&text),
            _ => chunks.push((dir, text.into_owned())),
        }
    }

    fn note(&self, text: &str) {
        self.record(Dir::Note, text.as_bytes());
    }

    /// What went in direction `dir` before and after the first TLS
    /// handshake, each concatenated.
    fn split_at_tls(&self, dir: Dir) -> (String, String) {
        let chunks = self.chunks.lock().unwrap();
        let tls = chunks
            .iter()
            .position(|(d, s)| *d == Dir::Note && s.starts_with("TLS established"))
            .unwrap_or(chunks.len());
        let join = |part: &[(Dir, String)]| -> String {
            part.iter()
                .filter(|(d, _)| *d == dir)
                .map(|(_, s)| s.as_str())
                .collect()
        };
        (join(&chunks[..tls]), join(&chunks[tls..]))
    }

    fn dump(&self) -> String {
        let chunks = self.chunks.lock().unwrap();
        let mut out = String::new();
        for (d, s) in chunks.iter() {
            out.push_str(&format!("[{}] {} {}\n", self.who, arrow(*d), s));
        }
        out
    }
}

fn arrow(d: Dir) -> &'static str {
    match d {
        Dir::ToServer => "C->S",
        Dir::FromServer => "S->C",
        Dir::Note => "----",
    }
}

/// An I/O object that copies what passes through it into a [`Wire`].
struct Tap<S> {
    inner: S,
    wire: Wire,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.wire.record(Dir::FromServer, &buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.wire.record(Dir::ToServer, &buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// STARTTLS connector trusting one pinned certificate

/// The GS2 channel-binding flag the client sends (RFC 5802 §7).
#[derive(Clone, Copy, Debug)]
enum Gs2 {
    /// `n`: the client does not support channel binding.
    N,
    /// `p=tls-exporter`: SCRAM-*-PLUS bound to the TLS 1.3 exporter.
    Exporter,
}

#[derive(Clone, Debug)]
struct PinnedStartTls {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    gs2: Gs2,
    wire: Wire,
    attempts: Arc<AtomicUsize>,
}

fn header(domain: &str) -> StreamHeader<'_> {
    StreamHeader {
        to: Some(domain.into()),
        from: None,
        id: None,
    }
}

impl PinnedStartTls {
    async fn connect_inner(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<
        (
            PendingFeaturesRecv<BufStream<Tap<TlsStream<TcpStream>>>>,
            ChannelBinding,
        ),
        tokio_xmpp::Error,
    > {
        let domain = jid.domain().as_str().to_owned();
        let tcp = TcpStream::connect(self.addr).await?;
        let tap = Tap {
            inner: tcp,
            wire: self.wire.clone(),
        };
        let pending = initiate_stream(BufStream::new(tap), ns, header(&domain), timeouts).await?;
        let (features, mut stream): (_, XmppStream<_>) = pending.recv_features().await?;
        if !features.can_starttls() {
            return Err(tokio_xmpp::error::ProtocolError::NoTls.into());
        }
        stream
            .send(&XmppStreamElement::Starttls(starttls::Nonza::Request(
                starttls::Request,
            )))
            .await?;
        loop {
            match stream
                .next()
                .await
                .map(|r| r.and_then(|e| e.into_read_error()))
            {
                Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)))) => break,
                Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Failure(_)))) => {
                    return Err(
                        io::Error::other("server answered <starttls/> with <failure/>").into(),
                    )
                }
                Some(Ok(other)) => {
                    return Err(io::Error::other(format!(
                        "unexpected element instead of <proceed/>: {other:?}"
                    ))
                    .into())
                }
                Some(Err(ReadError::SoftTimeout)) => (),
                Some(Err(ReadError::HardError(e))) => return Err(e.into()),
                Some(Err(ReadError::ParseError(e))) => return Err(io::Error::other(e).into()),
                None | Some(Err(ReadError::StreamFooterReceived)) => {
                    return Err(tokio_xmpp::Error::Disconnected)
                }
            }
        }
        let tcp = stream.into_inner().into_inner().inner;
        let name =
            rustls::pki_types::ServerName::try_from(domain.clone()).map_err(io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        {
            let (_, conn) = tls.get_ref();
            self.wire.note(&format!(
                "TLS established: {:?} {:?}",
                conn.protocol_version(),
                conn.negotiated_cipher_suite().map(|s| s.suite())
            ));
        }
        let cb = match self.gs2 {
            Gs2::N => ChannelBinding::None,
            Gs2::Exporter => {
                // RFC 9266 §2: 32 bytes, label "EXPORTER-Channel-Binding",
                // no context.
                let (_, conn) = tls.get_ref();
                let data = conn
                    .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .map_err(io::Error::other)?;
                ChannelBinding::TlsExporter(data)
            }
        };
        let tap = Tap {
            inner: tls,
            wire: self.wire.clone(),
        };
        let pending = initiate_stream(BufStream::new(tap), ns, header(&domain), timeouts).await?;
        Ok((pending, cb))
    }
}

impl ServerConnector for PinnedStartTls {
    type Stream = BufStream<Tap<TlsStream<TcpStream>>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<Self::Stream>, ChannelBinding), tokio_xmpp::Error> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        self.wire
            .note(&format!("connection attempt {n} to {}", self.addr));
        let r = self.connect_inner(jid, ns, timeouts).await;
        if let Err(e) = &r {
            self.wire
                .note(&format!("connection attempt {n} failed: {e}"));
        }
        r
    }
}

/// A rustls client config (ring) whose only trust anchor is `cert`.
fn trusting(cert: &PathBuf) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(cert).unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    assert_eq!(roots.len(), 1, "one certificate in {}", cert.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

// ---------------------------------------------------------------------------
// tokio-xmpp's own log

/// Warnings and errors go to stderr at once; with `STARLING_INTEROP_LOG` set
/// to `debug` or `trace`, everything is kept in memory (printing it would
/// change the timing) and printed with the failure report.
struct ClientLog {
    kept: Mutex<Vec<String>>,
}

impl log::Log for ClientLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "[{:?} {} {}] {}",
            std::thread::current().id(),
            r.level(),
            r.target(),
            r.args()
        );
        if r.level() <= log::Level::Warn {
            eprintln!("{line}");
        }
        self.kept.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

static LOGGER: ClientLog = ClientLog {
    kept: Mutex::new(Vec::new()),
};

// ---------------------------------------------------------------------------
// Failure report

/// Prints the wire transcripts and node logs if the test panics.
struct Report {
    wires: Mutex<Vec<Wire>>,
    logs: Vec<(u64, PathBuf)>,
}

impl Report {
    fn new(cluster: &TestCluster) -> Report {
        Report {
            wires: Mutex::default(),
            logs: cluster
                .nodes
                .iter()
                .map(|n| (n.config.node_id, n.log.clone()))
                .collect(),
        }
    }

    fn add(&self, w: &Wire) {
        self.wires.lock().unwrap().push(w.clone());
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let kept = std::mem::take(&mut *LOGGER.kept.lock().unwrap());
        if !kept.is_empty() {
            eprintln!("==================== tokio-xmpp log ====================");
            eprintln!("{}", kept.join("\n"));
        }
        eprintln!("==================== wire transcripts ====================");
        for w in self.wires.lock().unwrap().iter() {
            eprintln!("{}", w.dump());
        }
        for (id, path) in &self.logs {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            eprintln!(
                "==================== node {id} log ({}) ====================",
                path.display()
            );
            eprintln!("{log}");
        }
    }
}

// ---------------------------------------------------------------------------
// A client

struct Peer {
    name: &'static str,
    client: Client,
    jid: FullJid,
    wire: Wire,
    attempts: Arc<AtomicUsize>,
    /// Stanzas received and not yet consumed by an expectation.
    backlog: VecDeque<Stanza>,
    /// The last roster push received for each contact, in arrival order.
    pushed: Vec<Item>,
}

impl Peer {
    async fn connect(
        name: &'static str,
        jid: &str,
        password: &str,
        node: &TestNode,
        gs2: Gs2,
        report: &Report,
    ) -> Peer {
        let wire = Wire::new(name);
        report.add(&wire);
        let attempts = Arc::new(AtomicUsize::new(0));
        let connector = PinnedStartTls {
            addr: node.config.xmpp.client_addr,
            tls: trusting(&node.config.data_dir.join("tls").join("cert.pem")),
            gs2,
            wire: wire.clone(),
            attempts: attempts.clone(),
        };
        let mut client = Client::new_with_connector(
            Jid::new(jid).unwrap(),
            password,
            connector,
            Timeouts::tight(),
        );
        let jid = match tokio::time::timeout(START, client.next()).await {
            Ok(Some(Event::Online {
                bound_jid,
                resumed: false,
                ..
            })) => bound_jid.try_into_full().unwrap(),
            Ok(other) => panic!("{name}: expected to come online, got {other:?}"),
            Err(_) => panic!(
                "{name}: not online after {START:?} ({} connection attempts; transcript below)",
                attempts.load(Ordering::SeqCst)
            ),
        };
        eprintln!("{name}: online as {jid}");
        Peer {
            name,
            client,
            jid,
            wire,
            attempts,
            backlog: VecDeque::new(),
            pushed: Vec::new(),
        }
    }

    fn bare(&self) -> BareJid {
        self.jid.to_bare()
    }

    async fn send(&mut self, stanza: impl Into<Stanza>) {
        let stanza = stanza.into();
        tokio::time::timeout(T, self.client.send_stanza(stanza))
            .await
            .unwrap_or_else(|_| panic!("{}: sending took over {T:?}", self.name))
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.name));
    }

    /// Handles one event from the client: stanzas go to the backlog (roster
    /// pushes are acknowledged first, RFC 6121 §2.1.6); anything else means
    /// the stream broke.
    async fn on_event(&mut self, ev: Option<Event>, waiting_for: &str) {
        match ev {
            Some(Event::Stanza(st)) => {
                if let Stanza::Iq(Iq::Set {
                    from, id, payload, ..
                }) = &st
                {
                    if payload.is("query", "jabber:iq:roster") {
                        assert!(
                            from.is_none() || from.as_ref() == Some(&Jid::from(self.bare())),
                            "{}: roster push from {from:?}, RFC 6121 §2.1.6 allows only none or \
                             the account's bare JID: {st:?}",
                            self.name
                        );
                        let items = Roster::try_from(payload.clone())
                            .unwrap_or_else(|e| {
                                panic!("{}: unparsable roster push: {e:?}", self.name)
                            })
                            .items;
                        for i in items {
                            self.pushed.retain(|p| p.jid != i.jid);
                            self.pushed.push(i);
                        }
                        let ack = Iq::Result {
                            from: None,
                            to: None,
                            id: id.clone(),
                            payload: None,
                        };
                        self.send(ack).await;
                    }
                }
                self.backlog.push_back(st);
            }
            Some(Event::Online { bound_jid, .. }) => panic!(
                "{}: the stream was re-established (as {bound_jid}) while waiting for \
                 {waiting_for}: the server dropped the previous one (see transcript)",
                self.name
            ),
            Some(Event::Disconnected(e)) => panic!(
                "{}: disconnected while waiting for {waiting_for}: {e}",
                self.name
            ),
            None => panic!(
                "{}: client stream ended while waiting for {waiting_for}",
                self.name
            ),
        }
    }

    /// Waits up to [`T`] for a stanza matching `pred` and returns it;
    /// other stanzas stay in the backlog.
    async fn expect(&mut self, what: &str, mut pred: impl FnMut(&Stanza) -> bool) -> Stanza {
        let deadline = tokio::time::Instant::now() + T;
        let mut seen = 0;
        loop {
            if let Some(i) = self.backlog.iter().skip(seen).position(&mut pred) {
                return self.backlog.remove(seen + i).unwrap();
            }
            seen = self.backlog.len();
            match tokio::time::timeout_at(deadline, self.client.next()).await {
                Ok(ev) => self.on_event(ev, what).await,
                Err(_) => panic!(
                    "{}: no {what} within {T:?}; received and unmatched meanwhile: {:#?}",
                    self.name, self.backlog
                ),
            }
        }
    }

    /// Sends an IQ (tokio-xmpp addresses it to the account's bare JID when
    /// `to` is `None`) and waits for its response, still reading the stream.
    async fn iq(&mut self, what: &str, to: Option<Jid>, req: IqRequest) -> IqResponse {
        let token = self.client.send_iq(to, req).await;
        let mut token = std::pin::pin!(token);
        let deadline = tokio::time::Instant::now() + T;
        loop {
            // Ok: the response; Err: an event that came meanwhile.
            let step = tokio::select! {
                r = &mut token => Ok(r),
                ev = self.client.next() => Err(ev),
                _ = tokio::time::sleep_until(deadline) => panic!(
                    "{}: no response to {what} within {T:?}; received meanwhile: {:#?}",
                    self.name, self.backlog
                ),
            };
            match step {
                Ok(r) => return r.unwrap_or_else(|e| panic!("{}: {what} failed: {e}", self.name)),
                Err(ev) => self.on_event(ev, what).await,
            }
        }
    }

    async fn roster(&mut self) -> Roster {
        let get = Roster {
            ver: None,
            items: vec![],
        };
        match self
            .iq("roster get", None, IqRequest::Get(get.into()))
            .await
        {
            IqResponse::Result(Some(el)) => Roster::try_from(el)
                .unwrap_or_else(|e| panic!("{}: roster result unparsable: {e:?}", self.name)),
            other => panic!(
                "{}: roster get answered {other:?}, RFC 6121 §2.1.3 wants a result with \
                 <query xmlns='jabber:iq:roster'/>",
                self.name
            ),
        }
    }

    /// Waits for a roster push whose item for `jid` satisfies `pred`.
    async fn expect_push(
        &mut self,
        what: &str,
        jid: &BareJid,
        pred: impl Fn(&Item) -> bool,
    ) -> Item {
        let st = self
            .expect(what, |st| match st {
                Stanza::Iq(Iq::Set { payload, .. }) if payload.is("query", "jabber:iq:roster") => {
                    Roster::try_from(payload.clone())
                        .map(|r| r.items.iter().any(|i| &i.jid == jid && pred(i)))
                        .unwrap_or(false)
                }
                _ => false,
            })
            .await;
        let Stanza::Iq(Iq::Set { payload, .. }) = st else {
            unreachable!()
        };
        let r = Roster::try_from(payload).unwrap();
        assert_eq!(
            r.items.len(),
            1,
            "{}: a roster push carries one item (RFC 6121 §2.1.6): {r:?}",
            self.name
        );
        r.items.into_iter().next().unwrap()
    }

    /// Waits for a presence of type `ty` from exactly `from`.
    async fn expect_presence(&mut self, what: &str, ty: PresenceType, from: &Jid) -> Presence {
        let st = self
            .expect(what, |st| {
                matches!(st, Stanza::Presence(p) if p.type_ == ty && p.from.as_ref() == Some(from))
            })
            .await;
        let Stanza::Presence(p) = st else {
            unreachable!()
        };
        p
    }

    /// Waits for a chat message with body `body`.
    async fn expect_chat(&mut self, body: &str) -> Message {
        let what = format!("chat message {body:?}");
        let st = self
            .expect(&what, |st| {
                matches!(st, Stanza::Message(m)
                    if m.bodies.values().any(|b| b == body))
            })
            .await;
        let Stanza::Message(m) = st else {
            unreachable!()
        };
        m
    }

    async fn chat(&mut self, to: Jid, body: &str) {
        let m = Message::chat(Some(to)).with_body(Lang::from(String::new()), body.to_string());
        self.send(m).await;
    }

    /// The SASL mechanism and the GS2 flag the client used, from the wire.
    fn sasl_used(&self) -> (String, String) {
        let (_, sent) = self.wire.split_at_tls(Dir::ToServer);
        let start = sent
            .find("<auth")
            .unwrap_or_else(|| panic!("{}: no <auth/> sent:\n{sent}", self.name));
        let auth = &sent[start..];
        let end = auth.find("</auth>").expect("</auth>");
        let auth = &auth[..end];
        let mech = auth
            .split("mechanism=")
            .nth(1)
            .and_then(|s| {
                let q = s.chars().next()?;
                s[1..].split(q).next()
            })
            .expect("mechanism attribute")
            .to_string();
        let data = &auth[auth.find('>').expect(">") + 1..];
        let first = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .expect("base64 initial response");
        let first = String::from_utf8(first).unwrap();
        (
            mech,
            first.split(',').next().unwrap_or_default().to_string(),
        )
    }

    /// At the end: one connection only, and no error stanza left unread.
    async fn finish(mut self) {
        // Drain what is already queued.
        while let Ok(ev) =
            tokio::time::timeout(Duration::from_millis(200), self.client.next()).await
        {
            self.on_event(ev, "the end").await;
        }
        let errors: Vec<&Stanza> = self
            .backlog
            .iter()
            .filter(|st| match st {
                Stanza::Iq(Iq::Error { .. }) => true,
                Stanza::Message(m) => m.type_ == MessageType::Error,
                Stanza::Presence(p) => p.type_ == PresenceType::Error,
                _ => false,
            })
            .collect();
        assert!(
            errors.is_empty(),
            "{}: error stanzas received: {errors:#?}",
            self.name
        );
        assert_eq!(
            self.attempts.load(Ordering::SeqCst),
            1,
            "{}: connected more than once",
            self.name
        );
        let name = self.name;
        tokio::time::timeout(T, self.client.send_end())
            .await
            .unwrap_or_else(|_| panic!("{name}: closing the stream took over {T:?}"))
            .unwrap_or_else(|e| panic!("{name}: closing the stream failed: {e}"));
    }
}

// ---------------------------------------------------------------------------
// The test

async fn wait_serving(cluster: &TestCluster) {
    let deadline = Instant::now() + START;
    for n in &cluster.nodes {
        let id = n.config.node_id;
        while !cluster.log_of(id).contains("serving XMPP clients") {
            assert!(
                Instant::now() < deadline,
                "node {id} not serving XMPP clients after {START:?}:\n{}",
                cluster.log_of(id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// STARTTLS was required and offered alone (RFC 6120 §5.3.1), SASL came
/// after TLS with SCRAM-SHA-256(-PLUS), SCRAM-SHA-1(-PLUS) and PLAIN and
/// the XEP-0440 channel-binding types, and the client logged in with `mech`
/// and GS2 flag `gs2`.
fn negotiated_scram_after_starttls(p: &Peer, mech: &str, gs2: &str) {
    let (pre, post) = p.wire.split_at_tls(Dir::FromServer);
    assert!(
        pre.contains("urn:ietf:params:xml:ns:xmpp-tls") && pre.contains("<required"),
        "{}: <starttls><required/></starttls> expected before TLS:\n{pre}",
        p.name
    );
    assert!(
        !pre.contains("xmpp-sasl"),
        "{}: SASL offered before TLS although TLS is mandatory (RFC 6120 §5.3.1):\n{pre}",
        p.name
    );
    for m in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        assert!(
            post.contains(&format!("<mechanism>{m}</mechanism>")),
            "{}: {m} not offered after TLS:\n{post}",
            p.name
        );
    }
    assert!(
        post.contains("<channel-binding type='tls-exporter'/>"),
        "{}: XEP-0440 tls-exporter not announced over TLS 1.3:\n{post}",
        p.name
    );
    assert_eq!(
        p.sasl_used(),
        (mech.to_string(), gs2.to_string()),
        "{}: SASL mechanism and GS2 flag",
        p.name
    );
    assert!(
        post.contains("<success "),
        "{}: no SASL <success/>:\n{post}",
        p.name
    );
}

fn only_item<'a>(who: &str, roster: &'a Roster) -> &'a Item {
    assert_eq!(roster.items.len(), 1, "{who}: roster {roster:?}");
    &roster.items[0]
}

fn stanza_id(who: &str, m: &Message) -> StanzaId {
    let ids: Vec<StanzaId> = m
        .payloads
        .iter()
        .filter(|p| p.is("stanza-id", "urn:xmpp:sid:0"))
        .map(|p| StanzaId::try_from(p.clone()).unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "{who}: one <stanza-id/> expected (XEP-0359): {m:?}"
    );
    ids.into_iter().next().unwrap()
}

// A single-threaded runtime on purpose: in tokio-xmpp 6.0.0,
// `StanzaReceiver::poll_next` (src/stanzastream/mod.rs) returns
// `Poll::Pending` without registering a waker when `try_lock` finds the
// stream locked by `StanzaSender::send`. On a multi-threaded runtime the
// client's background worker loses that race now and then when a stanza is
// sent while another arrives, and never reads the stream again: the stanzas
// are on the wire (see the transcript) but the `Client` yields nothing more.
// With one thread, `send` never yields while it holds the lock.
#[tokio::test]
async fn tokio_xmpp_clients_subscribe_and_chat_across_nodes() {
    // Warnings and errors by default; STARLING_INTEROP_LOG=debug|trace for more.
    let level = std::env::var("STARLING_INTEROP_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(level));
    let started = Instant::now();

    let cluster = TestCluster::start(3, fast_raft());
    let report = Report::new(&cluster);
    let leader = cluster.wait_leader(1, START).await;
    for name in ["alice", "bob", "carol"] {
        cluster
            .create_user(leader, name)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    cluster.wait_converged(leader, &[1, 2, 3], START).await;
    wait_serving(&cluster).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);

    // 2. alice on node 1, bob on node 2.
    let mut alice = Peer::connect(
        "alice",
        "alice@localhost",
        "pw-alice",
        n1,
        Gs2::Exporter,
        &report,
    )
    .await;
    let mut bob = Peer::connect("bob", "bob@localhost", "pw-bob", n2, Gs2::N, &report).await;
    assert_eq!(alice.bare().to_string(), "alice@localhost");
    assert_eq!(bob.bare().to_string(), "bob@localhost");

    negotiated_scram_after_starttls(&alice, "SCRAM-SHA-256-PLUS", "p=tls-exporter");
    negotiated_scram_after_starttls(&bob, "SCRAM-SHA-256", "n");

    // 3. Roster (empty), then initial presence, which comes back to the
    // sending resource too (RFC 6121 §4.2.2).
    for p in [&mut alice, &mut bob] {
        let r = p.roster().await;
        assert!(
            r.items.is_empty(),
            "{}: fresh roster not empty: {r:?}",
            p.name
        );
        p.send(Presence::available()).await;
        let me = Jid::from(p.jid.clone());
        p.expect_presence(
            "own initial presence (RFC 6121 §4.2.2)",
            PresenceType::None,
            &me,
        )
        .await;
    }
    let (alice_bare, bob_bare) = (Jid::from(alice.bare()), Jid::from(bob.bare()));
    let (alice_full, bob_full) = (Jid::from(alice.jid.clone()), Jid::from(bob.jid.clone()));

    // 4. Mutual subscription (RFC 6121 §3.1).
    alice.send(Presence::subscribe().with_to(bob.bare())).await;
    let i = alice
        .expect_push(
            "roster push: bob, none + ask (§3.1.2)",
            &bob.bare(),
            |_| true,
        )
        .await;
    assert_eq!(
        (i.subscription.clone(), i.ask.clone()),
        (Subscription::None, Ask::Subscribe),
        "alice: first push for bob (RFC 6121 §3.1.2): {i:?}"
    );
    let p = bob
        .expect_presence(
            "subscribe from alice's bare JID (§3.1.2/3.1.3)",
            PresenceType::Subscribe,
            &alice_bare,
        )
        .await;
    // Addressed to bob: his bare JID as sent, or the resource it went to.
    assert!(
        p.to.as_ref().is_some_and(|to| to.to_bare() == bob.bare()),
        "bob: subscribe addressed to {:?}",
        p.to
    );

    bob.send(Presence::subscribed().with_to(alice.bare())).await;
    bob.expect_push("roster push: alice, from (§3.1.5)", &alice.bare(), |i| {
        i.subscription == Subscription::From
    })
    .await;
    alice
        .expect_presence(
            "subscribed from bob (§3.1.6)",
            PresenceType::Subscribed,
            &bob_bare,
        )
        .await;
    alice
        .expect_push("roster push: bob, to (§3.1.6)", &bob.bare(), |i| {
            i.subscription == Subscription::To && i.ask == Ask::None
        })
        .await;
    alice
        .expect_presence(
            "bob's available presence after approval (§3.1.5)",
            PresenceType::None,
            &bob_full,
        )
        .await;

    bob.send(Presence::subscribe().with_to(alice.bare())).await;
    bob.expect_push(
        "roster push: alice, from + ask (§3.1.2)",
        &alice.bare(),
        |i| i.subscription == Subscription::From && i.ask == Ask::Subscribe,
    )
    .await;
    alice
        .expect_presence(
            "subscribe from bob's bare JID",
            PresenceType::Subscribe,
            &bob_bare,
        )
        .await;
    alice.send(Presence::subscribed().with_to(bob.bare())).await;
    alice
        .expect_push("roster push: bob, both (§3.1.5)", &bob.bare(), |i| {
            i.subscription == Subscription::Both
        })
        .await;
    bob.expect_presence(
        "subscribed from alice (§3.1.6)",
        PresenceType::Subscribed,
        &alice_bare,
    )
    .await;
    bob.expect_push("roster push: alice, both (§3.1.6)", &alice.bare(), |i| {
        i.subscription == Subscription::Both && i.ask == Ask::None
    })
    .await;
    bob.expect_presence(
        "alice's available presence after approval (§3.1.5)",
        PresenceType::None,
        &alice_full,
    )
    .await;

    for (p, other) in [(&mut alice, "bob@localhost"), (&mut bob, "alice@localhost")] {
        let r = p.roster().await;
        // A roster result may not be older than a push the same stream
        // already carried (RFC 6121 §2.1.6: the push announces the change
        // to the roster that a later get returns).
        assert_eq!(
            r.items, p.pushed,
            "{}: the roster result contradicts the last roster push received earlier on \
             the same stream (stale read?)",
            p.name
        );
        let i = only_item(p.name, &r);
        assert_eq!(i.jid.to_string(), other, "{}: {r:?}", p.name);
        assert_eq!(i.subscription, Subscription::Both, "{}: {r:?}", p.name);
        assert_eq!(i.ask, Ask::None, "{}: {r:?}", p.name);
    }

    // 5. alice -> bob's bare JID, across nodes.
    alice.chat(bob_bare.clone(), "hello bob, from node 1").await;
    let m = bob.expect_chat("hello bob, from node 1").await;
    assert_eq!(m.type_, MessageType::Chat, "bob: {m:?}");
    assert_eq!(
        m.from.as_ref(),
        Some(&alice_full),
        "bob: from must be alice's full JID: {m:?}"
    );
    let sid = stanza_id("bob", &m);
    assert_eq!(sid.by, bob_bare, "bob: stanza-id by: {m:?}");
    assert!(!sid.id.is_empty(), "bob: empty stanza-id: {m:?}");

    // 6. bob -> alice's full JID.
    bob.chat(alice_full.clone(), "hi alice, from node 2").await;
    let m = alice.expect_chat("hi alice, from node 2").await;
    assert_eq!(m.from.as_ref(), Some(&bob_full), "alice: {m:?}");
    assert_eq!(m.to.as_ref(), Some(&alice_full), "alice: {m:?}");
    assert_eq!(stanza_id("alice", &m).by, alice_bare, "alice: {m:?}");

    // 7. carol on node 1 with a resource of her choice; alice -> carol is
    // delivered on the same node.
    let mut carol = Peer::connect(
        "carol",
        "carol@localhost/interop",
        "pw-carol",
        n1,
        Gs2::Exporter,
        &report,
    )
    .await;
    assert_eq!(
        carol.jid.to_string(),
        "carol@localhost/interop",
        "requested resource (RFC 6120 §7.7.2.2)"
    );
    negotiated_scram_after_starttls(&carol, "SCRAM-SHA-256-PLUS", "p=tls-exporter");
    let r = carol.roster().await;
    assert!(r.items.is_empty(), "carol: {r:?}");
    carol.send(Presence::available()).await;
    let carol_full = Jid::from(carol.jid.clone());
    carol
        .expect_presence("own initial presence", PresenceType::None, &carol_full)
        .await;
    let carol_bare = Jid::from(carol.bare());
    alice
        .chat(carol_bare.clone(), "hello carol, same node")
        .await;
    let m = carol.expect_chat("hello carol, same node").await;
    assert_eq!(m.from.as_ref(), Some(&alice_full), "carol: {m:?}");
    assert_eq!(stanza_id("carol", &m).by, carol_bare, "carol: {m:?}");

    for p in [alice, bob, carol] {
        p.finish().await;
    }
    eprintln!("interop test done in {:?}", started.elapsed());
    drop(report);
}
