//! `--transport ws`: the load generator's clients over RFC 7395 XMPP over
//! WebSocket instead of TCP. The client code (`client.rs`) stays a byte
//! stream client: [`connect`] does the WebSocket handshake (subprotocol
//! `xmpp`, §3.1) and returns one end of an in-memory pipe whose other end
//! two tasks translate, so registration, SASL, bind and the scenarios run
//! unchanged:
//!
//! - out (client -> server): the bytes the client writes are cut into
//!   top-level elements ([`Splitter`]), one text message each (§3.3.1);
//!   the XML declaration is dropped, the stream header becomes
//!   `<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to=... version='1.0'/>`
//!   (§3.3.2), `</stream:stream>` becomes `<close/>` (§3.6), a stanza
//!   without a namespace gets `xmlns='jabber:client'` (each message
//!   stands alone, §3.3.3);
//! - in (server -> client): `<open/>` becomes a stream header for the
//!   client's framer, `<close/>` `</stream:stream>`, anything else is
//!   passed on as it came (the server declares each message's namespaces).
//!   Pings are answered by tungstenite (§3.8).
//!
//! The pipe costs one copy and a task wake-up each way per message on the
//! client's side: BENCHMARKS.md says so where it compares WebSocket with
//! TCP. Plain `ws://` only (the benchmarks run on loopback).
use std::net::SocketAddr;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::client::BoxIo;

/// RFC 7395 §3.3.2: the framing namespace of `<open/>` and `<close/>`.
const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// Bytes buffered in the pipe each way.
const PIPE: usize = 64 * 1024;

/// Opens `ws://addr{path}` with the `xmpp` subprotocol and returns a byte
/// stream that speaks XMPP as over TCP.
pub async fn connect(addr: SocketAddr, path: &str) -> anyhow::Result<BoxIo> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .with_context(|| format!("WebSocket handshake with ws://{addr}{path}"))?;
    // RFC 7395 §3.1: the server must choose `xmpp`.
    if resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        != Some("xmpp")
    {
        bail!("ws://{addr}{path} did not choose the xmpp subprotocol");
    }
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (mut from_client, mut to_client) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    // Out: what the client writes, one message per element.
    tokio::spawn(async move {
        let mut split = Splitter::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            split.push(&buf[..n]);
            let mut any = false;
            while let Some(m) = split.next_message() {
                if sink.feed(Message::Text(m.into())).await.is_err() {
                    return;
                }
                any = true;
            }
            if any && sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    // In: what the server says, as the client's framer expects it.
    tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            let text = match m {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let bytes = inbound(text.as_str());
            if to_client.write_all(bytes.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = to_client.shutdown().await;
    });
    Ok(Box::new(ours))
}

/// One message from the server, as TCP would have carried it.
fn inbound(text: &str) -> std::borrow::Cow<'_, str> {
    let t = text.trim_start();
    if t.starts_with("<open") {
        format!(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'{}>",
            attr(t, "id").map(|id| format!(" id='{id}'")).unwrap_or_default()
        )
        .into()
    } else if t.starts_with("<close") {
        "</stream:stream>".into()
    } else {
        text.into()
    }
}

/// The value of attribute `name` in the start tag `tag` (either quote).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let head = &tag[..tag.find('>').unwrap_or(tag.len())];
    let mut rest = head;
    while let Some(i) = rest.find(name) {
        let before = rest[..i].chars().last();
        let after = &rest[i + name.len()..];
        if before.is_some_and(|c| c.is_ascii_whitespace()) {
            if let Some(v) = after.trim_start().strip_prefix('=') {
                let v = v.trim_start();
                let q = v.chars().next()?;
                if q == '\'' || q == '"' {
                    let v = &v[1..];
                    return v.find(q).map(|end| &v[..end]);
                }
            }
        }
        rest = after;
    }
    None
}

/// Cuts what a client writes into RFC 7395 messages. The client is ours:
/// well-formed XML without comments, CDATA or processing instructions
/// past the declaration, so tracking start tags, end tags and quotes is
/// enough to find where each top-level element ends.
#[derive(Default)]
struct Splitter {
    buf: String,
}

impl Splitter {
    fn push(&mut self, bytes: &[u8]) {
        // Our client writes whole UTF-8 strings per write; a split code
        // point would only garble a body.
        self.buf.push_str(&String::from_utf8_lossy(bytes));
    }

    /// The next complete message, if the buffer holds one.
    fn next_message(&mut self) -> Option<String> {
        loop {
            let start = self.buf.find('<')?;
            if start > 0 {
                // Whitespace between elements (keepalives): nothing to send.
                self.buf.drain(..start);
            }
            if self.buf.starts_with("<?") {
                let end = self.buf.find("?>")?;
                self.buf.drain(..end + 2);
                continue;
            }
            if self.buf.starts_with("<stream:stream") {
                let end = tag_end(&self.buf, 0)?;
                let to = attr(&self.buf[..end], "to").unwrap_or_default().to_string();
                self.buf.drain(..end);
                return Some(format!("<open xmlns='{FRAMING}' to='{to}' version='1.0'/>"));
            }
            if self.buf.starts_with("</stream:stream") {
                let end = self.buf.find('>')? + 1;
                self.buf.drain(..end);
                return Some(format!("<close xmlns='{FRAMING}'/>"));
            }
            let end = element_end(&self.buf)?;
            let mut m: String = self.buf.drain(..end).collect();
            let name_end = m[1..]
                .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
                .map(|i| i + 1)
                .unwrap_or(m.len());
            let head_end = tag_end(&m, 0).unwrap_or(m.len());
            if !m[..head_end].contains("xmlns=") {
                m.insert_str(name_end, " xmlns='jabber:client'");
            }
            return Some(m);
        }
    }
}

/// The index just past the `>` of the tag starting at `from`, quotes
/// respected.
fn tag_end(s: &str, from: usize) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s[from..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '>') => return Some(from + i + 1),
            _ => {}
        }
    }
    None
}

/// The index just past the top-level element starting at 0.
fn element_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(off) = s[i..].find('<') {
        let at = i + off;
        let end = tag_end(s, at)?;
        let tag = &s[at..end];
        if tag.starts_with("</") {
            depth = depth.checked_sub(1)?;
        } else if !tag.ends_with("/>") {
            depth += 1;
        }
        if depth == 0 {
            return Some(end);
        }
        i = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[&str]) -> Vec<String> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for part in input {
            s.push(part.as_bytes());
            while let Some(m) = s.next_message() {
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn the_stream_becomes_framed_messages() {
        let out = all(&[
            "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
            " <iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>x</resource></bind></iq><presence/>",
            "<message to='a@b' type='chat'><body>1 > 0 a/b</body></mess",
            "age></stream:stream>",
        ]);
        assert_eq!(
            out,
            vec![
                format!("<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"),
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>".to_string(),
                "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>x</resource></bind></iq>".to_string(),
                "<presence xmlns='jabber:client'/>".to_string(),
                "<message xmlns='jabber:client' to='a@b' type='chat'><body>1 > 0 a/b</body></message>".to_string(),
                format!("<close xmlns='{FRAMING}'/>"),
            ]
        );
    }

    #[test]
    fn server_messages_become_a_tcp_stream() {
        assert_eq!(
            inbound("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='localhost' id='abc' version='1.0'/>"),
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' id='abc'>"
        );
        assert_eq!(
            inbound("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"),
            "</stream:stream>"
        );
        let m = "<message xmlns='jabber:client' from='a@b/c'><body>x</body></message>";
        assert_eq!(inbound(m), m);
    }
}
