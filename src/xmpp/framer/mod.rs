//! The incremental XML framer for client streams: bytes from a socket in,
//! stream events out, without I/O.
//!
//! This module owns the XML layer of a c2s connection: it finds the optional
//! XML declaration and the stream header, cuts every top-level child of the
//! stream (a stanza, or a nonza such as `<starttls/>`, `<auth/>`, `<r/>`) out
//! of the byte stream, parses it into an [`Element`] with its namespaces
//! resolved, and recognises `</stream:stream>`. It implements the parts of
//! RFC 6120 that decide what the server accepts as XML:
//!
//! * §4.8 (XML namespaces): the header's `xmlns` and `xmlns:p` declarations
//!   are in scope for every stanza; elements are stored with their resolved
//!   namespace, never with a prefix.
//! * §11 (XML usage): the restricted XML profile of §11.1, XML and namespace
//!   well-formedness (§11.3), the XML declaration (§11.5) and UTF-8 (§11.6).
//! * §4.3.3 stream restarts ([`Framer::reset`]), §4.4 stream close, and the
//!   stream error conditions of §4.9.3 ([`FramerError::condition`]).
//!
//! # Layout
//!
//! * `mod.rs` (this file): the public face: [`Limits`], [`Event`],
//!   [`FramerError`] and [`Framer`], which owns the buffer and hands each
//!   complete unit the lexer finds to the header parser or the tree builder.
//! * `lex.rs`: the byte-level lexer, a resumable state machine that finds
//!   where each unit ends and decides every lexical, restricted-XML and limit
//!   error at a byte position.
//! * `header.rs`: the XML declaration and the stream header, and the
//!   namespace context the header establishes for the whole stream.
//! * `tree.rs`: the tree builder: one complete stanza into an [`Element`],
//!   namespaces resolved.
//! * `chars.rs`: XML character and name rules, namespace declaration
//!   constraints, references and UTF-8 validation, shared by the others.
//!
//! # How it works
//!
//! The model is mini-redis's frame.rs: a cheap check, then a parse, with
//! "incomplete" kept apart from errors. [`Framer::feed`] appends bytes to one
//! buffer. [`Framer::next_event`] runs a byte-level lexer (a small state
//! machine, resumable at any byte, so input may be split anywhere: inside a
//! UTF-8 sequence, a tag, an attribute value or `</stream:stream>`) from
//! where it stopped last time, so bytes are never rescanned. The lexer tracks
//! tags, quotes, references, CDATA sections and nesting depth, and rejects at
//! the first offending byte everything the restricted profile forbids and
//! every lexical error (bad attribute syntax, `<` in an attribute value,
//! control characters, `]]>` in text, entity references other than the five
//! predefined ones), as well as input over the [`Limits`]. A billion-laughs
//! document therefore dies at `<!D`, before anything is expanded or even
//! kept. An incomplete stanza is refused as soon as it exceeds
//! [`Limits::max_stanza_bytes`], so the buffer never holds more than that
//! plus the last read.
//!
//! Only when the lexer has seen the `>` that ends a top-level element is the
//! complete slice handed to quick-xml's [`Reader`], which borrows it (no
//! copy) while the tree is built; namespaces are resolved here with a scope
//! stack seeded from the header (quick-xml's `NsReader` cannot be seeded with
//! inherited bindings). A stanza is validated as UTF-8 as a whole once and
//! copied once, into the strings of the [`Element`].
//!
//! Because the lexer decides every error at a byte position and the parser
//! only ever sees complete slices, the events and the error are the same
//! whatever the split of the input.
//!
//! # Decisions worth knowing
//!
//! * Invalid UTF-8 is `unsupported-encoding` (RFC 6120 §4.9.3.22 includes
//!   "violating the rules of the [UTF-8] encoding"), as is an XML declaration
//!   naming another encoding. Invalid UTF-8 is detected when the element (or
//!   header) that contains it is complete.
//! * Non-whitespace character data directly inside `<stream:stream>` is
//!   well-formed XML that XMPP cannot process, so it is `bad-format`, not
//!   `not-well-formed`. Whitespace there is a keepalive and is dropped.
//! * CDATA sections are not forbidden by §11.1, so they are accepted inside
//!   stanzas and become ordinary text.
//! * Line ends are normalised as XML 1.0 §2.11 requires (`\r\n` and `\r`
//!   become `\n`) and attribute values as §3.3.3 requires (literal tab, CR and
//!   LF become a space, while `&#10;` and friends stay the character they
//!   name), so the tree holds what an XML processor would report.
//! * `xml:lang` and other `xml:` attributes keep their prefix. An attribute
//!   with any other prefix keeps it too, and the element gets the matching
//!   `xmlns:p` declaration as an attribute so that re-serializing the element
//!   alone stays namespace-well-formed.
//! * An unbound prefix is `not-well-formed` ([`FramerError::UnboundPrefix`]),
//!   in the header too; a connection that prefers `bad-namespace-prefix` for
//!   a header without `xmlns:stream` can tell by the error arriving before
//!   [`Event::StreamOpen`].
//! * After `</stream:stream>` only whitespace is accepted.
//!
//! [`Reader`]: quick_xml::reader::Reader

use std::fmt;

use crate::xmpp::element::Element;
use crate::xmpp::StreamCondition;

mod chars;
mod header;
mod lex;
mod tree;

use header::{parse_header, Header};
use lex::{Found, Lex, RefRet};
use tree::parse_stanza;

/// How far past the configured limits [`Framer::feed`] lets the buffer grow
/// before it gives up. The connection reads at most 16 KiB at a time and
/// drains the framer after each read; this leaves room for that and more.
const FEED_SLACK: usize = 64 * 1024;
/// Buffer capacity kept after a large stanza has been consumed.
const IDLE_CAPACITY: usize = 16 * 1024;

/// Resource limits for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest stanza (top-level child of the stream, serialized bytes as
    /// received) held in memory. Default 256 KiB.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza (the stanza itself is depth 1).
    /// Default 32.
    pub max_depth: usize,
    /// Largest stream header (`<?xml ...?><stream:stream ...>`). Default 4 KiB.
    pub max_header_bytes: usize,
    /// Most attributes on one element. Default 64.
    pub max_attrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_header_bytes: 4 * 1024,
            max_attrs: 64,
        }
    }
}

/// What the framer found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `<stream:stream ...>` opened. `name`/`ns` are the resolved name and
    /// namespace of the root element (the connection checks they are `stream`
    /// in `http://etherx.jabber.org/streams` and answers invalid-namespace
    /// otherwise), `default_ns` the default namespace it declared
    /// (`jabber:client` expected; `None` if absent), `attrs` the other
    /// attributes (to, from, version, id, xml:lang), names as written and
    /// values unescaped, in document order. Namespace declarations are not
    /// among them.
    StreamOpen {
        name: String,
        ns: String,
        default_ns: Option<String>,
        attrs: Vec<(String, String)>,
    },
    /// A complete top-level child of the stream (a stanza, or a nonza like
    /// `<starttls/>`, `<auth/>`, `<r/>`), namespaces resolved (inherited from
    /// the header where not redeclared).
    Stanza(Element),
    /// `</stream:stream>`.
    StreamClose,
}

/// Why the framer gave up on a stream. After any of these the framer is dead:
/// the connection sends the stream error named by [`FramerError::condition`]
/// and closes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FramerError {
    /// The input violates XML 1.0 or Namespaces in XML well-formedness.
    #[error("not well-formed XML: {0}")]
    NotWellFormed(&'static str),
    /// An element or attribute uses a namespace prefix that is not declared
    /// in scope (including the stream header's declarations).
    #[error("not well-formed XML: namespace prefix `{0}` is not bound")]
    UnboundPrefix(String),
    /// A comment, processing instruction, DTD or entity reference other than
    /// the five predefined ones (RFC 6120 §11.1). The detail names which.
    #[error("restricted XML: {0} not allowed in XMPP")]
    RestrictedXml(&'static str),
    /// The bytes are not UTF-8, or the XML declaration names another encoding.
    #[error("unsupported encoding: {0}")]
    UnsupportedEncoding(&'static str),
    /// Well-formed XML that is not an XMPP stream: character data directly at
    /// stream level, or a self-closing stream header.
    #[error("bad format: {0}")]
    BadFormat(&'static str),
    /// A stanza grew past [`Limits::max_stanza_bytes`] before it was complete.
    #[error("stanza larger than {limit} bytes")]
    StanzaTooBig { limit: usize },
    /// An element is nested deeper than [`Limits::max_depth`].
    #[error("elements nested deeper than {limit}")]
    TooDeep { limit: usize },
    /// The XML declaration plus stream header exceed [`Limits::max_header_bytes`].
    #[error("stream header larger than {limit} bytes")]
    HeaderTooBig { limit: usize },
    /// An element has more than [`Limits::max_attrs`] attributes.
    #[error("more than {limit} attributes on one element")]
    TooManyAttributes { limit: usize },
    /// More than `limit` unprocessed bytes were fed without calling
    /// [`Framer::next_event`] in between.
    #[error("more than {limit} bytes buffered")]
    BufferFull { limit: usize },
}

impl FramerError {
    /// The RFC 6120 §4.9.3 stream error condition this maps to.
    pub fn condition(&self) -> StreamCondition {
        match self {
            // §4.9.3.13: "The initiating entity has sent XML that violates the
            // well-formedness rules of [XML] or [XML-NAMES]."
            FramerError::NotWellFormed(_) | FramerError::UnboundPrefix(_) => {
                StreamCondition::NotWellFormed
            }
            // §4.9.3.18: "The entity has attempted to send restricted XML
            // features such as a comment, processing instruction, DTD subset,
            // or XML entity reference (see Section 11.1)."
            FramerError::RestrictedXml(_) => StreamCondition::RestrictedXml,
            // §4.9.3.22: "... or has otherwise improperly encoded the stream
            // (e.g., by violating the rules of the [UTF-8] encoding)."
            FramerError::UnsupportedEncoding(_) => StreamCondition::UnsupportedEncoding,
            // §4.9.3.1: "The entity has sent XML that cannot be processed."
            FramerError::BadFormat(_) => StreamCondition::BadFormat,
            // §4.9.3.14: "The entity has violated some local service policy
            // (e.g., a stanza exceeds a configured size limit)".
            FramerError::StanzaTooBig { .. }
            | FramerError::TooDeep { .. }
            | FramerError::HeaderTooBig { .. }
            | FramerError::TooManyAttributes { .. }
            | FramerError::BufferFull { .. } => StreamCondition::PolicyViolation,
        }
    }
}

fn nwf(what: &'static str) -> FramerError {
    FramerError::NotWellFormed(what)
}

/// Where the framer is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the stream header has been completed.
    Prolog,
    /// Inside `<stream:stream>`.
    Stream,
    /// After `</stream:stream>`.
    Closed,
}

/// The incremental framer for one client stream.
pub struct Framer {
    limits: Limits,
    buf: Vec<u8>,
    /// First byte not yet consumed: the start of the current stanza (or of the
    /// prolog, before the header is complete).
    start: usize,
    /// Next byte for the lexer.
    pos: usize,
    /// The `<` of the most recent tag at stream level or in the prolog.
    mark: usize,
    /// The name of the end tag being lexed at stream level.
    end_name: (usize, usize),
    /// The name of the start tag being lexed.
    start_name: (usize, usize),
    /// Hashes of the names of the open elements of the current stanza, so
    /// a mismatched end tag is refused at once (XML 1.0 §3, WFC: Element
    /// Type Match) instead of waiting for a close that never matches.
    open: Vec<u64>,
    phase: Phase,
    lex: Lex,
    /// Open elements of the current stanza.
    depth: usize,
    /// Attributes seen so far on the current start tag.
    attrs: usize,
    /// Consecutive `]` just seen in character data (for `]]>`).
    brackets: u8,
    ref_ret: RefRet,
    /// The first bytes of the entity name being lexed, and its length.
    ref_name: [u8; 4],
    ref_len: usize,
    /// Value of the character reference being lexed (capped above U+10FFFF).
    ref_val: u32,
    header: Option<Header>,
    failed: Option<FramerError>,
}

impl fmt::Debug for Framer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framer")
            .field("phase", &self.phase)
            .field("buffered", &self.buffered())
            .field("depth", &self.depth)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            buf: Vec::new(),
            start: 0,
            pos: 0,
            mark: 0,
            end_name: (0, 0),
            start_name: (0, 0),
            open: Vec::new(),
            phase: Phase::Prolog,
            lex: Lex::Text,
            depth: 0,
            attrs: 0,
            brackets: 0,
            ref_ret: RefRet::Text,
            ref_name: [0; 4],
            ref_len: 0,
            ref_val: 0,
            header: None,
            failed: None,
        }
    }

    /// Append received bytes.
    ///
    /// The caller is expected to drain [`Framer::next_event`] after each feed.
    /// The lexer never lets an incomplete stanza grow past
    /// [`Limits::max_stanza_bytes`] (nor a header past
    /// [`Limits::max_header_bytes`]), so the buffer holds at most that plus
    /// one read. If more than that limit plus 64 KiB is fed without draining,
    /// the bytes are refused and the next call to `next_event` fails with
    /// [`FramerError::BufferFull`]. Bytes fed after an error are ignored.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() || bytes.is_empty() {
            return;
        }
        self.compact();
        let cap = self
            .limits
            .max_stanza_bytes
            .max(self.limits.max_header_bytes)
            .saturating_add(FEED_SLACK);
        if self.buf.len().saturating_add(bytes.len()) > cap {
            self.fail(FramerError::BufferFull { limit: cap });
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Next complete event, `Ok(None)` if more bytes are needed. After an
    /// `Err` the framer is dead: every later call returns the same error.
    pub fn next_event(&mut self) -> Result<Option<Event>, FramerError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.advance();
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    /// Stream restart (after STARTTLS and after SASL success, RFC 6120
    /// §4.3.3): forget everything, expect a new optional XML declaration and a
    /// new stream header. Bytes already buffered are discarded (after
    /// `<starttls/>` the next bytes are TLS anyway). A dead framer is revived.
    pub fn reset(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if buf.capacity() > IDLE_CAPACITY {
            buf.shrink_to(IDLE_CAPACITY);
        }
        *self = Framer::new(self.limits.clone());
        self.buf = buf;
    }

    /// Bytes currently buffered (for tests and metrics).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Give the buffer's memory back when nothing is pending (called by a
    /// connection before it waits for the socket, so an idle session holds
    /// no read buffer).
    pub fn shrink_idle(&mut self) {
        self.compact();
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }

    fn fail(&mut self, e: FramerError) {
        self.failed = Some(e);
        self.buf = Vec::new();
        self.start = 0;
        self.pos = 0;
    }

    /// Drop consumed bytes from the front of the buffer. Called once per
    /// feed, so each byte of a partial stanza moves at most once per read.
    fn compact(&mut self) {
        let n = self.start;
        if n == 0 {
            return;
        }
        self.buf.drain(..n);
        self.start = 0;
        self.pos -= n;
        self.mark = self.mark.saturating_sub(n);
        self.end_name = (
            self.end_name.0.saturating_sub(n),
            self.end_name.1.saturating_sub(n),
        );
        self.start_name = (
            self.start_name.0.saturating_sub(n),
            self.start_name.1.saturating_sub(n),
        );
        if self.buf.capacity() > 4 * IDLE_CAPACITY && self.buf.len() <= IDLE_CAPACITY {
            self.buf.shrink_to(IDLE_CAPACITY);
        }
    }

    fn advance(&mut self) -> Result<Option<Event>, FramerError> {
        match self.lex_until_found()? {
            None => Ok(None),
            Some(Found::Header(lt)) => {
                let slice = self
                    .buf
                    .get(lt..self.pos)
                    .ok_or(nwf("internal: header bounds"))?;
                let (header, event) = parse_header(slice)?;
                self.header = Some(header);
                self.start = self.pos;
                Ok(Some(event))
            }
            Some(Found::Stanza) => {
                let slice = self
                    .buf
                    .get(self.start..self.pos)
                    .ok_or(nwf("internal: stanza bounds"))?;
                let header = self.header.as_ref().ok_or(nwf("internal: no header"))?;
                let element = parse_stanza(slice, header)?;
                self.start = self.pos;
                Ok(Some(Event::Stanza(element)))
            }
            Some(Found::Close) => {
                self.start = self.pos;
                Ok(Some(Event::StreamClose))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::element::Node;
    use crate::xmpp::ns;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.com' version='1.0' \
        xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    type Outcome = (Vec<Event>, Option<FramerError>);

    /// Call `next_event` until it wants more input or fails.
    fn drain(f: &mut Framer, out: &mut Vec<Event>) -> Option<FramerError> {
        loop {
            match f.next_event() {
                Ok(Some(e)) => out.push(e),
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    }

    /// Feed `chunks` one by one, draining after each, as the connection does.
    fn run_chunks<'a>(limits: &Limits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut f = Framer::new(limits.clone());
        let mut events = Vec::new();
        for chunk in chunks {
            f.feed(chunk);
            if let Some(e) = drain(&mut f, &mut events) {
                // Dead for good.
                assert_eq!(f.next_event(), Err(e.clone()));
                return (events, Some(e));
            }
        }
        (events, None)
    }

    /// The outcome of `input`, after checking it is the same fed whole, split
    /// in two at every byte position, and one byte at a time.
    fn run_with(limits: &Limits, input: &[u8]) -> Outcome {
        let whole = run_chunks(limits, [input]);
        for i in 1..input.len() {
            let split = run_chunks(limits, [&input[..i], &input[i..]]);
            assert_eq!(
                split,
                whole,
                "split at byte {i} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let bytewise = run_chunks(limits, input.chunks(1));
        assert_eq!(
            bytewise,
            whole,
            "byte at a time: {:?}",
            String::from_utf8_lossy(input)
        );
        whole
    }

    fn run(input: impl AsRef<[u8]>) -> Outcome {
        run_with(&Limits::default(), input.as_ref())
    }

    /// The stanzas of a stream that must parse without error.
    fn stanzas(input: impl AsRef<[u8]>) -> Vec<Element> {
        let (events, err) = run(input);
        assert_eq!(err, None);
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::Stanza(el) => Some(el),
                _ => None,
            })
            .collect()
    }

    /// The single stanza after the standard header.
    fn stanza(xml: &str) -> Element {
        let mut all = stanzas(format!("{HEADER}{xml}"));
        assert_eq!(all.len(), 1, "{xml}");
        all.remove(0)
    }

    /// The error a stream ends with (after the standard header if `header`).
    fn error_of(input: impl AsRef<[u8]>) -> FramerError {
        match run(input.as_ref()) {
            (_, Some(e)) => e,
            (events, None) => panic!(
                "no error for {:?}: {events:?}",
                String::from_utf8_lossy(input.as_ref())
            ),
        }
    }

    fn stanza_error(xml: impl AsRef<[u8]>) -> FramerError {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(xml.as_ref());
        error_of(input)
    }

    fn open_event(input: &str) -> Event {
        let (events, err) = run(input);
        assert_eq!(err, None, "{input}");
        assert_eq!(events.len(), 1, "{input}");
        events.into_iter().next().expect("one event")
    }

    fn attrs_of(e: &Element) -> Vec<(&str, &str)> {
        e.attrs().collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn header_without_declaration() {
        let ev = open_event(
            "<stream:stream to='example.com' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        );
        assert_eq!(
            ev,
            Event::StreamOpen {
                name: "stream".into(),
                ns: ns::STREAM.into(),
                default_ns: Some(ns::CLIENT.into()),
                attrs: pairs(&[("to", "example.com"), ("version", "1.0")]),
            }
        );
    }

    #[test]
    fn header_with_declaration_and_both_quote_styles() {
        let ev = open_event(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<stream:stream to=\"example.com\" \
             from='juliet@example.com' xml:lang=\"en\" id='a&amp;b&#x41;&quot;' \
             version = \"1.0\"\n xmlns=\"jabber:client\" xmlns:stream='http://etherx.jabber.org/streams'>",
        );
        assert_eq!(
            ev,
            Event::StreamOpen {
                name: "stream".into(),
                ns: ns::STREAM.into(),
                default_ns: Some(ns::CLIENT.into()),
                attrs: pairs(&[
                    ("to", "example.com"),
                    ("from", "juliet@example.com"),
                    ("xml:lang", "en"),
                    ("id", "a&bA\""),
                    ("version", "1.0"),
                ]),
            }
        );
        // Other acceptable declarations.
        for decl in [
            "<?xml version='1.0' encoding='utf-8'?>",
            "<?xml version='1.0' encoding='UTF-8' standalone='yes'?>",
            "<?xml version='1.0' ?>",
        ] {
            let ev = open_event(&format!(
                "{decl}<stream:stream xmlns:stream='{}'>",
                ns::STREAM
            ));
            assert!(matches!(ev, Event::StreamOpen { .. }), "{decl}");
        }
    }

    #[test]
    fn header_namespace_variants() {
        // No prefix: the root's namespace is the default namespace.
        let ev = open_event("<stream xmlns='http://etherx.jabber.org/streams'>");
        assert_eq!(
            ev,
            Event::StreamOpen {
                name: "stream".into(),
                ns: ns::STREAM.into(),
                default_ns: Some(ns::STREAM.into()),
                attrs: vec![],
            }
        );
        // No default namespace; a different (legal) prefix for the stream.
        let (events, err) = run(format!(
            "<s:stream xmlns:s='{}'><s:features/></s:stream>",
            ns::STREAM
        ));
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![
                Event::StreamOpen {
                    name: "stream".into(),
                    ns: ns::STREAM.into(),
                    default_ns: None,
                    attrs: vec![],
                },
                Event::Stanza(Element::new("features", ns::STREAM)),
                Event::StreamClose,
            ]
        );
        // The connection answers invalid-namespace; the framer reports it.
        let ev = open_event("<stream:stream xmlns:stream='urn:wrong'>");
        assert!(matches!(ev, Event::StreamOpen { ns, .. } if ns == "urn:wrong"));
        // An unbound stream prefix is not namespace-well-formed.
        let e = error_of("<stream:stream xmlns='jabber:client'>");
        assert_eq!(e, FramerError::UnboundPrefix("stream".into()));
        assert_eq!(e.condition(), StreamCondition::NotWellFormed);
    }

    #[test]
    fn xml_declaration_rules() {
        let s = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
        let e = error_of(format!("<?xml version='1.0' encoding='ISO-8859-1'?>{s}"));
        assert_eq!(e.condition(), StreamCondition::UnsupportedEncoding);
        let e = error_of(format!("<?xml version='1.0' encoding='UTF-16'?>{s}"));
        assert_eq!(e.condition(), StreamCondition::UnsupportedEncoding);
        let e = error_of(format!("<?xml version='2.0'?>{s}"));
        assert_eq!(e.condition(), StreamCondition::NotWellFormed);
        let e = error_of(format!("<?xml encoding='UTF-8'?>{s}"));
        assert_eq!(e.condition(), StreamCondition::NotWellFormed);
        let e = error_of(format!("<?xml version='1.0' standalone='maybe'?>{s}"));
        assert_eq!(e.condition(), StreamCondition::NotWellFormed);
        // Only at the very start of the stream.
        let e = error_of(format!(" <?xml version='1.0'?>{s}"));
        assert_eq!(e, FramerError::RestrictedXml("processing instruction"));
        let e = error_of(format!("<?xml version='1.0'?><?xml version='1.0'?>{s}"));
        assert_eq!(e, FramerError::RestrictedXml("processing instruction"));
        // A control character inside it.
        let e = error_of(format!("<?xml version='1.0'\x01?>{s}"));
        assert_eq!(e.condition(), StreamCondition::NotWellFormed);
    }

    #[test]
    fn nested_stanzas_with_text_entities_char_refs_and_cdata() {
        let msg = stanza(
            "<message to='romeo@example.net' type='chat' id='m&lt;1&gt;'>\
             <body>a &lt; b &amp;&amp; c &gt; d &quot;q&quot; &apos;s&apos; &#65;&#x42;&#x1F426;\
             <![CDATA[<b>not a tag</b> & ]]]]>x</body>\
             <html xmlns='http://jabber.org/protocol/xhtml-im'>\
             <body xmlns='http://www.w3.org/1999/xhtml'><p>hi <b>there</b>!</p></body></html>\
             </message>",
        );
        assert!(msg.is("message", ns::CLIENT));
        assert_eq!(msg.attr("to"), Some("romeo@example.net"));
        assert_eq!(msg.attr("id"), Some("m<1>"));
        let body = msg.get_child("body", ns::CLIENT).expect("body");
        assert_eq!(
            body.text(),
            "a < b && c > d \"q\" 's' AB🐦<b>not a tag</b> & ]]x"
        );
        // Text pieces are merged into one node.
        assert_eq!(body.nodes().len(), 1);
        let html = msg
            .get_child("html", "http://jabber.org/protocol/xhtml-im")
            .expect("html");
        let xbody = html
            .get_child("body", "http://www.w3.org/1999/xhtml")
            .expect("xhtml body");
        let p = xbody
            .get_child("p", "http://www.w3.org/1999/xhtml")
            .expect("p");
        assert_eq!(
            p.nodes(),
            &[
                Node::Text("hi ".into()),
                Node::Element(Element::new("b", "http://www.w3.org/1999/xhtml").with_text("there")),
                Node::Text("!".into()),
            ]
        );
        // Whitespace inside a stanza is content.
        let iq = stanza("<iq type='get' id='1'>\n  <ping xmlns='urn:xmpp:ping'/>\n</iq>");
        assert_eq!(iq.nodes().len(), 3);
        assert!(iq.has_child("ping", ns::PING));
    }

    #[test]
    fn namespaces_are_inherited_and_redeclared() {
        let all = stanzas(format!(
            "{HEADER}<message/>\
             <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>\
             <stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
             <foo:x xmlns:foo='urn:a'><foo:y/><z/></foo:x>\
             <iq><query xmlns='jabber:iq:roster'><item/><foo:i xmlns:foo='urn:b'/></query><after/></iq>\
             <a xmlns=''><b/></a>\
             <stream:x xmlns:stream='urn:other'><stream:y/></stream:x>\
             <stream:z/>"
        ));
        assert!(all[0].is("message", ns::CLIENT));
        assert!(all[0].attrs().next().is_none());
        assert!(all[1].is("features", ns::STREAM));
        let tls = all[1].get_child("starttls", ns::TLS).expect("starttls");
        assert!(tls.has_child("required", ns::TLS));
        assert!(tls.attrs().next().is_none(), "xmlns is not an attribute");
        assert!(all[2].is("error", ns::STREAM));
        assert!(all[2].has_child("not-well-formed", ns::STREAM_ERRORS));
        assert!(all[3].is("x", "urn:a"));
        assert!(all[3].has_child("y", "urn:a"));
        assert!(
            all[3].has_child("z", ns::CLIENT),
            "default namespace from the header"
        );
        assert!(all[3].attrs().next().is_none());
        let query = all[4].get_child("query", ns::ROSTER).expect("query");
        assert!(query.has_child("item", ns::ROSTER));
        assert!(query.has_child("i", "urn:b"));
        assert!(
            all[4].has_child("after", ns::CLIENT),
            "scope ends with the element"
        );
        assert!(all[5].is("a", ""));
        assert!(all[5].has_child("b", ""));
        assert!(all[6].is("x", "urn:other"));
        assert!(all[6].has_child("y", "urn:other"));
        assert!(all[7].is("z", ns::STREAM), "redeclaration was scoped");
    }

    #[test]
    fn prefixed_attributes_keep_their_declaration() {
        let header =
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
                      xmlns:h='urn:h'>";
        let all = stanzas(format!(
            "{header}<message xmlns:e='urn:e' e:hint='1' xml:lang='fr' type='chat'><body/></message>\
             <message xmlns:e='urn:e'><x e:a='1'/></message>\
             <presence h:x='2'/>"
        ));
        // Declarations are not attributes, except `xmlns:e` which `e:hint`
        // needs: it is appended after the attributes as written.
        assert_eq!(
            attrs_of(&all[0]),
            [
                ("e:hint", "1"),
                ("xml:lang", "fr"),
                ("type", "chat"),
                ("xmlns:e", "urn:e")
            ]
        );
        // The declaration is copied to the element that uses it, not kept
        // where it is only declared.
        assert!(all[1].attrs().next().is_none());
        let x = all[1].get_child("x", ns::CLIENT).expect("x");
        assert_eq!(attrs_of(x), [("e:a", "1"), ("xmlns:e", "urn:e")]);
        // Also when declared by the stream header.
        assert_eq!(attrs_of(&all[2]), [("h:x", "2"), ("xmlns:h", "urn:h")]);
        // Every element re-serializes to XML that parses back to itself.
        for el in &all {
            let xml = el.to_xml(ns::CLIENT);
            assert_eq!(&stanza(&xml), el, "{xml}");
        }
        // Two attributes with the same expanded name.
        let e = stanza_error("<m xmlns:a='urn:x' xmlns:b='urn:x' a:k='1' b:k='2'/>");
        assert_eq!(e.condition(), StreamCondition::NotWellFormed);
    }

    #[test]
    fn whitespace_keepalives_produce_nothing() {
        let mut f = Framer::new(Limits::default());
        f.feed(HEADER.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
        for _ in 0..1000 {
            f.feed(b" \n\t\r ");
            assert_eq!(f.next_event(), Ok(None));
            assert_eq!(f.buffered(), 0);
        }
        let all = stanzas(format!("{HEADER} \n <presence/>\r\n\t<presence/>  "));
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn stream_close() {
        let (events, err) = run(format!("{HEADER}<presence/></stream:stream>  \n"));
        assert_eq!(err, None);
        assert_eq!(events.len(), 3);
        assert_eq!(events[2], Event::StreamClose);
        let (events, err) = run(format!("{HEADER}</stream:stream\n >"));
        assert_eq!((events.len(), err), (2, None));
        // Must echo the header's name.
        assert_eq!(
            stanza_error("</stream>").condition(),
            StreamCondition::NotWellFormed
        );
        assert_eq!(
            stanza_error("</s:stream>").condition(),
            StreamCondition::NotWellFormed
        );
        assert_eq!(
            error_of("</stream:stream>").condition(),
            StreamCondition::NotWellFormed
        );
        assert_eq!(
            stanza_error("</stream:stream><presence/>").condition(),
            StreamCondition::NotWellFormed
        );
    }

    #[test]
    fn mismatched_end_tag_is_refused_without_waiting_for_more() {
        let mut f = Framer::new(Limits::default());
        f.feed(HEADER.as_bytes());
        f.feed(b"<message><body>unclosed</message>");
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
        assert_eq!(
            f.next_event().map_err(|e| e.condition()),
            Err(StreamCondition::NotWellFormed)
        );
    }

    #[test]
    fn reset_then_new_header() {
        let mut f = Framer::new(Limits::default());
        f.feed(HEADER.as_bytes());
        f.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x01\x02\x00");
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
        match f.next_event() {
            Ok(Some(Event::Stanza(e))) => assert!(e.is("starttls", ns::TLS)),
            other => panic!("{other:?}"),
        }
        // The rest is a TLS ClientHello: the connection restarts instead.
        f.reset();
        assert_eq!(f.buffered(), 0);
        assert_eq!(f.next_event(), Ok(None));
        f.feed(HEADER.as_bytes());
        f.feed(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>");
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
        assert!(matches!(f.next_event(), Ok(Some(Event::Stanza(e))) if e.is("auth", ns::SASL)));
        // Restart after SASL success, this time without a declaration.
        f.reset();
        f.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'><iq/>");
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
        assert!(matches!(f.next_event(), Ok(Some(Event::Stanza(e))) if e.is("iq", ns::CLIENT)));
        // Reset also revives a dead framer.
        f.feed(b"<!-- -->");
        assert!(f.next_event().is_err());
        f.reset();
        f.feed(HEADER.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
    }

    #[test]
    fn restricted_xml_is_rejected() {
        let s = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
        let cases: Vec<(String, &str)> = vec![
            (format!("{HEADER}<message><!-- c --></message>"), "comment"),
            (format!("{HEADER}<!-- keepalive -->"), "comment"),
            (format!("<?xml version='1.0'?><!-- c -->{s}"), "comment"),
            (format!("<!-- c -->{s}"), "comment"),
            (
                format!("{HEADER}<message><?pi x?></message>"),
                "processing instruction",
            ),
            (format!("{HEADER}<?pi x?>"), "processing instruction"),
            (
                format!("{HEADER}<?xml version='1.0'?>"),
                "processing instruction",
            ),
            (
                format!("<?xml-stylesheet href='a'?>{s}"),
                "processing instruction",
            ),
            (
                format!("<?xml version='1.0'?><?pi?>{s}"),
                "processing instruction",
            ),
            (format!("<!DOCTYPE stream>{s}"), "document type declaration"),
            (
                format!("<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY a 'b'>]>{s}"),
                "document type declaration",
            ),
            (
                format!("{HEADER}<message><!ENTITY x 'y'></message>"),
                "document type declaration",
            ),
            (
                format!("{HEADER}<!ELEMENT message ANY>"),
                "document type declaration",
            ),
            (
                format!("{HEADER}<message>&foo;</message>"),
                "entity reference",
            ),
            (
                format!("{HEADER}<message>&nbsp;</message>"),
                "entity reference",
            ),
            (
                format!("{HEADER}<message>&ampx;</message>"),
                "entity reference",
            ),
            (
                format!("{HEADER}<message>&lt1;</message>"),
                "entity reference",
            ),
            (
                format!("{HEADER}<message>&é;</message>"),
                "entity reference",
            ),
            (format!("{HEADER}<message to='&foo;'/>"), "entity reference"),
            (
                format!("<stream:stream to='&x;' xmlns:stream='{}'>", ns::STREAM),
                "entity reference",
            ),
        ];
        for (input, what) in cases {
            let e = error_of(&input);
            assert_eq!(e, FramerError::RestrictedXml(what), "{input}");
            assert_eq!(e.condition(), StreamCondition::RestrictedXml);
        }
    }

    #[test]
    fn billion_laughs_dies_at_the_doctype() {
        let doc = "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n \
            <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n \
            <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">\n \
            <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n \
            <!ENTITY lol9 \"&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;\">\n]>\n\
            <stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol9;";
        let (events, err) = run(doc);
        assert!(events.is_empty());
        assert_eq!(
            err,
            Some(FramerError::RestrictedXml("document type declaration"))
        );
        // It is refused at its third byte, `<!D`, before any of it is kept.
        let mut f = Framer::new(Limits::default());
        let at = doc.find("<!DOCTYPE").expect("doctype") + 3;
        for (i, b) in doc.as_bytes().iter().enumerate() {
            f.feed(std::slice::from_ref(b));
            match f.next_event() {
                Ok(None) => assert!(i + 1 < at, "not refused at byte {i}"),
                Err(e) => {
                    assert_eq!(i + 1, at);
                    assert_eq!(e.condition(), StreamCondition::RestrictedXml);
                    break;
                }
                Ok(Some(e)) => panic!("{e:?}"),
            }
        }
        assert_eq!(f.buffered(), 0);
        // The same inside a stanza.
        let e = stanza_error("<message><!DOCTYPE x [<!ENTITY a 'aaaa'>]>&a;</message>");
        assert_eq!(e.condition(), StreamCondition::RestrictedXml);
    }

    #[test]
    fn character_references() {
        let body = stanza("<body a='&#x1F426;&#9;'>&#65;&#x41;&#x4a;&#x4A;&#xe9;&#233;&#x1F426;&#0000000065;&#13;&#x10FFFF;</body>");
        assert_eq!(body.text(), "AAJJéé🐦A\r\u{10FFFF}");
        assert_eq!(body.attr("a"), Some("🐦\t"));
        for bad in [
            "&#0;",
            "&#x0;",
            "&#1;",
            "&#x1F;",
            "&#xFFFE;",
            "&#xFFFF;",
            "&#xD800;",
            "&#xDFFF;",
            "&#x110000;",
            "&#99999999999999999999;",
            "&#X41;",
            "&#x;",
            "&#;",
            "&#-1;",
            "&#x-1;",
            "&#+65;",
            "&#6 5;",
            "&#65",
            "&#x41 ;",
        ] {
            let e = stanza_error(format!("<body>{bad}</body>"));
            assert_eq!(e.condition(), StreamCondition::NotWellFormed, "{bad}");
            let e = stanza_error(format!("<body a='{bad}'/>"));
            assert_eq!(
                e.condition(),
                StreamCondition::NotWellFormed,
                "{bad} in attribute"
            );
        }
    }

    #[test]
    fn not_well_formed_input_is_rejected() {
        let cases: &[&[u8]] = &[
            b"<message></presence>",
            b"<message><body></message></body>",
            b"<message><body></Body></message>",
            b"<a:b xmlns:a='u' xmlns:c='u'></c:b>",
            b"<message to=a/>",
            b"<message to/>",
            b"<message to='a'type='b'/>",
            b"<message to='a' to='b'/>",
            b"<message xmlns='a' xmlns='b'/>",
            b"<message to='a<b'/>",
            b"<message to=\"a'/>",
            b"<message to='a\"/>",
            b"<foo:message/>",
            b"<message foo:bar='x'/>",
            b"<message><foo:body/></message>",
            b"<xmlns:message/>",
            b"<message xmlns:p=''/>",
            b"<message xmlns:xml='urn:not-xml'/>",
            b"<message xmlns:xmlns='urn:x'/>",
            b"<message xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
            b"<message xmlns='http://www.w3.org/2000/xmlns/'/>",
            b"<1message/>",
            b"<-message/>",
            b"<.message/>",
            b"<a:b:c xmlns:a='u'/>",
            b"<:a/>",
            b"<a:/>",
            b"< message/>",
            b"<message / >",
            b"<message/ >",
            b"<message a='1' / >",
            b"<message></ message>",
            b"<message>\x00</message>",
            b"<message>\x01</message>",
            b"<message>\x1f</message>",
            b"<message a='\x0b'/>",
            b"<message><![CDATA[\x0c]]></message>",
            b"<message>]]></message>",
            b"<message>a ]]]> b</message>",
            b"<message>a & b</message>",
            b"<message>a &amp b</message>",
            b"<message>&;</message>",
            b"<message>&#</message>",
            b"<message a='&'/>",
            b"<message><![CDAT[x]]></message>",
            b"<message><!x></message>",
            b"<message>\xEF\xBF\xBE</message>",
            b"<message a='\xEF\xBF\xBF'/>",
            b"<message>\x07</message>",
            b"<message \x01='a'/>",
            b"<\xC2\xB7m/>",
            b"<m a\xC2\xA0b='1'/>",
            b"<message><a><b></a></b></message>",
            b"<message>",
            b"<>",
            b"</>",
            b"<message><></message>",
        ];
        for &case in cases {
            let mut input = HEADER.as_bytes().to_vec();
            input.extend_from_slice(case);
            input.extend_from_slice(b"</stream:stream>");
            let e = error_of(&input);
            assert_eq!(
                e.condition(),
                StreamCondition::NotWellFormed,
                "{:?}: {e:?}",
                String::from_utf8_lossy(case)
            );
        }
        // Before and around the header.
        for input in [
            "hello<stream:stream>",
            "\u{FEFF}<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' a='1'b='2'>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' a='<'>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' a='1' a='2'>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' p:a='1'>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns:p=''>",
            "<![CDATA[x]]><stream:stream>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'></stream:stream></stream:stream>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'></stream:stream>x",
        ] {
            let e = error_of(input);
            assert_eq!(e.condition(), StreamCondition::NotWellFormed, "{input}: {e:?}");
        }
        // Names may be non-ASCII.
        let e = stanza("<é xmlns='urn:x' ñ='1'><ø/></é>");
        assert!(e.is("é", "urn:x") && e.attr("ñ") == Some("1") && e.has_child("ø", "urn:x"));
    }

    #[test]
    fn invalid_utf8_is_unsupported_encoding() {
        for bad in [
            &b"<body>\xC3\x28</body>"[..],
            b"<body>\xC0\xAF</body>",
            b"<body>\xED\xA0\x80</body>",
            b"<body>\xF4\x90\x80\x80</body>",
            b"<body>\xFF</body>",
            b"<body a='\xE2\x82'/>",
            b"<b\xFFdy/>",
        ] {
            let e = stanza_error(bad);
            assert_eq!(
                e,
                FramerError::UnsupportedEncoding("invalid UTF-8"),
                "{bad:?}"
            );
            assert_eq!(e.condition(), StreamCondition::UnsupportedEncoding);
        }
        let e = error_of(b"<stream:stream to='\xC3'>".as_slice());
        assert_eq!(e.condition(), StreamCondition::UnsupportedEncoding);
    }

    #[test]
    fn character_data_at_stream_level_is_bad_format() {
        for text in [
            "hello",
            "&amp;",
            "&#32;",
            "<![CDATA[ ]]>",
            "\u{A0}",
            "\u{FEFF}",
        ] {
            let e = stanza_error(text);
            assert!(matches!(e, FramerError::BadFormat(_)), "{text}: {e:?}");
            assert_eq!(e.condition(), StreamCondition::BadFormat);
        }
        let e = error_of("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>");
        assert_eq!(e.condition(), StreamCondition::BadFormat);
    }

    #[test]
    fn stanza_size_limit() {
        let limits = Limits {
            max_stanza_bytes: 100,
            ..Limits::default()
        };
        let fits = format!("<message><body>{}</body></message>", "x".repeat(100 - 32));
        assert_eq!(fits.len(), 100);
        let too_big = format!("<message><body>{}</body></message>", "x".repeat(101 - 32));
        let (events, err) = run_with(&limits, format!("{HEADER}{fits}  {fits}").as_bytes());
        assert_eq!((events.len(), err), (3, None));
        let (events, err) = run_with(&limits, format!("{HEADER}{fits}{too_big}").as_bytes());
        assert_eq!(events.len(), 2);
        assert_eq!(err, Some(FramerError::StanzaTooBig { limit: 100 }));
        assert_eq!(
            FramerError::StanzaTooBig { limit: 100 }.condition(),
            StreamCondition::PolicyViolation
        );
        // Refused as soon as the 101st byte arrives, complete or not.
        let (_, err) = run_with(
            &limits,
            format!("{HEADER}<message>{}", "x".repeat(100)).as_bytes(),
        );
        assert_eq!(err, Some(FramerError::StanzaTooBig { limit: 100 }));
        // The end tag at stream level counts as one too.
        let (_, err) = run_with(
            &limits,
            format!("{HEADER}</stream:stream{}>", " ".repeat(100)).as_bytes(),
        );
        assert_eq!(err, Some(FramerError::StanzaTooBig { limit: 100 }));
    }

    #[test]
    fn huge_stanza_is_refused_with_bounded_buffering() {
        const READ: usize = 16 * 1024;
        let limits = Limits::default();
        let mut f = Framer::new(limits.clone());
        f.feed(HEADER.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
        let mut data = b"<message><body>".to_vec();
        data.resize(4 * 1024 * 1024, b'a');
        let mut max_buffered = 0;
        let mut refused = None;
        for (i, chunk) in data.chunks(READ).enumerate() {
            f.feed(chunk);
            max_buffered = max_buffered.max(f.buffered());
            match f.next_event() {
                Ok(None) => {}
                Err(e) => {
                    refused = Some((i + 1) * READ);
                    assert_eq!(
                        e,
                        FramerError::StanzaTooBig {
                            limit: limits.max_stanza_bytes
                        }
                    );
                    break;
                }
                Ok(Some(e)) => panic!("{e:?}"),
            }
        }
        assert!(
            max_buffered <= limits.max_stanza_bytes + READ,
            "{max_buffered}"
        );
        let refused = refused.expect("refused");
        assert!(refused <= limits.max_stanza_bytes + READ, "{refused}");
        assert_eq!(f.buffered(), 0, "memory released");

        // Just under the limit is fine, and the buffer shrinks back after.
        let mut f = Framer::new(limits.clone());
        f.feed(HEADER.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
        let body = "é".repeat((limits.max_stanza_bytes - 40) / 2);
        let big = format!("<message><body>{body}</body></message>");
        assert!(big.len() <= limits.max_stanza_bytes);
        let mut got = None;
        for chunk in big.as_bytes().chunks(READ) {
            f.feed(chunk);
            assert!(f.buffered() <= limits.max_stanza_bytes);
            if let Some(ev) = f.next_event().expect("no error") {
                got = Some(ev);
            }
        }
        match got {
            Some(Event::Stanza(m)) => {
                assert_eq!(
                    m.get_child("body", ns::CLIENT).map(|b| b.text()),
                    Some(body)
                )
            }
            other => panic!("{other:?}"),
        }
        f.feed(b"<r xmlns='urn:xmpp:sm:3'/>");
        assert!(matches!(f.next_event(), Ok(Some(Event::Stanza(_)))));
        assert!(
            f.buf.capacity() <= 4 * IDLE_CAPACITY,
            "{}",
            f.buf.capacity()
        );
    }

    #[test]
    fn feeding_without_draining_is_bounded() {
        let limits = Limits {
            max_stanza_bytes: 1024,
            ..Limits::default()
        };
        let mut f = Framer::new(limits.clone());
        f.feed(HEADER.as_bytes());
        for _ in 0..10_000 {
            f.feed(b"<presence/>");
        }
        assert!(f.buffered() <= 4096 + FEED_SLACK);
        let e = f.next_event().expect_err("refused");
        assert_eq!(
            e,
            FramerError::BufferFull {
                limit: 4096 + FEED_SLACK
            }
        );
        assert_eq!(e.condition(), StreamCondition::PolicyViolation);
    }

    #[test]
    fn header_size_limit() {
        let long = format!(
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
            "a".repeat(5000)
        );
        assert_eq!(error_of(long), FramerError::HeaderTooBig { limit: 4096 });
        assert_eq!(
            error_of(" ".repeat(5000)),
            FramerError::HeaderTooBig { limit: 4096 }
        );
        let limits = Limits {
            max_header_bytes: HEADER.len(),
            ..Limits::default()
        };
        let (events, err) = run_with(&limits, format!("{HEADER}<presence/>").as_bytes());
        assert_eq!((events.len(), err), (2, None));
        let (_, err) = run_with(
            &limits,
            format!("{HEADER} ").replacen("?> <", "?>  <", 1).as_bytes(),
        );
        assert_eq!(err, None);
        let no_decl = &HEADER[HEADER.find("?>").expect("decl") + 2..];
        let (_, err) = run_with(&limits, format!(" {no_decl}").as_bytes());
        assert_eq!(err, None, "exactly at the limit");
        let (_, err) = run_with(
            &limits,
            format!("{}{no_decl}", " ".repeat(HEADER.len() - no_decl.len() + 1)).as_bytes(),
        );
        assert_eq!(
            err.map(|e| e.condition()),
            Some(StreamCondition::PolicyViolation)
        );
    }

    #[test]
    fn depth_limit() {
        fn nested(depth: usize) -> String {
            let mut s = String::new();
            for i in 0..depth {
                s.push_str(&format!("<e{i}>"));
            }
            for i in (0..depth).rev() {
                s.push_str(&format!("</e{i}>"));
            }
            s
        }
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let ok = format!("{HEADER}{}<a><b><c/></b></a>", nested(3));
        assert_eq!(run_with(&limits, ok.as_bytes()).1, None);
        for bad in [nested(4), "<a><b><c><d/></c></b></a>".to_string()] {
            let (_, err) = run_with(&limits, format!("{HEADER}{bad}").as_bytes());
            assert_eq!(err, Some(FramerError::TooDeep { limit: 3 }), "{bad}");
        }
        assert_eq!(stanzas(format!("{HEADER}{}", nested(32))).len(), 1);
        assert_eq!(stanza_error(nested(33)), FramerError::TooDeep { limit: 32 });
        assert_eq!(
            stanza_error(nested(33)).condition(),
            StreamCondition::PolicyViolation
        );
    }

    #[test]
    fn attribute_limit() {
        let attrs = |n: usize| (0..n).map(|i| format!(" a{i}='{i}'")).collect::<String>();
        let ok = stanza(&format!("<message{}/>", attrs(64)));
        assert_eq!(ok.attrs().count(), 64);
        let e = stanza_error(format!("<message{}/>", attrs(65)));
        assert_eq!(e, FramerError::TooManyAttributes { limit: 64 });
        assert_eq!(e.condition(), StreamCondition::PolicyViolation);
        let e = error_of(format!(
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'{}>",
            attrs(64)
        ));
        assert_eq!(e, FramerError::TooManyAttributes { limit: 64 });
    }

    #[test]
    fn line_ends_and_attribute_values_are_normalized() {
        let m = stanza("<message a='x\ty\r\nz\rw\n&#10;&#13;&#9;v'>a\r\nb\rc\nd<![CDATA[e\r\nf]]>&#13;\r</message>");
        assert_eq!(m.attr("a"), Some("x y z w \n\r\tv"));
        assert_eq!(m.text(), "a\nb\nc\nde\nf\r\n");
    }

    #[test]
    fn realistic_stream_is_the_same_whatever_the_split() {
        let input = "<?xml version='1.0' encoding='UTF-8'?>\n\
             <stream:stream to='example.com' xmlns='jabber:client' \
             xmlns:stream=\"http://etherx.jabber.org/streams\" version='1.0' xml:lang='fr'>\n\
             <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>\n\
             <iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>balcony 🏰</resource></bind></iq> \
             <presence><show>chat</show><status>Ça va? 日本語</status>\
             <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.org' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>\r\n\
             <message to='romeo@example.net/orchard' type=\"chat\" id='ktx72v49' xml:lang='en'>\
             <body>héllo 🐦 &lt;3 &amp; &#x1F426;<![CDATA[ <raw> & ]]></body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/>\
             <x:delay xmlns:x='urn:xmpp:delay' x:from='ж' stamp='2002-09-10T23:08:25Z'/></message>\t\
             <r xmlns='urn:xmpp:sm:3'/><a xmlns='urn:xmpp:sm:3' h='1'/>\
             <iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>\n\
             </stream:stream>";
        let (events, err) = run(input);
        assert_eq!(err, None);
        assert_eq!(events.len(), 9);
        assert!(
            matches!(&events[0], Event::StreamOpen { attrs, .. } if attrs.contains(&("xml:lang".into(), "fr".into())))
        );
        let Event::Stanza(msg) = &events[4] else {
            panic!("{:?}", events[4])
        };
        assert!(msg.is("message", ns::CLIENT));
        assert_eq!(
            msg.get_child("body", ns::CLIENT)
                .map(Element::text)
                .as_deref(),
            Some("héllo 🐦 <3 & 🐦 <raw> & ")
        );
        let delay = msg.get_child("delay", ns::DELAY).expect("delay");
        assert_eq!(
            attrs_of(delay),
            [
                ("x:from", "ж"),
                ("stamp", "2002-09-10T23:08:25Z"),
                ("xmlns:x", ns::DELAY)
            ]
        );
        assert_eq!(events[8], Event::StreamClose);
    }

    #[test]
    fn dead_after_an_error() {
        let mut f = Framer::new(Limits::default());
        f.feed(HEADER.as_bytes());
        f.feed(b"<presence/><!---->");
        assert!(matches!(f.next_event(), Ok(Some(Event::StreamOpen { .. }))));
        assert!(matches!(f.next_event(), Ok(Some(Event::Stanza(_)))));
        let e = f.next_event().expect_err("comment");
        assert_eq!(e, FramerError::RestrictedXml("comment"));
        f.feed(b"<presence/>");
        assert_eq!(f.next_event(), Err(e));
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn conditions() {
        let all = [
            (
                FramerError::NotWellFormed("x"),
                StreamCondition::NotWellFormed,
            ),
            (
                FramerError::UnboundPrefix("p".into()),
                StreamCondition::NotWellFormed,
            ),
            (
                FramerError::RestrictedXml("comment"),
                StreamCondition::RestrictedXml,
            ),
            (
                FramerError::UnsupportedEncoding("x"),
                StreamCondition::UnsupportedEncoding,
            ),
            (FramerError::BadFormat("x"), StreamCondition::BadFormat),
            (
                FramerError::StanzaTooBig { limit: 1 },
                StreamCondition::PolicyViolation,
            ),
            (
                FramerError::TooDeep { limit: 1 },
                StreamCondition::PolicyViolation,
            ),
            (
                FramerError::HeaderTooBig { limit: 1 },
                StreamCondition::PolicyViolation,
            ),
            (
                FramerError::TooManyAttributes { limit: 1 },
                StreamCondition::PolicyViolation,
            ),
            (
                FramerError::BufferFull { limit: 1 },
                StreamCondition::PolicyViolation,
            ),
        ];
        for (e, condition) in all {
            assert_eq!(e.condition(), condition, "{e}");
        }
    }

    /// xorshift64: deterministic, dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn fuzz_mutated_streams_never_panic_and_ignore_splits() {
        let seeds = [
            format!("{HEADER}<message to='a@b' id='1'><body>héllo 🐦 &amp; &#65;</body></message></stream:stream>"),
            format!("{HEADER}<iq type='get'><query xmlns='jabber:iq:roster'><item jid='x'/></query></iq> <r xmlns='urn:xmpp:sm:3'/>"),
            format!("<stream:stream xmlns='jabber:client' xmlns:stream='{}'><foo:x xmlns:foo='urn:a' foo:y='1' xml:lang='en'><![CDATA[a]]b]]></foo:x>", ns::STREAM),
            format!("{HEADER}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>\n</stream:stream>"),
            format!("{HEADER}<a><b><c><d><e/></d></c></b></a><presence a='1' b=\"2\"/>"),
        ];
        let tokens: &[&[u8]] = &[
            b"<",
            b">",
            b"/",
            b"/>",
            b"</",
            b"&",
            b";",
            b"'",
            b"\"",
            b"=",
            b" ",
            b"!",
            b"?",
            b"]]>",
            b"<![CDATA[",
            b"<!--",
            b"<?x?>",
            b"<!DOCTYPE",
            b"&#x",
            b"&#",
            b"&amp;",
            b"&lt",
            b"xmlns:p='u'",
            b"xmlns=''",
            b"p:",
            b"\xC3",
            b"\xA9",
            b"\xF0\x9F",
            b"\xFF",
            b"\0",
            b"\x0B",
            b"</stream:stream>",
            b"<a>",
            b"</a>",
            b"\r\n",
            b"\xEF\xBF\xBE",
            b"<?xml version='1.0'?>",
            b"xml:",
            b"x='1'",
        ];
        let tight = Limits {
            max_stanza_bytes: 120,
            max_depth: 3,
            max_header_bytes: 200,
            max_attrs: 3,
        };
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut errors = 0;
        for case in 0..4000 {
            let mut input = seeds[rng.below(seeds.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(input.len() + 1);
                match rng.below(6) {
                    0 if at < input.len() => input[at] = rng.next() as u8,
                    1 => {
                        let t = tokens[rng.below(tokens.len())];
                        input.splice(at..at, t.iter().copied());
                    }
                    2 => {
                        let end = (at + 1 + rng.below(8)).min(input.len());
                        input.drain(at..end);
                    }
                    3 => {
                        let end = (at + 1 + rng.below(16)).min(input.len());
                        let copy = input[at..end].to_vec();
                        let to = rng.below(input.len() + 1);
                        input.splice(to..to, copy);
                    }
                    4 => input.truncate(at),
                    _ => {
                        let t = tokens[rng.below(tokens.len())];
                        input.extend_from_slice(t);
                    }
                }
            }
            let limits = if case % 3 == 0 {
                tight.clone()
            } else {
                Limits::default()
            };
            let whole = run_chunks(&limits, [input.as_slice()]);
            errors += usize::from(whole.1.is_some());
            let mut chunks = Vec::new();
            let mut rest = input.as_slice();
            while !rest.is_empty() {
                let (a, b) = rest.split_at((1 + rng.below(17)).min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            let split = run_chunks(&limits, chunks);
            assert_eq!(
                split,
                whole,
                "case {case}: {:?}",
                String::from_utf8_lossy(&input)
            );
            let bytewise = run_chunks(&limits, input.chunks(1));
            assert_eq!(
                bytewise,
                whole,
                "case {case}: {:?}",
                String::from_utf8_lossy(&input)
            );
            if let Some(e) = &whole.1 {
                assert!(!e.condition().as_str().is_empty());
            }
        }
        // The mutations do reach the error paths, and not only them.
        assert!(errors > 1000 && errors < 4000, "{errors}");
    }
}
