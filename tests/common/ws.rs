//! A small RFC 7395 client for black-box tests: one WebSocket message per
//! element, each parsed on its own (so a message that relies on a
//! namespace it does not declare shows up as the wrong namespace), and a
//! plain HTTP/1.1 GET for the other endpoints.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use starling::xmpp::framer::{Event, Framer, Limits};
use starling::xmpp::{ns, Element};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::xmpp::WAIT;

pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// Either socket under the WebSocket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct WsClient {
    ws: WebSocketStream<Box<dyn Io>>,
    pub jid: String,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

/// What the server said, message by message.
#[derive(Debug)]
pub enum Got {
    El(Element),
    /// A ping frame (the server's keepalive).
    Ping,
    /// The WebSocket closed (close frame or connection end).
    Closed,
}

/// Parses one message as a document of its own. The wrapper declares no
/// default namespace a message could lean on.
pub fn parse_alone(text: &str) -> Element {
    let mut f = Framer::new(Limits {
        max_stanza_bytes: 8 << 20,
        ..Limits::default()
    });
    f.feed(b"<x:stream xmlns:x='http://etherx.jabber.org/streams' xmlns='urn:test:undeclared'>");
    match f.next_event() {
        Ok(Some(Event::StreamOpen { .. })) => {}
        other => panic!("wrapper: {other:?}"),
    }
    f.feed(text.as_bytes());
    match f.next_event() {
        Ok(Some(Event::Stanza(el))) => {
            assert_eq!(
                f.buffered(),
                0,
                "more than one element in a message: {text}"
            );
            el
        }
        other => panic!("not one complete element ({other:?}): {text}"),
    }
}

pub fn ws_url(http: SocketAddr) -> String {
    format!("ws://{http}/xmpp-websocket")
}

impl WsClient {
    /// Opens the WebSocket at `url` with subprotocol `xmpp` and `origin`;
    /// the HTTP status when the server refuses the upgrade.
    pub async fn connect(url: &str, origin: Option<&str>) -> Result<WsClient, u16> {
        Self::connect_with(url, origin, Some("xmpp"), None).await
    }

    /// As [`connect`](Self::connect), over `tls` when given (the socket
    /// already handshaken), offering `protocol`.
    pub async fn connect_with(
        url: &str,
        origin: Option<&str>,
        protocol: Option<&str>,
        tls: Option<Box<dyn Io>>,
    ) -> Result<WsClient, u16> {
        let mut req = url.into_client_request().unwrap();
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut()
                .insert("Origin", HeaderValue::from_str(o).unwrap());
        }
        let io: Box<dyn Io> = match tls {
            Some(io) => io,
            None => {
                let host = req.uri().authority().unwrap().as_str().to_string();
                Box::new(TcpStream::connect(host).await.unwrap())
            }
        };
        match tokio_tungstenite::client_async(req, io).await {
            Ok((ws, resp)) => Ok(WsClient {
                ws,
                jid: String::new(),
                protocol: resp
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.to_str().unwrap().to_string()),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("WebSocket handshake: {e}"),
        }
    }

    pub async fn send(&mut self, s: &str) {
        self.ws.send(Message::Text(s.into())).await.unwrap();
    }

    pub async fn send_binary(&mut self, b: &[u8]) {
        self.ws
            .send(Message::Binary(b.to_vec().into()))
            .await
            .unwrap();
    }

    /// The next message (pongs skipped), within [`WAIT`].
    pub async fn got(&mut self) -> Got {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("nothing from the server for {WAIT:?} ({})", self.jid));
            return match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Got::Closed,
                Some(Ok(Message::Ping(_))) => Got::Ping,
                Some(Ok(Message::Text(t))) => Got::El(parse_alone(t.as_str())),
                Some(Ok(Message::Binary(_))) => panic!("binary message from the server"),
                Some(Ok(_)) => continue,
            };
        }
    }

    /// The next element.
    pub async fn next(&mut self) -> Element {
        loop {
            match self.got().await {
                Got::El(e) => return e,
                Got::Ping => continue,
                Got::Closed => panic!("WebSocket closed by the server ({})", self.jid),
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
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Reads the stream error, then expects `<close/>` and the end of the
    /// WebSocket; returns the condition.
    pub async fn expect_stream_error(&mut self) -> String {
        let e = self
            .expect("a stream error", |e| e.is("error", ns::STREAM))
            .await;
        let cond = super::xmpp::stream_error(&e).unwrap();
        let c = self.next().await;
        assert!(
            c.is("close", FRAMING),
            "expected <close/> after the error: {c}"
        );
        self.expect_closed().await;
        cond
    }

    /// Expects the WebSocket to end (pings aside).
    pub async fn expect_closed(&mut self) {
        loop {
            match self.got().await {
                Got::Closed => return,
                Got::Ping => continue,
                Got::El(e) => panic!("expected the end of the WebSocket, got {e}"),
            }
        }
    }

    /// RFC 7395 `<open/>`; returns the server's `<open/>` and features.
    pub async fn open(&mut self) -> (Element, Element) {
        self.send(&format!(
            "<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"
        ))
        .await;
        let o = self.next().await;
        assert!(o.is("open", FRAMING), "expected <open/>, got {o}");
        let f = self.next().await;
        assert!(f.is("features", ns::STREAM), "expected features, got {f}");
        (o, f)
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Element {
        let payload = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{user}\0{password}").as_bytes());
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        self.next().await
    }

    pub async fn bind(&mut self, resource: &str) -> String {
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let b = self
            .expect("bind result", |e| e.attr("id") == Some("bind1"))
            .await;
        let jid = b
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind failed: {b}"));
        self.jid = jid.clone();
        jid
    }

    /// Open, PLAIN, open again (RFC 7395 stream restart), bind.
    pub async fn login(url: &str, user: &str, password: &str, resource: &str) -> WsClient {
        let mut c = WsClient::connect(url, None).await.unwrap();
        c.open().await;
        let r = c.auth_plain(user, password).await;
        assert!(r.is("success", ns::SASL), "login of {user} failed: {r}");
        c.open().await;
        c.bind(resource).await;
        c
    }

    /// An iq ping and its answer: what the server sent before, in order.
    pub async fn sync(&mut self) -> Vec<Element> {
        let id = format!("sync-{}", rand::random::<u32>());
        self.send(&format!(
            "<iq xmlns='jabber:client' type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let mut before = Vec::new();
        loop {
            let el = self.next().await;
            if el.attr("id") == Some(id.as_str()) {
                return before;
            }
            before.push(el);
        }
    }

    /// Drops the connection without `<close/>` (a lost network).
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

/// A plain HTTP/1.1 GET; (status, headers in lower case, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_get_on(TcpStream::connect(addr).await.unwrap(), addr, path, "").await
}

/// A GET of `path` on `s`, a socket connected to `addr`, with `headers`
/// (each line ending in CRLF) added: (status, lower-cased head, body).
pub async fn http_get_on(
    mut s: TcpStream,
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> (u16, String, String) {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("HTTP answer")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// TLS to `addr` with the test's accept-anything verifier and ALPN
/// `http/1.1`.
pub async fn tls_to(addr: SocketAddr) -> Box<dyn Io> {
    let mut config = (*super::tls::insecure_tls_config().unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    Box::new(connector.connect(name, tcp).await.expect("TLS handshake"))
}

/// The status of a GET, or `None` when nothing listens yet.
pub async fn http_get_opt(addr: SocketAddr, path: &str) -> Option<u16> {
    TcpStream::connect(addr).await.ok()?;
    Some(http_get(addr, path).await.0)
}
