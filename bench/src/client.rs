//! The load generator's XMPP client: just enough of RFC 6120 to register
//! (XEP-0077), authenticate (PLAIN, SCRAM-SHA-1, SCRAM-SHA-256), bind, send
//! initial presence, then send and receive messages. Works against any
//! server (Starling, Prosody, ejabberd); STARTTLS when asked or required.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use starling_raft::credentials::{h, hmac, salted_password, ScramHash};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use starling::xmpp::framer::{Event, Framer, Limits};
use starling::xmpp::{ns, Element};

pub use starling::c2s::stream::BoxIo;

/// SASL mechanism the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mech {
    Plain,
    ScramSha1,
    ScramSha256,
}

/// How clients connect.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub domain: String,
    /// STARTTLS (always done when the server requires it).
    pub tls: bool,
    pub mech: Mech,
    /// Register the account in-band first (a `conflict` answer is fine).
    pub register: bool,
    pub timeout: Duration,
    /// RFC 7395 WebSocket at this path of `addr` (`crate::ws`) instead of
    /// TCP.
    pub ws_path: Option<String>,
}

/// An authenticated, bound, available client.
pub struct Client {
    pub jid: String,
    reader: Reader,
    pub writer: WriteHalf<BoxIo>,
}

/// The receiving half.
pub struct Reader {
    io: ReadHalf<BoxIo>,
    framer: Framer,
    buf: Box<[u8]>,
}

impl Reader {
    /// The next top-level element; `None` at the end of the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Element>> {
        loop {
            match self.framer.next_event()? {
                Some(Event::Stanza(el)) => return Ok(Some(el)),
                Some(Event::StreamOpen { .. }) => continue,
                Some(Event::StreamClose) => return Ok(None),
                None => {}
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.framer.feed(&self.buf[..n]);
        }
    }
}

/// Accepts any certificate (benchmarks run against self-signed servers).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client config that accepts any certificate (for benchmarks and
/// tests against servers with self-signed certificates; never for real
/// use).
pub fn insecure_tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The negotiation phase: one object owning the socket.
struct Negotiation {
    io: Option<BoxIo>,
    framer: Framer,
    buf: Box<[u8]>,
}

impl Negotiation {
    async fn send(&mut self, s: &str) -> anyhow::Result<()> {
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
                        let cond = el
                            .children()
                            .map(|c| c.name().to_string())
                            .next()
                            .unwrap_or_default();
                        bail!("stream error from the server: {cond}");
                    }
                    return Ok(el);
                }
                Some(Event::StreamOpen { .. }) => continue,
                Some(Event::StreamClose) => bail!("the server closed the stream"),
                None => {}
            }
            let io = self.io.as_mut().context("no socket")?;
            let n = io.read(&mut self.buf).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.framer.feed(&self.buf[..n]);
        }
    }

    async fn open(&mut self, domain: &str) -> anyhow::Result<Element> {
        self.framer = Framer::new(Limits::default());
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        ))
        .await?;
        loop {
            let el = self.next().await?;
            if el.is("features", ns::STREAM) {
                return Ok(el);
            }
        }
    }

    async fn iq(&mut self, iq: &str, id: &str) -> anyhow::Result<Element> {
        self.send(iq).await?;
        loop {
            let el = self.next().await?;
            if el.name() == "iq" && el.attr("id") == Some(id) {
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

fn sasl_result(el: &Element) -> anyhow::Result<()> {
    if el.is("success", ns::SASL) {
        Ok(())
    } else {
        let cond = el
            .children()
            .map(|c| c.name().to_string())
            .next()
            .unwrap_or_default();
        Err(anyhow!("authentication failed: {cond}"))
    }
}

async fn scram(
    n: &mut Negotiation,
    hash: ScramHash,
    user: &str,
    password: &str,
) -> anyhow::Result<()> {
    let mech = match hash {
        ScramHash::Sha1 => "SCRAM-SHA-1",
        ScramHash::Sha256 => "SCRAM-SHA-256",
    };
    let cnonce: String = {
        let bytes: [u8; 18] = rand::random();
        b64(&bytes)
    };
    let user_esc = user.replace('=', "=3D").replace(',', "=2C");
    let first_bare = format!("n={user_esc},r={cnonce}");
    n.send(&format!(
        "<auth xmlns='{}' mechanism='{mech}'>{}</auth>",
        ns::SASL,
        b64(format!("n,,{first_bare}").as_bytes())
    ))
    .await?;
    let ch = n.next().await?;
    if !ch.is("challenge", ns::SASL) {
        return sasl_result(&ch);
    }
    let server_first = String::from_utf8(unb64(&ch.text())?)?;
    let mut nonce = "";
    let mut salt = Vec::new();
    let mut iterations = 0u32;
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
        bail!("bad SCRAM server-first message");
    }
    let without_proof = format!("c=biws,r={nonce}");
    let salted = salted_password(hash, password.as_bytes(), &salt, iterations);
    let client_key = hmac(hash, &salted, b"Client Key");
    let stored = h(hash, &client_key);
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let sig = hmac(hash, &stored, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    n.send(&format!(
        "<response xmlns='{}'>{}</response>",
        ns::SASL,
        b64(format!("{without_proof},p={}", b64(&proof)).as_bytes())
    ))
    .await?;
    let r = n.next().await?;
    sasl_result(&r)?;
    // Check the server's signature (RFC 5802 §3: mutual authentication).
    let server_key = hmac(hash, &salted, b"Server Key");
    let want = hmac(hash, &server_key, auth_message.as_bytes());
    let text = r.text();
    if !text.trim().is_empty() {
        let fin = String::from_utf8(unb64(&text)?)?;
        if fin.strip_prefix("v=").map(unb64).transpose()? != Some(want) {
            bail!("the server's SCRAM signature is wrong");
        }
    }
    Ok(())
}

/// Connects `user` at `addr` and makes it available.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    opts: &ConnectOpts,
) -> anyhow::Result<Client> {
    tokio::time::timeout(opts.timeout, connect_inner(addr, user, password, opts))
        .await
        .map_err(|_| anyhow!("login of {user} at {addr} timed out"))?
}

async fn connect_inner(
    addr: SocketAddr,
    user: &str,
    password: &str,
    opts: &ConnectOpts,
) -> anyhow::Result<Client> {
    let io: BoxIo = match &opts.ws_path {
        Some(path) => crate::ws::connect(addr, path).await?,
        None => {
            let tcp = TcpStream::connect(addr)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            tcp.set_nodelay(true)?;
            Box::new(tcp)
        }
    };
    let mut n = Negotiation {
        io: Some(io),
        framer: Framer::new(Limits::default()),
        buf: vec![0u8; 16 * 1024].into_boxed_slice(),
    };
    let domain = &opts.domain;
    let mut features = n.open(domain).await?;
    let tls_required = features
        .get_child("starttls", ns::TLS)
        .is_some_and(|s| s.has_child("required", ns::TLS));
    if opts.tls || tls_required {
        n.send(&format!("<starttls xmlns='{}'/>", ns::TLS)).await?;
        let p = n.next().await?;
        if !p.is("proceed", ns::TLS) {
            bail!("STARTTLS refused");
        }
        let io = n.io.take().context("no socket")?;
        let name = rustls::pki_types::ServerName::try_from(domain.clone())?;
        let tls = tokio_rustls::TlsConnector::from(insecure_tls_config()?)
            .connect(name, io)
            .await?;
        n.io = Some(Box::new(tls));
        features = n.open(domain).await?;
    }
    if opts.register {
        let iq = format!(
            "<iq type='set' id='reg'><query xmlns='{}'><username>{user}</username><password>{password}</password></query></iq>",
            ns::REGISTER
        );
        let r = n.iq(&iq, "reg").await?;
        let ok = r.attr("type") == Some("result")
            || r.get_child("error", ns::CLIENT)
                .is_some_and(|e| e.has_child("conflict", ns::STANZA_ERRORS));
        if !ok {
            bail!("registration of {user} refused: {r}");
        }
    }
    let _ = features;
    match opts.mech {
        Mech::Plain => {
            let payload = b64(format!("\0{user}\0{password}").as_bytes());
            n.send(&format!(
                "<auth xmlns='{}' mechanism='PLAIN'>{payload}</auth>",
                ns::SASL
            ))
            .await?;
            let r = n.next().await?;
            sasl_result(&r)?;
        }
        Mech::ScramSha1 => scram(&mut n, ScramHash::Sha1, user, password).await?,
        Mech::ScramSha256 => scram(&mut n, ScramHash::Sha256, user, password).await?,
    }
    n.open(domain).await?;
    let bind = format!(
        "<iq type='set' id='bind'><bind xmlns='{}'><resource>bench</resource></bind></iq>",
        ns::BIND
    );
    let r = n.iq(&bind, "bind").await?;
    let jid = r
        .get_child("bind", ns::BIND)
        .and_then(|b| b.get_child("jid", ns::BIND))
        .map(|j| j.text())
        .ok_or_else(|| anyhow!("bind failed: {r}"))?;
    // Old servers want a session iq; harmless elsewhere.
    let _ = n
        .iq(
            &format!(
                "<iq type='set' id='sess'><session xmlns='{}'/></iq>",
                ns::SESSION
            ),
            "sess",
        )
        .await?;
    n.send("<presence/>").await?;
    let io = n.io.take().context("no socket")?;
    let (r, w) = tokio::io::split(io);
    Ok(Client {
        jid,
        reader: Reader {
            io: r,
            framer: n.framer,
            buf: n.buf,
        },
        writer: w,
    })
}

impl Client {
    pub fn split(self) -> (String, Reader, WriteHalf<BoxIo>) {
        (self.jid, self.reader, self.writer)
    }
}
