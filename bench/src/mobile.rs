//! `starling-bench mobile`: what a phone's reconnect costs.
//!
//! - **Round trips** (`--rounds`): from TCP connect to the first message
//!   received, for three ways in: STARTTLS, SCRAM-SHA-256 (RFC 6120 SASL),
//!   bind and initial presence; direct TLS (XEP-0368), SASL2 SCRAM-SHA-256
//!   with Bind 2 inline (XEP-0388, XEP-0386) and initial presence; direct
//!   TLS and FAST (XEP-0484, HT-SHA-256-NONE) with XEP-0198 resumption
//!   inline. Each connection goes through a proxy that delays every chunk
//!   by `--delay-ms` each way (a phone's network; `tc` qdiscs are not
//!   available here), and the client counts its *turns* below TLS: how
//!   often it read after having written, i.e. the round trips it waited
//!   for. The message is one a contact sent while the client was away: an
//!   offline message for the first two, an unacknowledged stanza of the
//!   detached session for the third (a phone that lost its network).
//! - **Reconnect storm** (`--storm N`): N accounts with FAST tokens
//!   reconnect at once (their node died, say), through no proxy: logins per
//!   second and time until all are bound, against the same N logging in
//!   with SASL2 SCRAM-SHA-256 (the client's salted password cached, as
//!   Conversations does, so the figure is the server's cost, not the load
//!   generator's PBKDF2) and with PBKDF2 on every login.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use starling_raft::credentials::{h, hmac, salted_password, ScramHash};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use starling::c2s::stream::BoxIo;
use starling::xmpp::framer::{Event, Framer, Limits};
use starling::xmpp::{ns, Element};

use crate::client::{self, ConnectOpts, Mech};

const SASL2: &str = "urn:xmpp:sasl:2";
const BIND2: &str = "urn:xmpp:bind:0";
const FAST: &str = "urn:xmpp:fast:0";
const UA: &str = "<user-agent id='0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9'>\
                  <software>starling-bench</software><device>bench</device></user-agent>";

#[derive(Debug, Clone, clap::Args)]
pub struct MobileArgs {
    /// The server's STARTTLS (port 5222) address.
    #[arg(long)]
    pub starttls_addr: SocketAddr,
    /// The server's direct TLS (XEP-0368) address.
    #[arg(long)]
    pub tls_addr: SocketAddr,
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    #[arg(long, default_value = "bench-password")]
    pub password: String,
    /// Account names are PREFIX-N (registered in-band first).
    #[arg(long, default_value = "mob")]
    pub prefix: String,
    /// One-way delay of the proxy, milliseconds.
    #[arg(long, default_value_t = 50)]
    pub delay_ms: u64,
    /// Measured logins per way in (0: skip the round trips).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Accounts in the reconnect storm (0: no storm).
    #[arg(long, default_value_t = 0)]
    pub storm: usize,
    /// Logins in flight at once during the storm's preparation.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

// --- Turns: round trips counted below TLS ---------------------------------

/// A socket that counts the reads that follow a write: the round trips
/// its owner waited for.
struct Counted {
    inner: TcpStream,
    turns: Arc<AtomicU32>,
    wrote: bool,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before && self.wrote {
            self.wrote = false;
            self.turns.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// --- The delaying proxy ----------------------------------------------------

/// Listens on a loopback port and relays every connection to `target`,
/// each chunk `delay` late, in order, both ways.
async fn delay_proxy(target: SocketAddr, delay: Duration) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, delay), pump(sr, cw, delay));
            });
        }
    });
    Ok(addr)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

// --- A small client --------------------------------------------------------

struct Conn {
    io: Option<BoxIo>,
    counted: Option<Counted>,
    framer: Framer,
    buf: Box<[u8]>,
    turns: Arc<AtomicU32>,
}

impl Conn {
    async fn tcp(addr: SocketAddr) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let turns = Arc::new(AtomicU32::new(0));
        Ok(Conn {
            io: None,
            counted: Some(Counted {
                inner: tcp,
                turns: turns.clone(),
                wrote: false,
            }),
            framer: Framer::new(Limits::default()),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            turns,
        })
    }

    /// The TLS handshake (direct, or after `<proceed/>`) of a phone that
    /// kept no session: a full handshake, no 0-RTT data.
    async fn tls(&mut self, domain: &str) -> anyhow::Result<()> {
        self.tls_with(domain, client::insecure_tls_config()?)
            .await
            .map(|_| ())
    }

    /// The TLS handshake with `config`, whose session store may hold a
    /// ticket of this server (a phone that kept its last session); whether
    /// the session was resumed.
    async fn tls_with(
        &mut self,
        domain: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<bool> {
        let plain: BoxIo = match (self.counted.take(), self.io.take()) {
            (Some(c), _) => Box::new(c),
            (None, Some(io)) => io,
            (None, None) => bail!("no socket"),
        };
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, plain)
            .await?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.io = Some(Box::new(tls));
        self.framer = Framer::new(Limits::default());
        Ok(resumed)
    }

    fn plain(&mut self) {
        if let Some(c) = self.counted.take() {
            self.io = Some(Box::new(c));
        }
    }

    async fn send(&mut self, s: &str) -> anyhow::Result<()> {
        self.plain();
        let io = self.io.as_mut().context("no socket")?;
        io.write_all(s.as_bytes()).await?;
        io.flush().await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<Element> {
        loop {
            match self.framer.next_event()? {
                Some(Event::Stanza(el)) => {
                    if el.is("error", ns::STREAM) {
                        bail!("stream error: {el}");
                    }
                    return Ok(el);
                }
                Some(Event::StreamOpen { .. }) => continue,
                Some(Event::StreamClose) => bail!("the server closed the stream"),
                None => {}
            }
            self.plain();
            let io = self.io.as_mut().context("no socket")?;
            let n = io.read(&mut self.buf).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.framer.feed(&self.buf[..n]);
        }
    }

    fn header(domain: &str) -> String {
        format!(
            "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )
    }

    async fn open(&mut self, domain: &str) -> anyhow::Result<Element> {
        self.framer = Framer::new(Limits::default());
        self.send(&Self::header(domain)).await?;
        self.features().await
    }

    async fn features(&mut self) -> anyhow::Result<Element> {
        loop {
            let el = self.next().await?;
            if el.is("features", ns::STREAM) {
                return Ok(el);
            }
        }
    }

    /// Reads until a message with a body.
    async fn first_message(&mut self) -> anyhow::Result<Element> {
        loop {
            let el = self.next().await?;
            if el.name() == "message" && el.has_child("body", ns::CLIENT) {
                return Ok(el);
            }
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> anyhow::Result<Vec<u8>> {
    Ok(base64::engine::general_purpose::STANDARD.decode(s.trim())?)
}

/// A user's SCRAM-SHA-256 keys, once its salted password is known.
#[derive(Clone)]
struct Keys {
    salt: Vec<u8>,
    iterations: u32,
    salted: Vec<u8>,
}

/// SCRAM-SHA-256 in RFC 6120 SASL (`sasl2` false) or SASL2 (with
/// `inline` in `<authenticate/>`); returns the success element. `cache`:
/// the salted password of an earlier login with the same salt is reused
/// (else PBKDF2 runs, and its result is stored there).
async fn scram(
    c: &mut Conn,
    sasl2: bool,
    user: &str,
    password: &str,
    inline: &str,
    cache: &mut Option<Keys>,
) -> anyhow::Result<Element> {
    let hash = ScramHash::Sha256;
    let cnonce = b64(&rand::random::<[u8; 18]>());
    let first_bare = format!("n={user},r={cnonce}");
    let first = b64(format!("n,,{first_bare}").as_bytes());
    let sasl_ns = if sasl2 { SASL2 } else { ns::SASL };
    if sasl2 {
        c.send(&format!(
            "<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256'><initial-response>{first}</initial-response>{UA}{inline}</authenticate>"
        ))
        .await?;
    } else {
        c.send(&format!(
            "<auth xmlns='{}' mechanism='SCRAM-SHA-256'>{first}</auth>",
            ns::SASL
        ))
        .await?;
    }
    let ch = c.next().await?;
    if !ch.is("challenge", sasl_ns) {
        bail!("expected a challenge: {ch}");
    }
    let server_first = String::from_utf8(unb64(&ch.text())?)?;
    let (mut nonce, mut salt, mut iterations) = ("", Vec::new(), 0u32);
    for part in server_first.split(',') {
        if let Some(v) = part.strip_prefix("r=") {
            nonce = v;
        } else if let Some(v) = part.strip_prefix("s=") {
            salt = unb64(v)?;
        } else if let Some(v) = part.strip_prefix("i=") {
            iterations = v.parse()?;
        }
    }
    if !nonce.starts_with(&cnonce) || iterations == 0 {
        bail!("bad server-first message: {server_first}");
    }
    let salted = match cache {
        Some(k) if k.salt == salt && k.iterations == iterations => k.salted.clone(),
        _ => {
            let s = salted_password(hash, password.as_bytes(), &salt, iterations);
            *cache = Some(Keys {
                salt: salt.clone(),
                iterations,
                salted: s.clone(),
            });
            s
        }
    };
    let without_proof = format!("c=biws,r={nonce}");
    let client_key = hmac(hash, &salted, b"Client Key");
    let stored = h(hash, &client_key);
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let sig = hmac(hash, &stored, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    c.send(&format!(
        "<response xmlns='{sasl_ns}'>{}</response>",
        b64(format!("{without_proof},p={}", b64(&proof)).as_bytes())
    ))
    .await?;
    let r = c.next().await?;
    if !r.is("success", sasl_ns) {
        bail!("SCRAM failed: {r}");
    }
    Ok(r)
}

/// A FAST login (HT-SHA-256-NONE) with `inline`; the success element.
async fn fast(c: &mut Conn, user: &str, token: &str, inline: &str) -> anyhow::Result<Element> {
    c.send(&fast_authenticate(user, token, inline)).await?;
    let r = c.next().await?;
    if !r.is("success", SASL2) {
        bail!("FAST login failed: {r}");
    }
    Ok(r)
}

fn fast_authenticate(user: &str, token: &str, inline: &str) -> String {
    let mut msg = format!("{user}\0").into_bytes();
    msg.extend(hmac(ScramHash::Sha256, token.as_bytes(), b"Initiator"));
    format!(
        "<authenticate xmlns='{SASL2}' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>\
         {UA}<fast xmlns='{FAST}'/>{inline}</authenticate>",
        b64(&msg)
    )
}

/// The token of a success (a FAST login rotates it).
fn token_of(success: &Element) -> Option<String> {
    success
        .get_child("token", FAST)
        .and_then(|t| t.attr("token"))
        .map(str::to_string)
}

fn request_token() -> String {
    format!("<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>")
}

fn bind2(sm: bool) -> String {
    let sm = if sm {
        "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
    } else {
        ""
    };
    format!("<bind xmlns='{BIND2}'><tag>bench</tag>{sm}</bind>")
}

/// The XEP-0198 id in a Bind 2 `<bound/>`.
fn sm_id(success: &Element) -> anyhow::Result<String> {
    success
        .get_child("bound", BIND2)
        .and_then(|b| b.get_child("enabled", ns::SM))
        .and_then(|e| e.attr("id"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no <enabled/> in <bound/>: {success}"))
}

// --- The three ways in -----------------------------------------------------

/// One measured login: round trips counted and the time taken.
struct Measured {
    turns: u32,
    took: Duration,
}

async fn starttls_scram_bind(
    addr: SocketAddr,
    a: &MobileArgs,
    user: &str,
    keys: &mut Option<Keys>,
) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let mut c = Conn::tcp(addr).await?;
    c.open(&a.domain).await?;
    c.send(&format!("<starttls xmlns='{}'/>", ns::TLS)).await?;
    if !c.next().await?.is("proceed", ns::TLS) {
        bail!("STARTTLS refused");
    }
    c.tls(&a.domain).await?;
    c.open(&a.domain).await?;
    scram(&mut c, false, user, &a.password, "", keys).await?;
    c.open(&a.domain).await?;
    c.send(&format!(
        "<iq type='set' id='b'><bind xmlns='{}'><resource>bench</resource></bind></iq><presence/>",
        ns::BIND
    ))
    .await?;
    c.first_message().await?;
    Ok(Measured {
        turns: c.turns.load(Ordering::Relaxed),
        took: t.elapsed(),
    })
}

async fn tls_sasl2_bind2(
    addr: SocketAddr,
    a: &MobileArgs,
    user: &str,
    keys: &mut Option<Keys>,
) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let mut c = Conn::tcp(addr).await?;
    c.tls(&a.domain).await?;
    c.open(&a.domain).await?;
    scram(&mut c, true, user, &a.password, &bind2(false), keys).await?;
    c.send("<presence/>").await?;
    c.first_message().await?;
    Ok(Measured {
        turns: c.turns.load(Ordering::Relaxed),
        took: t.elapsed(),
    })
}

/// FAST + inline resumption of `previd`; `pipelined`: the stream header
/// and `<authenticate/>` leave together (the client knows the server's
/// features from its last connection). Returns the next token.
async fn tls_fast_resume(
    addr: SocketAddr,
    a: &MobileArgs,
    user: &str,
    token: &str,
    previd: &str,
    pipelined: bool,
) -> anyhow::Result<(Measured, String)> {
    let t = Instant::now();
    let mut c = Conn::tcp(addr).await?;
    c.tls(&a.domain).await?;
    let resume = format!("<resume xmlns='urn:xmpp:sm:3' h='0' previd='{previd}'/>");
    let auth = fast_authenticate(user, token, &resume);
    if pipelined {
        c.send(&format!("{}{auth}", Conn::header(&a.domain)))
            .await?;
        c.features().await?;
    } else {
        c.open(&a.domain).await?;
        c.send(&auth).await?;
    }
    let s = c.next().await?;
    if !s.is("success", SASL2) || !s.has_child("resumed", ns::SM) {
        bail!("FAST with inline resumption failed: {s}");
    }
    let next = token_of(&s).unwrap_or_else(|| token.to_string());
    c.first_message().await?;
    Ok((
        Measured {
            turns: c.turns.load(Ordering::Relaxed),
            took: t.elapsed(),
        },
        next,
    ))
}

// --- Setup -----------------------------------------------------------------

fn account(a: &MobileArgs, i: usize) -> String {
    format!("{}-{i}", a.prefix)
}

fn plain_opts(a: &MobileArgs, register: bool) -> ConnectOpts {
    ConnectOpts {
        domain: a.domain.clone(),
        tls: false,
        mech: Mech::ScramSha256,
        register,
        timeout: Duration::from_secs(60),
        ws_path: None,
    }
}

/// The contact: sends `to` a message and waits until the server handled it.
struct Contact {
    reader: client::Reader,
    writer: tokio::io::WriteHalf<BoxIo>,
    n: u64,
}

impl Contact {
    async fn say(&mut self, a: &MobileArgs, to: &str) -> anyhow::Result<()> {
        self.n += 1;
        let n = self.n;
        self.writer
            .write_all(
                format!(
                    "<message to='{to}@{}' type='chat' id='c{n}'><body>hello {n}</body></message>\
                     <iq type='get' id='p{n}'><ping xmlns='urn:xmpp:ping'/></iq>",
                    a.domain
                )
                .as_bytes(),
            )
            .await?;
        self.writer.flush().await?;
        let want = format!("p{n}");
        loop {
            match self.reader.next().await? {
                Some(el) if el.attr("id") == Some(want.as_str()) => break,
                Some(_) => {}
                None => bail!("the contact's stream ended"),
            }
        }
        // The queue write commits in parallel with the answer.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }
}

/// A password login over SASL2 that asks for a FAST token (and enables
/// resumable XEP-0198 when `sm`); the connection, token and SM id.
async fn token_login(
    addr: SocketAddr,
    a: &MobileArgs,
    user: &str,
    sm: bool,
    keys: &mut Option<Keys>,
) -> anyhow::Result<(Conn, String, Option<String>)> {
    token_login_with(addr, a, user, sm, keys, client::insecure_tls_config()?).await
}

/// [`token_login`] over TLS with `tls` (whose store keeps the session).
async fn token_login_with(
    addr: SocketAddr,
    a: &MobileArgs,
    user: &str,
    sm: bool,
    keys: &mut Option<Keys>,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(Conn, String, Option<String>)> {
    let mut c = Conn::tcp(addr).await?;
    c.tls_with(&a.domain, tls).await?;
    c.open(&a.domain).await?;
    let inline = format!("{}{}", request_token(), bind2(sm));
    let s = scram(&mut c, true, user, &a.password, &inline, keys).await?;
    let token = token_of(&s).ok_or_else(|| anyhow!("no FAST token in {s}"))?;
    let id = if sm { Some(sm_id(&s)?) } else { None };
    Ok((c, token, id))
}

fn median_and_max(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        v.get(v.len() / 2).copied().map(ms).unwrap_or(0.0),
        v.last().copied().map(ms).unwrap_or(0.0),
    )
}

/// The round-trip table: one line per way in.
async fn round_trips(a: &MobileArgs) -> anyhow::Result<()> {
    let delay = Duration::from_millis(a.delay_ms);
    let starttls = delay_proxy(a.starttls_addr, delay).await?;
    let tls = delay_proxy(a.tls_addr, delay).await?;
    // Accounts: 0 the contact, 1 and 2 log in fresh, 3 resumes.
    for i in 0..4 {
        client::connect(
            a.starttls_addr,
            &account(a, i),
            &a.password,
            &plain_opts(a, true),
        )
        .await?;
    }
    let contact = client::connect(
        a.starttls_addr,
        &account(a, 0),
        &a.password,
        &plain_opts(a, false),
    )
    .await?;
    let (_, reader, writer) = contact.split();
    let mut contact = Contact {
        reader,
        writer,
        n: 0,
    };
    println!(
        "| way in (one-way delay {} ms, TLS 1.3) | round trips after TCP connect | median ms | max ms |",
        a.delay_ms
    );
    println!("|---|---:|---:|---:|");
    let report = |name: &str, m: &[Measured]| {
        let turns: std::collections::BTreeSet<u32> = m.iter().map(|m| m.turns).collect();
        let mut took: Vec<Duration> = m.iter().map(|m| m.took).collect();
        let (med, max) = median_and_max(&mut took);
        let turns: Vec<String> = turns.iter().map(u32::to_string).collect();
        println!("| {name} | {} | {med:.0} | {max:.0} |", turns.join(" or "));
    };

    let (u1, u2, u3) = (account(a, 1), account(a, 2), account(a, 3));
    let mut keys = None;
    let mut m = Vec::new();
    for _ in 0..a.rounds {
        contact.say(a, &u1).await?;
        m.push(starttls_scram_bind(starttls, a, &u1, &mut keys).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report("STARTTLS + SCRAM-SHA-256 + bind + presence", &m);

    let mut keys = None;
    let mut m = Vec::new();
    for _ in 0..a.rounds {
        contact.say(a, &u2).await?;
        m.push(tls_sasl2_bind2(tls, a, &u2, &mut keys).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report("direct TLS + SASL2 SCRAM-SHA-256 + Bind 2 + presence", &m);

    for pipelined in [false, true] {
        let mut keys = None;
        let (mut c, mut token, previd) = token_login(a.tls_addr, a, &u3, true, &mut keys).await?;
        let previd = previd.context("no SM id")?;
        // Available (RFC 6121 §8.5.2.1: a message to the bare JID goes to
        // available resources), then gone without a word.
        c.send("<presence/>").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(c);
        let mut m = Vec::new();
        for _ in 0..a.rounds {
            // Detached with an unacknowledged message: the phone lost its
            // network after the message was written to it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            contact.say(a, &u3).await?;
            let (measured, next) = tls_fast_resume(tls, a, &u3, &token, &previd, pipelined).await?;
            token = next;
            m.push(measured);
            // The next round resumes the same session again (a resumed
            // session keeps its id).
        }
        let name = if pipelined {
            "direct TLS + FAST + inline resumption, header and authenticate pipelined"
        } else {
            "direct TLS + FAST + inline resumption"
        };
        report(name, &m);
    }
    Ok(())
}

// --- The storm ---------------------------------------------------------------

async fn storm(a: &MobileArgs) -> anyhow::Result<()> {
    let n = a.storm;
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    // Accounts, their tokens and salted passwords.
    let mut tasks = Vec::new();
    for i in 0..n {
        let a = a.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await?;
            let user = format!("{}-storm-{i}", a.prefix);
            client::connect(a.starttls_addr, &user, &a.password, &plain_opts(&a, true)).await?;
            let mut keys = None;
            // Each phone keeps its own TLS session store.
            let tls = client::insecure_tls_config()?;
            let (c, token, _) =
                token_login_with(a.tls_addr, &a, &user, false, &mut keys, tls.clone()).await?;
            drop(c);
            anyhow::Ok((user, token, keys, tls))
        }));
    }
    let mut accounts = Vec::new();
    for t in tasks {
        accounts.push(t.await??);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("| reconnect storm: {n} accounts at once | logins/s | all bound after s | failed |");
    println!("|---|---:|---:|---:|");
    for way in [
        "FAST (HT-SHA-256-NONE) + Bind 2",
        "FAST (HT-SHA-256-NONE) + Bind 2, TLS session resumed",
        "SASL2 SCRAM-SHA-256 + Bind 2, salted password cached",
        "SASL2 SCRAM-SHA-256 + Bind 2, PBKDF2 each login",
    ] {
        let started = Instant::now();
        let resumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (user, token, keys, tls) in accounts.iter().cloned() {
            let a = a.clone();
            let way = way.to_string();
            let resumed = resumed.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::tcp(a.tls_addr).await?;
                // The phone's stored session (the ticket of its last
                // connection), or none.
                let tls = if way.ends_with("resumed") {
                    tls
                } else {
                    client::insecure_tls_config()?
                };
                if c.tls_with(&a.domain, tls).await? {
                    resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                c.open(&a.domain).await?;
                if way.starts_with("FAST") {
                    let s = fast(&mut c, &user, &token, &bind2(false)).await?;
                    anyhow::Ok((c, token_of(&s).unwrap_or(token)))
                } else {
                    let mut k = if way.contains("cached") { keys } else { None };
                    scram(&mut c, true, &user, &a.password, &bind2(false), &mut k).await?;
                    anyhow::Ok((c, token))
                }
            }));
        }
        let mut ok = 0usize;
        let mut failed = 0usize;
        let mut conns = Vec::new();
        let mut next_tokens = Vec::new();
        for t in tasks {
            match t.await? {
                Ok((c, tok)) => {
                    ok += 1;
                    conns.push(c);
                    next_tokens.push(Some(tok));
                }
                Err(e) => {
                    if failed == 0 {
                        eprintln!("{way}: {e:#}");
                    }
                    failed += 1;
                    next_tokens.push(None);
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let resumed = resumed.load(std::sync::atomic::Ordering::Relaxed);
        let way = if resumed > 0 {
            format!("{way} ({resumed} resumed)")
        } else {
            way.to_string()
        };
        println!("| {way} | {:.0} | {secs:.2} | {failed} |", ok as f64 / secs);
        if way.starts_with("FAST") {
            for (acc, tok) in accounts.iter_mut().zip(next_tokens) {
                if let Some(t) = tok {
                    acc.1 = t;
                }
            }
        }
        drop(conns);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// `starling-bench mobile`.
pub async fn run(a: MobileArgs) -> anyhow::Result<()> {
    if a.rounds > 0 {
        round_trips(&a).await?;
    }
    if a.storm > 0 {
        println!();
        storm(&a).await?;
    }
    Ok(())
}
