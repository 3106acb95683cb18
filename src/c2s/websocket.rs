//! RFC 7395 XMPP over WebSocket, as a transport under the ordinary c2s
//! connection: the same framer, negotiation (SASL, SASL2/FAST, bind,
//! XEP-0198 resumption) and session loop as TCP, with the framing
//! translated at the edge, both ways.
//!
//! - In: each text message must be one complete element (RFC 7395 §3.3.1
//!   "Framed XML Stream"). `<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'
//!   .../>` becomes the stream header the framer expects (so its checks of
//!   `to` and `version` answer as on TCP), `<close/>` becomes
//!   `</stream:stream>`, anything else is fed to the framer as it came; a
//!   message that is not exactly one complete element is a stream error.
//! - Out: the connection writes what it writes on TCP into its buffer;
//!   [`split_output`] cuts it into one message per top-level element:
//!   our stream header becomes `<open/>`, `</stream:stream>` `<close/>`, a
//!   stanza gets the `xmlns='jabber:client'` (and `stream:` elements the
//!   `xmlns:stream`) it inherited from the header on TCP, since each
//!   message stands alone. A whitespace keepalive becomes a WebSocket ping
//!   (RFC 7395 §3.8 "Pings and Keepalives").
//!
//! STARTTLS is never offered: TLS is the WebSocket's (`wss://`), or a
//! proxy's in front of a plaintext listener the operator allowed.
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};

use crate::xmpp::{ns, StreamCondition, StreamError};

/// The framing namespace of `<open/>` and `<close/>`.
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// A WebSocket carrying one XMPP stream.
pub struct WsTransport {
    /// In a mutex only to be `Sync` as a connection must be (the upgraded
    /// socket is not); reached through `get_mut`, never locked.
    ws: std::sync::Mutex<WebSocket>,
    /// When a frame (any: data, ping, pong) last came from the client.
    pub last_heard: Instant,
    /// Send a ping after this long without a frame from the client.
    ping_after: Duration,
    pinged: bool,
    /// Largest text message taken; a larger one is a stream error.
    max_message: usize,
    /// Output not yet cut into messages (an element not complete yet).
    carry: String,
}

/// One inbound message, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes for the framer (a stream header made from `<open/>`, a
    /// stanza, or `</stream:stream>` made from `<close/>`).
    Feed(String),
    /// Nothing to do (a ping, a pong, an empty message).
    Nothing,
    /// The client closed the WebSocket (or it failed) without `<close/>`.
    Gone,
}

impl WsTransport {
    pub fn new(ws: WebSocket, ping_after: Duration, max_message: usize) -> Self {
        WsTransport {
            ws: std::sync::Mutex::new(ws),
            last_heard: Instant::now(),
            ping_after,
            pinged: false,
            max_message,
            carry: String::new(),
        }
    }

    /// The next inbound message, classified; pings the client when it has
    /// been silent for `ping_after`. Cancel-safe: a message is only taken
    /// from the socket once whole.
    fn ws(&mut self) -> &mut WebSocket {
        self.ws.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn recv(&mut self) -> Result<Inbound, StreamError> {
        loop {
            let deadline = self.last_heard + self.ping_after;
            let msg = if self.pinged {
                self.ws().next().await
            } else {
                let sleep = tokio::time::sleep_until(deadline.into());
                let next = tokio::select! {
                    m = self.ws().next() => Some(m),
                    _ = sleep => None,
                };
                match next {
                    Some(m) => m,
                    None => {
                        self.pinged = true;
                        // A failed ping shows up as a failed read next.
                        let _ = self.ws().send(Message::Ping(Default::default())).await;
                        continue;
                    }
                }
            };
            self.last_heard = Instant::now();
            self.pinged = false;
            return match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Ok(Inbound::Gone),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(Inbound::Nothing),
                // RFC 7395 §3.2: "Data frame messages in the XMPP
                // subprotocol MUST be of the text type".
                Some(Ok(Message::Binary(_))) => Err(StreamError::with_text(
                    StreamCondition::BadFormat,
                    "XMPP over WebSocket is sent in text messages (RFC 7395 §3.2)",
                )),
                Some(Ok(Message::Text(t))) => {
                    if t.len() > self.max_message {
                        return Err(StreamError::with_text(
                            StreamCondition::PolicyViolation,
                            format!("message larger than {} bytes", self.max_message),
                        ));
                    }
                    classify(t.as_str())
                }
            };
        }
    }

    /// Sends `out` (what the connection wrote) as messages, one per
    /// complete element; an incomplete tail waits for the next call.
    pub async fn send(&mut self, out: &str) -> Result<(), axum::Error> {
        self.carry.push_str(out);
        let (messages, rest) = split_output(&self.carry);
        let rest = rest.to_string();
        self.carry = rest;
        for m in messages {
            let msg = match m {
                Outbound::Text(t) => Message::Text(t.into()),
                Outbound::Ping => Message::Ping(Default::default()),
            };
            self.ws().feed(msg).await?;
        }
        self.ws().flush().await
    }

    /// Ends the WebSocket with a close frame (after `<close/>`, RFC 7395
    /// §3.6 "Closing the Connection").
    pub async fn close(&mut self) {
        let _ = self.ws().send(Message::Close(None)).await;
        let _ = self.ws().close().await;
    }
}

/// What one inbound text message means for the framer.
pub fn classify(text: &str) -> Result<Inbound, StreamError> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if t.is_empty() {
        return Ok(Inbound::Nothing);
    }
    let name_end = t
        .char_indices()
        .skip(1)
        .find(|(_, c)| c.is_ascii_whitespace() || *c == '/' || *c == '>')
        .map(|(i, _)| i)
        .unwrap_or(t.len());
    let name = t.get(1..name_end).unwrap_or("");
    if !t.starts_with('<') {
        return Err(StreamError::with_text(
            StreamCondition::NotWellFormed,
            "a message must be one XML element",
        ));
    }
    match name {
        "open" | "close" => {
            let el = framing_element(t)?;
            if el.ns.as_deref() != Some(FRAMING) {
                return Err(StreamError::with_text(
                    StreamCondition::InvalidNamespace,
                    format!("<{name}/> must be in {FRAMING}"),
                ));
            }
            if name == "close" {
                return Ok(Inbound::Feed("</stream:stream>".into()));
            }
            // The header the framer checks as on TCP (RFC 6120 §4.7:
            // `to`, `version`, `xml:lang`), declaring what the framing
            // leaves implicit: jabber:client content and the stream
            // prefix.
            let mut h = format!(
                "<stream:stream xmlns='{}' xmlns:stream='{}'",
                ns::CLIENT,
                ns::STREAM
            );
            for (k, v) in &el.attrs {
                h.push(' ');
                h.push_str(k);
                h.push_str("='");
                crate::xmpp::element::escape_into(&mut h, v, true);
                h.push('\'');
            }
            h.push('>');
            Ok(Inbound::Feed(h))
        }
        // RFC 7395 §3.3.1: the framing replaces the stream element; a
        // client speaking TCP framing is in the wrong protocol.
        "stream:stream" | "?xml" => Err(StreamError::with_text(
            StreamCondition::InvalidNamespace,
            "RFC 7395: open the stream with <open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        )),
        _ => Ok(Inbound::Feed(t.to_string())),
    }
}

struct Framing {
    ns: Option<String>,
    attrs: Vec<(String, String)>,
}

/// `<open/>` or `<close/>`: its namespace and attributes (those
/// RFC 6120 §4.7 defines), as one empty element.
fn framing_element(t: &str) -> Result<Framing, StreamError> {
    use quick_xml::events::Event as X;
    let bad = |why: &str| {
        StreamError::with_text(
            StreamCondition::NotWellFormed,
            format!("<open/> and <close/>: {why}"),
        )
    };
    let mut r = quick_xml::Reader::from_str(t);
    let e = match r.read_event() {
        Ok(X::Empty(e)) => e,
        Ok(X::Start(_)) => return Err(bad("must be empty elements")),
        _ => return Err(bad("not well-formed")),
    };
    match r.read_event() {
        Ok(X::Eof) => {}
        _ => return Err(bad("one element per message")),
    }
    let mut out = Framing {
        ns: None,
        attrs: Vec::new(),
    };
    for a in e.attributes() {
        let a = a.map_err(|_| bad("bad attribute"))?;
        let key = std::str::from_utf8(a.key.as_ref())
            .map_err(|_| bad("bad attribute"))?
            .to_string();
        let value = a
            .unescape_value()
            .map_err(|_| bad("bad attribute value"))?
            .into_owned();
        match key.as_str() {
            "xmlns" => out.ns = Some(value),
            "to" | "from" | "version" | "xml:lang" | "id" => out.attrs.push((key, value)),
            k if k.starts_with("xmlns:") => {}
            _ => {}
        }
    }
    Ok(out)
}

/// One message to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    Text(String),
    /// A whitespace keepalive, sent as a WebSocket ping.
    Ping,
}

/// Cuts what the connection wrote into messages, one per top-level
/// element, and returns the incomplete tail. The input is our own
/// serializer's output (attributes quoted, `<` escaped in text and
/// values), so a small scanner finds the element boundaries.
pub fn split_output(out: &str) -> (Vec<Outbound>, &str) {
    let b = out.as_bytes();
    let mut messages = Vec::new();
    let mut i = 0;
    let mut whitespace = false;
    while i < b.len() {
        if b[i] != b'<' {
            if b[i].is_ascii_whitespace() {
                whitespace = true;
            }
            i += 1;
            continue;
        }
        if whitespace {
            messages.push(Outbound::Ping);
            whitespace = false;
        }
        let start = i;
        if b[i..].starts_with(b"<?") {
            // The XML declaration: none over WebSocket.
            match find(b, i, b"?>") {
                Some(end) => {
                    i = end + 2;
                    continue;
                }
                None => return (messages, &out[start..]),
            }
        }
        if b[i..].starts_with(b"</stream:stream>") {
            messages.push(Outbound::Text(format!("<close xmlns='{FRAMING}'/>")));
            i += "</stream:stream>".len();
            continue;
        }
        // One element: start tags and end tags until depth 0.
        let mut depth = 0usize;
        let mut j = i;
        let end = loop {
            let Some(lt) = b[j..].iter().position(|&c| c == b'<').map(|p| p + j) else {
                break None;
            };
            let Some(gt) = tag_end(b, lt) else {
                break None;
            };
            let tag = &b[lt..=gt];
            if tag.starts_with(b"</") {
                depth = depth.saturating_sub(1);
            } else if tag.ends_with(b"/>") {
                // empty element: depth unchanged
            } else if depth == 0 && tag.starts_with(b"<stream:stream") {
                break Some((gt, true));
            } else {
                depth += 1;
            }
            j = gt + 1;
            if depth == 0 {
                break Some((gt, false));
            }
        };
        let Some((gt, header)) = end else {
            return (messages, &out[start..]);
        };
        let element = &out[start..=gt];
        messages.push(Outbound::Text(if header {
            open_from_header(element)
        } else {
            standalone(element)
        }));
        i = gt + 1;
    }
    if whitespace {
        messages.push(Outbound::Ping);
    }
    (messages, &out[out.len()..])
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b[from..]
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// The `>` closing the tag that starts at `lt`, outside quoted values.
fn tag_end(b: &[u8], lt: usize) -> Option<usize> {
    let mut quote = None;
    for (k, &c) in b.iter().enumerate().skip(lt + 1) {
        match (quote, c) {
            (None, b'\'' | b'"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, b'>') => return Some(k),
            _ => {}
        }
    }
    None
}

/// Our stream header as `<open/>` (RFC 7395 §3.4 "Stream Initiation"):
/// its attributes kept, the namespace declarations replaced by the
/// framing namespace.
fn open_from_header(tag: &str) -> String {
    let inner = tag
        .trim_start_matches("<stream:stream")
        .trim_end_matches('>')
        .trim_end_matches('/');
    let mut open = format!("<open xmlns='{FRAMING}'");
    for attr in attributes(inner) {
        if attr.starts_with("xmlns") {
            continue;
        }
        open.push(' ');
        open.push_str(attr);
    }
    open.push_str("/>");
    open
}

/// The attributes of a tag's inside, as written (`name='value'`).
fn attributes(inner: &str) -> Vec<&str> {
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        let Some(eq) = b[i..].iter().position(|&c| c == b'=').map(|p| p + i) else {
            break;
        };
        let Some(&q) = b.get(eq + 1) else { break };
        let Some(close) = b[eq + 2..].iter().position(|&c| c == q).map(|p| p + eq + 2) else {
            break;
        };
        out.push(&inner[start..=close]);
        i = close + 1;
    }
    out
}

/// A top-level element made a document of its own (RFC 7395 §3.3.3
/// "Stanza Namespaces"): on TCP it inherited `jabber:client` and the
/// `stream` prefix from our stream header.
fn standalone(element: &str) -> String {
    let name_end = element
        .bytes()
        .position(|c| c.is_ascii_whitespace() || c == b'/' || c == b'>')
        .unwrap_or(element.len());
    let name = &element[1..name_end];
    let tag_close = tag_end(element.as_bytes(), 0).unwrap_or(element.len() - 1);
    let tag = &element[..tag_close];
    let declares_default = attributes(&tag[name_end..])
        .iter()
        .any(|a| a.starts_with("xmlns="));
    let mut add = String::new();
    if name.starts_with("stream:") {
        add = format!(" xmlns:stream='{}'", ns::STREAM);
    } else if !declares_default {
        add = format!(" xmlns='{}'", ns::CLIENT);
    }
    if add.is_empty() {
        return element.to_string();
    }
    let mut s = String::with_capacity(element.len() + add.len());
    s.push_str(&element[..name_end]);
    s.push_str(&add);
    s.push_str(&element[name_end..]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: Vec<Outbound>) -> Vec<String> {
        v.into_iter()
            .map(|m| match m {
                Outbound::Text(t) => t,
                Outbound::Ping => "PING".into(),
            })
            .collect()
    }

    #[test]
    fn header_features_stanzas_and_close_become_messages() {
        let out = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='localhost' version='1.0' xml:lang='en'><stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features><message to='a@b' type='chat'><body>1 &lt; 2 > 0</body></message><a xmlns='urn:xmpp:sm:3' h='3'/> </stream:stream>";
        let (m, rest) = split_output(out);
        assert_eq!(rest, "");
        assert_eq!(
            texts(m),
            vec![
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='abc' from='localhost' version='1.0' xml:lang='en'/>".to_string(),
                "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>".into(),
                "<message xmlns='jabber:client' to='a@b' type='chat'><body>1 &lt; 2 > 0</body></message>".into(),
                "<a xmlns='urn:xmpp:sm:3' h='3'/>".into(),
                "PING".into(),
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".into(),
            ]
        );
    }

    #[test]
    fn an_incomplete_element_waits_at_every_cut() {
        // A quoted `/>` is not the end of an empty element (our serializer
        // escapes `>`, but the scanner must not depend on it).
        let out = "<iq type='result' id='x/>y'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>a@b/c</jid></bind></iq><presence/>";
        for cut in 0..out.len() {
            let (mut m, rest) = split_output(&out[..cut]);
            let tail = format!("{rest}{}", &out[cut..]);
            let (m2, rest2) = split_output(&tail);
            assert_eq!(rest2, "");
            m.extend(m2);
            assert_eq!(
                texts(m),
                vec![
                    "<iq xmlns='jabber:client' type='result' id='x/>y'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>a@b/c</jid></bind></iq>".to_string(),
                    "<presence xmlns='jabber:client'/>".into(),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn whitespace_alone_is_a_ping() {
        assert_eq!(split_output(" ").0, vec![Outbound::Ping]);
    }

    #[test]
    fn open_and_close_become_header_and_end() {
        assert_eq!(
            classify("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>").unwrap(),
            Inbound::Feed("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>".into())
        );
        assert_eq!(
            classify(" <close xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\"/>\n").unwrap(),
            Inbound::Feed("</stream:stream>".into())
        );
        assert_eq!(classify("  ").unwrap(), Inbound::Nothing);
        let s = "<message xmlns='jabber:client' to='a@b'><body>x</body></message>";
        assert_eq!(classify(s).unwrap(), Inbound::Feed(s.into()));
    }

    #[test]
    fn wrong_framing_is_a_stream_error() {
        let c = |s: &str| classify(s).unwrap_err().condition;
        assert_eq!(
            c("<open xmlns='jabber:client' to='localhost' version='1.0'/>"),
            StreamCondition::InvalidNamespace
        );
        assert_eq!(
            c("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"),
            StreamCondition::InvalidNamespace
        );
        assert_eq!(
            c("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'>"),
            StreamCondition::NotWellFormed
        );
        assert_eq!(c("hello"), StreamCondition::NotWellFormed);
    }
}
