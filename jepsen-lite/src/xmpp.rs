//! A small XMPP client, the kind a client library would be, and nothing of
//! the server: direct TLS (XEP-0368) with rustls, SASL PLAIN (RFC 4616, only
//! inside TLS), resource binding (RFC 6120 §7), XEP-0077 registration,
//! XEP-0198 stream management with resumption, and a reader task that can be
//! slowed down to play a client that reads slowly.
//!
//! The server's certificate is self-signed, so it is not verified: the
//! harness tests delivery, not PKI.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use quick_xml::events::Event as XmlEvent;
use tokio::io::{AsyncWriteExt, BufReader, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SM: &str = "urn:xmpp:sm:3";
pub const NS_REGISTER: &str = "jabber:iq:register";
pub const NS_ROSTER: &str = "jabber:iq:roster";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// Why a stream ended or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum XmppError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("stream closed: {0}")]
    Closed(String),
    #[error("stream error: {0}")]
    Stream(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    #[error("write failed: {0}")]
    Write(String),
}

/// A parsed element: local names only (the client knows where it is).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn ns(&self) -> &str {
        self.attr("xmlns").unwrap_or("")
    }
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
    pub fn child_ns(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|c| c.name == name && c.ns() == ns)
    }
    /// The first child of `<error/>`'s defined condition, e.g. `conflict`.
    pub fn error_condition(&self) -> String {
        self.child("error")
            .and_then(|e| e.children.iter().find(|c| c.name != "text"))
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "undefined-condition".into())
    }
}

/// Escapes text and attribute values (RFC 6120 §11.2 / XML 1.0).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// What the reader task hands over.
#[derive(Debug)]
pub enum Incoming {
    Stanza(Element),
    Closed(String),
}

type Tls = TlsStream<TcpStream>;

/// One client stream (one TCP + TLS connection).
pub struct Conn {
    rx: mpsc::UnboundedReceiver<Incoming>,
    writer: WriteHalf<Tls>,
    reader: JoinHandle<()>,
    /// Milliseconds the reader waits after each stanza (a slow reader).
    pub read_delay_ms: Arc<AtomicU64>,
    pub node: u64,
    pub domain: String,
    /// The full JID bound on this stream, once bound.
    pub jid: Option<String>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
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

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|e| panic!("rustls protocol versions: {e}"))
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth();
            c.alpn_protocols = vec![b"xmpp-client".to_vec()];
            Arc::new(c)
        })
        .clone()
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Conn {
    /// TCP + direct TLS to `addr`, then the stream header; returns once the
    /// first `<stream:features/>` arrived.
    pub async fn connect(
        addr: SocketAddr,
        node: u64,
        domain: &str,
        timeout: Duration,
    ) -> Result<(Conn, Element), XmppError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| XmppError::Timeout("tcp connect"))?
            .map_err(|e| XmppError::Connect(addr, e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())
            .map_err(|e| XmppError::Connect(addr, e.to_string()))?;
        let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| XmppError::Timeout("tls handshake"))?
            .map_err(|e| XmppError::Connect(addr, format!("tls: {e}")))?;
        let (r, w) = tokio::io::split(tls);
        let (tx, rx) = mpsc::unbounded_channel();
        let delay = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(read_loop(r, tx, delay.clone()));
        let mut conn = Conn {
            rx,
            writer: w,
            reader,
            read_delay_ms: delay,
            node,
            domain: domain.to_string(),
            jid: None,
        };
        let features = conn.open_stream(timeout).await?;
        Ok((conn, features))
    }

    /// Sends a stream header and waits for the features.
    async fn open_stream(&mut self, timeout: Duration) -> Result<Element, XmppError> {
        let header = format!(
            "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xml:lang='en' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            escape(&self.domain)
        );
        self.send(&header).await?;
        self.expect("features", timeout).await
    }

    /// Writes raw XML.
    pub async fn send(&mut self, xml: &str) -> Result<(), XmppError> {
        match tokio::time::timeout(WRITE_TIMEOUT, async {
            self.writer.write_all(xml.as_bytes()).await?;
            self.writer.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(XmppError::Write(e.to_string())),
            Err(_) => Err(XmppError::Timeout("write")),
        }
    }

    /// The next stanza or nonza, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Element, XmppError> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Err(_) => Err(XmppError::Timeout("read")),
            Ok(None) => Err(XmppError::Closed("reader ended".into())),
            Ok(Some(Incoming::Closed(why))) => Err(XmppError::Closed(why)),
            Ok(Some(Incoming::Stanza(el))) if el.name == "error" && el.attr("xmlns").is_none() => {
                let cond = el
                    .children
                    .iter()
                    .find(|c| c.name != "text")
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                Err(XmppError::Stream(cond))
            }
            Ok(Some(Incoming::Stanza(el))) => Ok(el),
        }
    }

    /// Waits for an element named `name`, skipping others (before stream
    /// management is on, nothing else is expected).
    async fn expect(&mut self, name: &str, timeout: Duration) -> Result<Element, XmppError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let el = self.next(left).await?;
            if el.name == name {
                return Ok(el);
            }
        }
    }

    /// SASL PLAIN then the stream restart (RFC 6120 §6.4.6).
    pub async fn auth(
        &mut self,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Element, XmppError> {
        let payload = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{user}\0{password}").as_bytes());
        self.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let el = self.next(left).await?;
            match el.name.as_str() {
                "success" => break,
                "failure" => {
                    let cond = el
                        .children
                        .first()
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    return Err(XmppError::Auth(cond));
                }
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.open_stream(left).await
    }

    /// Binds `resource` (RFC 6120 §7); returns the full JID.
    pub async fn bind(&mut self, resource: &str, timeout: Duration) -> Result<String, XmppError> {
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
            escape(resource)
        ))
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let el = self.next(left).await?;
            if el.name == "iq" && el.attr("id") == Some("bind1") {
                if el.attr("type") == Some("result") {
                    let jid = el
                        .child("bind")
                        .and_then(|b| b.child("jid"))
                        .map(|j| j.text.clone())
                        .ok_or_else(|| XmppError::Unexpected("bind result without jid".into()))?;
                    self.jid = Some(jid.clone());
                    return Ok(jid);
                }
                return Err(XmppError::Unexpected(format!(
                    "bind: {}",
                    el.error_condition()
                )));
            }
        }
    }

    /// XEP-0198 §3: enables stream management with resumption; returns the
    /// resumption id (`None` if the server did not offer resumption).
    pub async fn enable_sm(&mut self, timeout: Duration) -> Result<Option<String>, XmppError> {
        self.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"))
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let el = self.next(left).await?;
            match el.name.as_str() {
                "enabled" => {
                    let resumable = matches!(el.attr("resume"), Some("true" | "1"));
                    return Ok(el.attr("id").filter(|_| resumable).map(str::to_string));
                }
                "failed" => {
                    return Err(XmppError::Unexpected(format!(
                        "sm enable failed: {}",
                        el.children.first().map(|c| c.name.as_str()).unwrap_or("")
                    )))
                }
                _ => {}
            }
        }
    }

    /// XEP-0198 §5: resumes `previd`, telling the server we received `h`.
    /// Ok(Some(h)) is the server's count of our stanzas it handled;
    /// Ok(None) means `<failed/>` (the stream stays open, unbound).
    pub async fn resume(
        &mut self,
        previd: &str,
        h: u32,
        timeout: Duration,
    ) -> Result<Option<u32>, XmppError> {
        self.send(&format!(
            "<resume xmlns='{NS_SM}' h='{h}' previd='{}'/>",
            escape(previd)
        ))
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let el = self.next(left).await?;
            match el.name.as_str() {
                "resumed" => {
                    let h = el
                        .attr("h")
                        .and_then(|h| h.parse::<u32>().ok())
                        .ok_or_else(|| XmppError::Unexpected("resumed without h".into()))?;
                    return Ok(Some(h));
                }
                "failed" => return Ok(None),
                _ => {}
            }
        }
    }

    /// XEP-0077 §3.1 before authentication: Ok(true) created, Ok(false) the
    /// name is taken (`conflict`), Err(condition) anything else.
    pub async fn register(
        &mut self,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Result<bool, String>, XmppError> {
        self.send(&format!(
            "<iq type='set' id='reg1'><query xmlns='{NS_REGISTER}'><username>{}</username>\
             <password>{}</password></query></iq>",
            escape(user),
            escape(password)
        ))
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let el = self.next(left).await?;
            if el.name == "iq" && el.attr("id") == Some("reg1") {
                return Ok(match el.attr("type") {
                    Some("result") => Ok(true),
                    _ if el.error_condition() == "conflict" => Ok(false),
                    _ => Err(el.error_condition()),
                });
            }
        }
    }

    /// XEP-0198 §4: tells the server we received `h` stanzas.
    pub async fn ack(&mut self, h: u32) -> Result<(), XmppError> {
        self.send(&format!("<a xmlns='{NS_SM}' h='{h}'/>")).await
    }

    /// Closes the stream politely (RFC 6120 §4.4).
    pub async fn close(&mut self) {
        let _ = self.send("</stream:stream>").await;
        // Wait briefly for the server's close so it handled what we sent.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(m) = self.rx.recv().await {
                if matches!(m, Incoming::Closed(_)) {
                    break;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
    }
}

fn local(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    match s.rsplit_once(':') {
        Some((_, l)) => l.to_string(),
        None => s.into_owned(),
    }
}

fn element_of(e: &quick_xml::events::BytesStart<'_>) -> Element {
    let mut el = Element {
        name: local(e.name().as_ref()),
        ..Default::default()
    };
    for a in e.attributes().flatten() {
        let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let v = a
            .unescape_value()
            .map(|v| v.into_owned())
            .unwrap_or_default();
        el.attrs.push((k, v));
    }
    el
}

/// Reads stanzas (depth-1 elements) off the stream and sends them on.
async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    r: R,
    tx: mpsc::UnboundedSender<Incoming>,
    delay: Arc<AtomicU64>,
) {
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(r));
    reader.config_mut().check_end_names = false;
    reader.config_mut().trim_text(false);
    let mut buf = Vec::new();
    let mut depth = 0usize;
    let mut stack: Vec<Element> = Vec::new();
    let why = loop {
        buf.clear();
        let ev = match reader.read_event_into_async(&mut buf).await {
            Ok(ev) => ev,
            Err(e) => break format!("xml: {e}"),
        };
        let mut done: Option<Element> = None;
        match ev {
            XmlEvent::Start(e) => {
                let el = element_of(&e);
                if depth <= 1 && el.name == "stream" && stack.is_empty() {
                    // The stream header, or a restarted stream's header.
                    depth = 1;
                    continue;
                }
                stack.push(el);
                depth += 1;
            }
            XmlEvent::Empty(e) => {
                let el = element_of(&e);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => done = Some(el),
                }
            }
            XmlEvent::End(_) => {
                if stack.is_empty() {
                    break "server closed the stream".into();
                }
                depth = depth.saturating_sub(1);
                if let Some(el) = stack.pop() {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => done = Some(el),
                    }
                }
            }
            XmlEvent::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    if let Ok(s) = t.decode() {
                        top.text.push_str(&s);
                    }
                }
            }
            XmlEvent::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            XmlEvent::GeneralRef(r) => {
                if let Some(top) = stack.last_mut() {
                    if let Ok(Some(c)) = r.resolve_char_ref() {
                        top.text.push(c);
                    } else {
                        let name = String::from_utf8_lossy(&r);
                        let c = match name.as_ref() {
                            "amp" => '&',
                            "lt" => '<',
                            "gt" => '>',
                            "quot" => '"',
                            "apos" => '\'',
                            _ => '\u{fffd}',
                        };
                        top.text.push(c);
                    }
                }
            }
            XmlEvent::Eof => break "connection closed".into(),
            _ => {}
        }
        if let Some(el) = done {
            if tx.send(Incoming::Stanza(el)).is_err() {
                return;
            }
            let d = delay.load(Ordering::Relaxed);
            if d > 0 {
                tokio::time::sleep(Duration::from_millis(d)).await;
            }
        }
    };
    let _ = tx.send(Incoming::Closed(why));
}

/// A message's id (our body), the XEP-0359 stanza id the server stamped for
/// `by`, and whether it carries an XEP-0203 delay.
pub fn message_facts(el: &Element, by: &str) -> Option<(String, Option<String>, bool)> {
    let body = el.child("body")?.text.clone();
    let sid = el
        .children
        .iter()
        .find(|c| c.name == "stanza-id" && c.ns() == NS_SID && c.attr("by") == Some(by))
        .and_then(|c| c.attr("id"))
        .map(str::to_string);
    let delayed = el.child_ns("delay", NS_DELAY).is_some();
    Some((body, sid, delayed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader cuts stanzas out of a stream fed in small pieces, across
    /// a stream restart, with entities resolved and the close reported.
    #[tokio::test]
    async fn reader_cuts_stanzas_across_restarts() {
        use tokio::io::AsyncWriteExt;
        let (mut server, client) = tokio::io::duplex(64);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(read_loop(client, tx, Arc::new(AtomicU64::new(0))));
        let wire = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
            <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>PLAIN</mechanism></mechanisms></stream:features>\
            <success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>\
            <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
            <message from='a@x/r' type='chat' id='m&amp;1'><body>1 &lt; 2 &amp;&#x41;</body></message>\
            <r xmlns='urn:xmpp:sm:3'/></stream:stream>";
        for chunk in wire.as_bytes().chunks(7) {
            server.write_all(chunk).await.unwrap();
        }
        drop(server);
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(m);
        }
        task.await.unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|m| match m {
                Incoming::Stanza(e) => e.name.clone(),
                Incoming::Closed(w) => format!("closed: {w}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "features",
                "success",
                "message",
                "r",
                "closed: server closed the stream"
            ]
        );
        let Incoming::Stanza(msg) = &got[2] else {
            panic!()
        };
        assert_eq!(msg.attr("id"), Some("m&1"));
        assert_eq!(msg.child("body").unwrap().text, "1 < 2 &A");
        let Incoming::Stanza(f) = &got[0] else {
            panic!()
        };
        assert_eq!(f.child("mechanisms").unwrap().children[0].text, "PLAIN");
    }

    #[test]
    fn escape_covers_markup() {
        assert_eq!(escape("a<b>&'\""), "a&lt;b&gt;&amp;&apos;&quot;");
    }

    #[test]
    fn message_facts_reads_body_sid_and_delay() {
        let el = Element {
            name: "message".into(),
            attrs: vec![],
            children: vec![
                Element {
                    name: "body".into(),
                    text: "m-1".into(),
                    ..Default::default()
                },
                Element {
                    name: "stanza-id".into(),
                    attrs: vec![
                        ("xmlns".into(), NS_SID.into()),
                        ("by".into(), "b@x".into()),
                        ("id".into(), "S1".into()),
                    ],
                    ..Default::default()
                },
            ],
            text: String::new(),
        };
        assert_eq!(
            message_facts(&el, "b@x"),
            Some(("m-1".into(), Some("S1".into()), false))
        );
        assert_eq!(message_facts(&el, "c@x"), Some(("m-1".into(), None, false)));
    }
}
