//! The byte-level lexer: a state machine over the framer's buffer,
//! resumable at any byte, that finds where the XML declaration, the stream
//! header, each top-level element and `</stream:stream>` end, without
//! rescanning a byte. It refuses, at the first offending byte:
//!
//! * restricted XML (RFC 6120 §11.1): comments, processing instructions,
//!   DTDs, entity references other than the five predefined ones;
//! * lexical errors of XML 1.0: characters outside §2.2 that one byte can
//!   tell, `]]>` in character data (§2.4), malformed CDATA sections (§2.7),
//!   tags and attributes (§3.1), end tags that do not match their start tag
//!   (§3, WFC: Element Type Match), malformed references (§4.1);
//! * character data at stream level and a self-closing stream header
//!   (bad-format, RFC 6120 §4.9.3.1);
//! * input over the [`Limits`](super::Limits) (policy-violation, §4.9.3.14).
//!
//! Everything it lets through is checked again, on the complete slice, by
//! the header parser and the tree builder.
//!
//! The lexer is one state machine: the [`Lex`] states, the dispatch loop in
//! `lex_until_found` and one small handler per state (or group of states),
//! each deciding the byte at `pos` and moving `pos` past what it decided.
//! At about 700 lines this file is over the framer's 600-line target on
//! purpose: the states, the loop and the handlers are read together, and
//! everything that is not the state machine (names, header, tree) is
//! already in the other files.

use super::chars::{is_xml_char, name_hash, BAD_CHAR};
use super::header::check_decl;
use super::{nwf, Framer, FramerError, Phase};

/// Where to go back to after a character or entity reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefRet {
    Text,
    Attr(u8),
}

/// Lexer state: what the byte at `pos` is expected to be part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lex {
    /// Character data (or, at stream level and in the prolog, whitespace).
    Text,
    /// After `<`.
    Lt,
    /// In the name of a start tag.
    StartName,
    /// After whitespace in a start tag.
    TagSpace,
    /// Right after an attribute value's closing quote.
    AfterValue,
    AttrName,
    /// Whitespace between an attribute name and `=`.
    AttrNameSpace,
    /// After `=`, before the opening quote.
    AttrEq,
    /// Inside an attribute value delimited by this quote.
    AttrValue(u8),
    /// After `/` in a start tag.
    EmptySlash,
    /// After `</`.
    EndStart,
    EndName,
    /// Whitespace after the name of an end tag.
    EndSpace,
    /// After `&`.
    RefStart,
    /// In the name of an entity reference.
    RefName,
    /// After `&#`.
    RefHash,
    /// After `&#x`.
    RefHexStart,
    RefDec,
    RefHex,
    /// After `<!`.
    Bang,
    /// Matching `[CDATA[`; the number of bytes of it matched so far.
    CdataOpen(u8),
    /// Inside a CDATA section; the number of consecutive `]` just seen (max 2).
    Cdata(u8),
    /// Inside the XML declaration; whether the last byte was `?`.
    Decl(bool),
}

/// A complete unit found by the lexer; `pos` is just past its last byte.
pub(super) enum Found {
    /// The stream header, from the `<` at this offset to `pos`.
    Header(usize),
    /// A stanza, from `start` to `pos`.
    Stanza,
    /// `</stream:stream>`.
    Close,
}

/// What a state's handler returns: the unit it completed, if any. A handler
/// moves `pos` past the bytes it has decided on: usually one (`consume`), a
/// whole run of ordinary bytes, or the `>` that ends a tag.
type Lexed = Result<Option<Found>, FramerError>;

// Byte classes for the lexer.
pub(super) const WS: u8 = 1;
/// May appear in a name: an ASCII NameChar, or any byte of a non-ASCII
/// character (names are fully checked once the element is complete).
const NAME: u8 = 1 << 1;
/// May start a name.
const NAME_START: u8 = 1 << 2;
/// Ordinary character data inside a stanza.
const TEXT: u8 = 1 << 3;
/// Ordinary attribute value content.
const ATTR: u8 = 1 << 4;
/// Ordinary CDATA content.
const CDATA: u8 = 1 << 5;

const fn classify(b: u8) -> u8 {
    let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    // XML 1.0 §2.2 Char, as far as one byte can tell: the C0 controls other
    // than tab, LF and CR are never allowed. U+FFFE, U+FFFF and malformed
    // UTF-8 are caught on the complete slice.
    let allowed = ws || b >= 0x20;
    let mut c = 0;
    if ws {
        c |= WS;
    }
    if b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80 {
        c |= NAME | NAME_START;
    }
    if b.is_ascii_digit() || b == b'-' || b == b'.' {
        c |= NAME;
    }
    if allowed && !matches!(b, b'<' | b'&' | b']' | b'>') {
        c |= TEXT;
    }
    if allowed && !matches!(b, b'<' | b'&' | b'\'' | b'"') {
        c |= ATTR;
    }
    if allowed && !matches!(b, b']' | b'>') {
        c |= CDATA;
    }
    c
}

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = classify(i as u8);
        i += 1;
    }
    t
};

#[inline]
pub(super) fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

impl Framer {
    /// End of the region the current unit may occupy.
    fn window_end(&self) -> usize {
        match self.phase {
            Phase::Prolog => self.start.saturating_add(self.limits.max_header_bytes),
            Phase::Stream => self.start.saturating_add(self.limits.max_stanza_bytes),
            Phase::Closed => usize::MAX,
        }
    }

    fn limit_error(&self) -> FramerError {
        match self.phase {
            Phase::Prolog => FramerError::HeaderTooBig {
                limit: self.limits.max_header_bytes,
            },
            _ => FramerError::StanzaTooBig {
                limit: self.limits.max_stanza_bytes,
            },
        }
    }

    /// Run the lexer from `pos` until a unit is complete (`pos` is then just
    /// past it), the input runs out, or an error: one call per byte (or run
    /// of ordinary bytes) to the handler of the current state.
    pub(super) fn lex_until_found(&mut self) -> Lexed {
        loop {
            let len = self.buf.len();
            if self.pos >= len {
                return Ok(None);
            }
            let window = self.window_end();
            if self.pos >= window {
                // RFC 6120 §4.9.3.14: a stanza that "exceeds a configured size
                // limit" is a policy violation. Decided at the first byte past
                // the limit, so no more than the limit is ever held.
                return Err(self.limit_error());
            }
            // Where a run of ordinary bytes has to stop.
            let stop = len.min(window);
            let b = self.buf[self.pos];
            let c = class(b);
            let found = match self.lex {
                Lex::Text if self.phase == Phase::Stream && self.depth > 0 => {
                    self.lex_content(b, c, stop)?
                }
                Lex::Text => self.lex_between_units(b, c)?,
                Lex::Lt => self.lex_lt(b, c)?,
                Lex::StartName => self.lex_start_name(b, c)?,
                Lex::TagSpace | Lex::AfterValue => self.lex_in_start_tag(b, c)?,
                Lex::AttrName => self.lex_attr_name(b, c)?,
                Lex::AttrNameSpace => self.lex_attr_name_space(b, c)?,
                Lex::AttrEq => self.lex_attr_eq(b, c)?,
                Lex::AttrValue(quote) => self.lex_attr_value(quote, b, c, stop)?,
                Lex::EmptySlash => self.lex_empty_slash(b)?,
                Lex::EndStart => self.lex_end_start(c)?,
                Lex::EndName => self.lex_end_name(b, c)?,
                Lex::EndSpace => self.lex_end_space(b, c)?,
                Lex::RefStart => self.lex_ref_start(b, c)?,
                Lex::RefName => self.lex_ref_name(b, c)?,
                Lex::RefHash => self.lex_ref_hash(b)?,
                Lex::RefHexStart | Lex::RefHex | Lex::RefDec => self.lex_char_ref_digit(b)?,
                Lex::Bang => self.lex_bang(b)?,
                Lex::CdataOpen(matched) => self.lex_cdata_open(matched, b)?,
                Lex::Cdata(brackets) => self.lex_cdata(brackets, b, c, stop)?,
                Lex::Decl(question) => self.lex_decl(question, b, c)?,
            };
            if let Some(found) = found {
                return Ok(Some(found));
            }
        }
    }

    /// The byte at `pos` is decided (and the state set for the next one):
    /// move past it.
    #[inline]
    fn consume(&mut self) -> Lexed {
        self.pos += 1;
        Ok(None)
    }

    /// End of the run of bytes of class `bits` that starts at `pos` (whose
    /// byte is known to be one), not looking at or past `stop`.
    #[inline]
    fn run_end(&self, bits: u8, stop: usize) -> usize {
        let mut p = self.pos + 1;
        while p < stop && class(self.buf[p]) & bits != 0 {
            p += 1;
        }
        p
    }

    /// `Text` inside a stanza: character data up to the next markup.
    #[inline]
    fn lex_content(&mut self, b: u8, c: u8, stop: usize) -> Lexed {
        if c & TEXT != 0 {
            self.pos = self.run_end(TEXT, stop);
            self.brackets = 0;
            return Ok(None);
        }
        match b {
            b'<' => {
                self.brackets = 0;
                self.lex = Lex::Lt;
            }
            b'&' => {
                self.brackets = 0;
                self.ref_ret = RefRet::Text;
                self.lex = Lex::RefStart;
            }
            b']' => self.brackets = self.brackets.saturating_add(1),
            b'>' => {
                if self.brackets >= 2 {
                    return Err(nwf("`]]>` in character data"));
                }
                self.brackets = 0;
            }
            _ => return Err(nwf(BAD_CHAR)),
        }
        self.consume()
    }

    /// `Text` outside any element: in the prolog, at stream level between
    /// stanzas, or after `</stream:stream>`.
    fn lex_between_units(&mut self, b: u8, c: u8) -> Lexed {
        match self.phase {
            Phase::Stream => {
                if c & WS != 0 {
                    // A whitespace keepalive between stanzas: consumed
                    // at once, never buffered, no event.
                    self.start = self.pos + 1;
                } else if b == b'<' {
                    self.mark = self.pos;
                    self.lex = Lex::Lt;
                } else {
                    // Character data directly inside <stream:stream> is
                    // well-formed XML, but XMPP cannot process it.
                    return Err(FramerError::BadFormat("character data at stream level"));
                }
            }
            Phase::Prolog => {
                if b == b'<' {
                    self.mark = self.pos;
                    self.lex = Lex::Lt;
                } else if c & WS == 0 {
                    // RFC 6120 §11.6 (paraphrased): U+FEFF received
                    // anywhere in a stream, even as its first
                    // character, is a zero width no-break space, never
                    // a byte order mark. So a "BOM" is content before
                    // the root element.
                    return Err(nwf("content before the stream header"));
                }
            }
            Phase::Closed => {
                if c & WS == 0 {
                    return Err(nwf("content after the end of the stream"));
                }
                self.start = self.pos + 1;
            }
        }
        self.consume()
    }

    /// After `<`.
    fn lex_lt(&mut self, b: u8, c: u8) -> Lexed {
        match b {
            b'/' => {
                if self.phase == Phase::Prolog {
                    return Err(nwf("end tag before the stream header"));
                }
                self.lex = Lex::EndStart;
            }
            b'!' => self.lex = Lex::Bang,
            b'?' => {
                // RFC 6120 §11.1 (paraphrased): processing
                // instructions are not allowed in XMPP; receiving one
                // closes the stream with, preferably, restricted-xml.
                // The XML declaration is not a PI, but XML 1.0 §2.8
                // only allows it as the very first bytes of the
                // document, i.e. of the stream (RFC 6120 §11.5).
                if self.phase == Phase::Prolog && self.mark == self.start {
                    self.lex = Lex::Decl(false);
                } else {
                    return Err(FramerError::RestrictedXml("processing instruction"));
                }
            }
            _ if c & NAME_START != 0 => {
                if self.phase == Phase::Stream && self.depth >= self.limits.max_depth {
                    return Err(FramerError::TooDeep {
                        limit: self.limits.max_depth,
                    });
                }
                self.attrs = 0;
                self.start_name = (self.pos, self.pos);
                self.lex = Lex::StartName;
            }
            _ => return Err(nwf("invalid character after `<`")),
        }
        self.consume()
    }

    /// In the name of a start tag.
    fn lex_start_name(&mut self, b: u8, c: u8) -> Lexed {
        if c & NAME == 0 {
            self.start_name.1 = self.pos;
            match b {
                b'>' => return Ok(self.start_tag_end()),
                b'/' => self.lex = Lex::EmptySlash,
                _ if c & WS != 0 => self.lex = Lex::TagSpace,
                _ => return Err(nwf("invalid character in element name")),
            }
        }
        self.consume()
    }

    /// `TagSpace` or `AfterValue`: in a start tag, between attributes.
    fn lex_in_start_tag(&mut self, b: u8, c: u8) -> Lexed {
        match b {
            b'>' => return Ok(self.start_tag_end()),
            b'/' => self.lex = Lex::EmptySlash,
            _ if c & WS != 0 => self.lex = Lex::TagSpace,
            _ if c & NAME_START != 0 && self.lex == Lex::TagSpace => {
                self.attrs += 1;
                if self.attrs > self.limits.max_attrs {
                    return Err(FramerError::TooManyAttributes {
                        limit: self.limits.max_attrs,
                    });
                }
                self.lex = Lex::AttrName;
            }
            _ if self.lex == Lex::AfterValue => {
                return Err(nwf("attributes must be separated by whitespace"))
            }
            _ => return Err(nwf("invalid character in start tag")),
        }
        self.consume()
    }

    /// In an attribute name.
    fn lex_attr_name(&mut self, b: u8, c: u8) -> Lexed {
        if c & NAME == 0 {
            match b {
                b'=' => self.lex = Lex::AttrEq,
                _ if c & WS != 0 => self.lex = Lex::AttrNameSpace,
                _ => return Err(nwf("invalid character in attribute name")),
            }
        }
        self.consume()
    }

    /// Whitespace between an attribute name and `=`.
    fn lex_attr_name_space(&mut self, b: u8, c: u8) -> Lexed {
        match b {
            b'=' => self.lex = Lex::AttrEq,
            _ if c & WS != 0 => {}
            _ => return Err(nwf("attribute without `=`")),
        }
        self.consume()
    }

    /// After `=`, before the opening quote.
    fn lex_attr_eq(&mut self, b: u8, c: u8) -> Lexed {
        match b {
            b'"' | b'\'' => self.lex = Lex::AttrValue(b),
            _ if c & WS != 0 => {}
            _ => return Err(nwf("attribute value not quoted")),
        }
        self.consume()
    }

    /// Inside an attribute value delimited by `quote`.
    #[inline]
    fn lex_attr_value(&mut self, quote: u8, b: u8, c: u8, stop: usize) -> Lexed {
        if c & ATTR != 0 {
            self.pos = self.run_end(ATTR, stop);
            return Ok(None);
        }
        match b {
            _ if b == quote => self.lex = Lex::AfterValue,
            b'"' | b'\'' => {}
            b'&' => {
                self.ref_ret = RefRet::Attr(quote);
                self.lex = Lex::RefStart;
            }
            b'<' => return Err(nwf("`<` in attribute value")),
            _ => return Err(nwf(BAD_CHAR)),
        }
        self.consume()
    }

    /// After `/` in a start tag.
    fn lex_empty_slash(&mut self, b: u8) -> Lexed {
        if b != b'>' {
            return Err(nwf("`/` not followed by `>` in start tag"));
        }
        self.pos += 1;
        self.lex = Lex::Text;
        match self.phase {
            Phase::Prolog => Err(FramerError::BadFormat("self-closing stream header")),
            _ if self.depth == 0 => Ok(Some(Found::Stanza)),
            _ => {
                self.brackets = 0;
                Ok(None)
            }
        }
    }

    /// After `</`.
    fn lex_end_start(&mut self, c: u8) -> Lexed {
        if c & NAME_START == 0 {
            return Err(nwf("invalid character in end tag"));
        }
        self.end_name = (self.pos, self.pos);
        self.lex = Lex::EndName;
        self.consume()
    }

    /// In the name of an end tag.
    fn lex_end_name(&mut self, b: u8, c: u8) -> Lexed {
        if c & NAME == 0 {
            self.end_name.1 = self.pos;
            match b {
                b'>' => return self.end_tag_end(),
                _ if c & WS != 0 => self.lex = Lex::EndSpace,
                _ => return Err(nwf("invalid character in end tag")),
            }
        }
        self.consume()
    }

    /// Whitespace after the name of an end tag.
    fn lex_end_space(&mut self, b: u8, c: u8) -> Lexed {
        match b {
            b'>' => return self.end_tag_end(),
            _ if c & WS != 0 => {}
            _ => return Err(nwf("invalid character in end tag")),
        }
        self.consume()
    }

    /// After `&`.
    fn lex_ref_start(&mut self, b: u8, c: u8) -> Lexed {
        match b {
            b'#' => self.lex = Lex::RefHash,
            _ if c & NAME_START != 0 => {
                self.ref_name[0] = b;
                self.ref_len = 1;
                self.lex = Lex::RefName;
            }
            _ => return Err(nwf("`&` not starting a reference")),
        }
        self.consume()
    }

    /// In the name of an entity reference.
    fn lex_ref_name(&mut self, b: u8, c: u8) -> Lexed {
        if b == b';' {
            let name = self.ref_name.get(..self.ref_len).unwrap_or(&[]);
            if !matches!(name, b"lt" | b"gt" | b"amp" | b"quot" | b"apos") {
                // RFC 6120 §11.1 (paraphrased): no internal or
                // external entity references except the five
                // predefined entities. Character references are
                // not entity references and are allowed.
                return Err(FramerError::RestrictedXml("entity reference"));
            }
            self.end_reference();
        } else if c & NAME != 0 {
            if let Some(slot) = self.ref_name.get_mut(self.ref_len) {
                *slot = b;
            }
            self.ref_len = self.ref_len.saturating_add(1);
        } else {
            return Err(nwf("unterminated entity reference"));
        }
        self.consume()
    }

    /// After `&#`.
    fn lex_ref_hash(&mut self, b: u8) -> Lexed {
        match b {
            b'x' => self.lex = Lex::RefHexStart,
            b'0'..=b'9' => {
                self.ref_val = u32::from(b - b'0');
                self.lex = Lex::RefDec;
            }
            _ => return Err(nwf("malformed character reference")),
        }
        self.consume()
    }

    /// `RefHexStart`, `RefHex` or `RefDec`: the digits of a character
    /// reference.
    fn lex_char_ref_digit(&mut self, b: u8) -> Lexed {
        let digit = if self.lex == Lex::RefDec {
            (b as char).to_digit(10)
        } else {
            (b as char).to_digit(16)
        };
        match digit {
            Some(d) => {
                let base = if self.lex == Lex::RefDec { 10 } else { 16 };
                let v = if self.lex == Lex::RefHexStart {
                    0
                } else {
                    self.ref_val
                };
                self.ref_val = v.saturating_mul(base).saturating_add(d).min(0x11_0000);
                if self.lex == Lex::RefHexStart {
                    self.lex = Lex::RefHex;
                }
            }
            None if b == b';' && self.lex != Lex::RefHexStart => {
                // Character references are allowed, but only to
                // characters that XML 1.0 §2.2 allows.
                if !is_xml_char(self.ref_val) {
                    return Err(nwf(
                        "character reference to a character not allowed in XML 1.0",
                    ));
                }
                self.end_reference();
            }
            None => return Err(nwf("malformed character reference")),
        }
        self.consume()
    }

    /// After `<!`.
    fn lex_bang(&mut self, b: u8) -> Lexed {
        match b {
            b'[' => match self.phase {
                Phase::Stream if self.depth > 0 => self.lex = Lex::CdataOpen(1),
                Phase::Stream => {
                    return Err(FramerError::BadFormat("character data at stream level"))
                }
                _ => return Err(nwf("CDATA section outside an element")),
            },
            // RFC 6120 §11.1 (paraphrased): no comments.
            b'-' => return Err(FramerError::RestrictedXml("comment")),
            // <!DOCTYPE, <!ENTITY, <!ELEMENT, <!ATTLIST, <!NOTATION.
            // RFC 6120 §11.1 (paraphrased): no internal or external
            // DTD subsets. Rejected here, at the third byte, so
            // nothing of a DTD is ever buffered or expanded.
            b'A'..=b'Z' => return Err(FramerError::RestrictedXml("document type declaration")),
            _ => return Err(nwf("invalid markup after `<!`")),
        }
        self.consume()
    }

    /// Matching `[CDATA[`, `matched` bytes of it so far.
    fn lex_cdata_open(&mut self, matched: u8, b: u8) -> Lexed {
        const OPEN: &[u8] = b"[CDATA[";
        let i = usize::from(matched);
        if OPEN.get(i) != Some(&b) {
            return Err(nwf("invalid markup after `<!`"));
        }
        self.lex = if i + 1 == OPEN.len() {
            Lex::Cdata(0)
        } else {
            Lex::CdataOpen(matched + 1)
        };
        self.consume()
    }

    /// Inside a CDATA section, after `brackets` consecutive `]`.
    #[inline]
    fn lex_cdata(&mut self, brackets: u8, b: u8, c: u8, stop: usize) -> Lexed {
        if c & CDATA != 0 {
            self.pos = self.run_end(CDATA, stop);
            self.lex = Lex::Cdata(0);
            return Ok(None);
        }
        match b {
            b']' => self.lex = Lex::Cdata(brackets.saturating_add(1).min(2)),
            b'>' if brackets == 2 => {
                self.brackets = 0;
                self.lex = Lex::Text;
            }
            b'>' => self.lex = Lex::Cdata(0),
            _ => return Err(nwf(BAD_CHAR)),
        }
        self.consume()
    }

    /// Inside the XML declaration; `question` if the last byte was `?`.
    fn lex_decl(&mut self, question: bool, b: u8, c: u8) -> Lexed {
        match b {
            b'>' if question => {
                let decl = self
                    .buf
                    .get(self.mark..=self.pos)
                    .ok_or(nwf("internal: declaration bounds"))?;
                check_decl(decl)?;
                self.lex = Lex::Text;
            }
            b'?' => self.lex = Lex::Decl(true),
            _ if b < 0x20 && c & WS == 0 => return Err(nwf(BAD_CHAR)),
            _ => self.lex = Lex::Decl(false),
        }
        self.consume()
    }

    /// The `>` of a start tag is at `pos`. Returns the header if this was it;
    /// otherwise the element is now open.
    fn start_tag_end(&mut self) -> Option<Found> {
        self.pos += 1;
        self.lex = Lex::Text;
        if self.phase == Phase::Prolog {
            self.phase = Phase::Stream;
            self.depth = 0;
            return Some(Found::Header(self.mark));
        }
        self.depth += 1;
        let (a, z) = self.start_name;
        let h = name_hash(self.buf.get(a..z).unwrap_or(&[]));
        self.open.push(h);
        self.brackets = 0;
        None
    }

    /// The `>` of an end tag is at `pos`. Returns what it completed, if
    /// anything (the stanza, or the stream).
    fn end_tag_end(&mut self) -> Lexed {
        self.pos += 1;
        self.lex = Lex::Text;
        if self.depth == 0 {
            // RFC 6120 §4.4: the stream is closed with `</stream:stream>`.
            // End tags must echo the start tag literally (XML 1.0 §3, WFC:
            // Element Type Match), prefix included.
            let (a, z) = self.end_name;
            let name = self.buf.get(a..z).unwrap_or(&[]);
            let expected = self.header.as_ref().map(|h| h.qname.as_slice());
            if Some(name) != expected {
                return Err(nwf("end tag does not match the stream header"));
            }
            self.phase = Phase::Closed;
            return Ok(Some(Found::Close));
        }
        let (a, z) = self.end_name;
        let h = name_hash(self.buf.get(a..z).unwrap_or(&[]));
        if self.open.pop() != Some(h) {
            return Err(nwf("end tag does not match its start tag"));
        }
        self.depth -= 1;
        self.brackets = 0;
        Ok((self.depth == 0).then_some(Found::Stanza))
    }

    fn end_reference(&mut self) {
        self.lex = match self.ref_ret {
            RefRet::Text => Lex::Text,
            RefRet::Attr(q) => Lex::AttrValue(q),
        };
    }
}
