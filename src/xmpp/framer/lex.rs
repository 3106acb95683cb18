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
    /// past it), the input runs out, or an error.
    pub(super) fn lex_until_found(&mut self) -> Result<Option<Found>, FramerError> {
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
            let b = self.buf[self.pos];
            let c = class(b);
            match self.lex {
                Lex::Text => match self.phase {
                    Phase::Stream if self.depth > 0 => {
                        if c & TEXT != 0 {
                            let stop = len.min(window);
                            let mut p = self.pos + 1;
                            while p < stop && class(self.buf[p]) & TEXT != 0 {
                                p += 1;
                            }
                            self.pos = p;
                            self.brackets = 0;
                            continue;
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
                    }
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
                },
                Lex::Lt => match b {
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
                },
                Lex::StartName => {
                    if c & NAME == 0 {
                        self.start_name.1 = self.pos;
                        match b {
                            b'>' => {
                                if let Some(found) = self.start_tag_end() {
                                    return Ok(Some(found));
                                }
                                continue;
                            }
                            b'/' => self.lex = Lex::EmptySlash,
                            _ if c & WS != 0 => self.lex = Lex::TagSpace,
                            _ => return Err(nwf("invalid character in element name")),
                        }
                    }
                }
                Lex::TagSpace | Lex::AfterValue => match b {
                    b'>' => {
                        if let Some(found) = self.start_tag_end() {
                            return Ok(Some(found));
                        }
                        continue;
                    }
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
                },
                Lex::AttrName => {
                    if c & NAME == 0 {
                        match b {
                            b'=' => self.lex = Lex::AttrEq,
                            _ if c & WS != 0 => self.lex = Lex::AttrNameSpace,
                            _ => return Err(nwf("invalid character in attribute name")),
                        }
                    }
                }
                Lex::AttrNameSpace => match b {
                    b'=' => self.lex = Lex::AttrEq,
                    _ if c & WS != 0 => {}
                    _ => return Err(nwf("attribute without `=`")),
                },
                Lex::AttrEq => match b {
                    b'"' | b'\'' => self.lex = Lex::AttrValue(b),
                    _ if c & WS != 0 => {}
                    _ => return Err(nwf("attribute value not quoted")),
                },
                Lex::AttrValue(quote) => {
                    if c & ATTR != 0 {
                        let stop = len.min(window);
                        let mut p = self.pos + 1;
                        while p < stop && class(self.buf[p]) & ATTR != 0 {
                            p += 1;
                        }
                        self.pos = p;
                        continue;
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
                }
                Lex::EmptySlash => {
                    if b != b'>' {
                        return Err(nwf("`/` not followed by `>` in start tag"));
                    }
                    self.pos += 1;
                    self.lex = Lex::Text;
                    match self.phase {
                        Phase::Prolog => {
                            return Err(FramerError::BadFormat("self-closing stream header"))
                        }
                        _ if self.depth == 0 => return Ok(Some(Found::Stanza)),
                        _ => {
                            self.brackets = 0;
                            continue;
                        }
                    }
                }
                Lex::EndStart => {
                    if c & NAME_START == 0 {
                        return Err(nwf("invalid character in end tag"));
                    }
                    self.end_name = (self.pos, self.pos);
                    self.lex = Lex::EndName;
                }
                Lex::EndName => {
                    if c & NAME == 0 {
                        self.end_name.1 = self.pos;
                        match b {
                            b'>' => {
                                if let Some(found) = self.end_tag_end()? {
                                    return Ok(Some(found));
                                }
                                continue;
                            }
                            _ if c & WS != 0 => self.lex = Lex::EndSpace,
                            _ => return Err(nwf("invalid character in end tag")),
                        }
                    }
                }
                Lex::EndSpace => match b {
                    b'>' => {
                        if let Some(found) = self.end_tag_end()? {
                            return Ok(Some(found));
                        }
                        continue;
                    }
                    _ if c & WS != 0 => {}
                    _ => return Err(nwf("invalid character in end tag")),
                },
                Lex::RefStart => match b {
                    b'#' => self.lex = Lex::RefHash,
                    _ if c & NAME_START != 0 => {
                        self.ref_name[0] = b;
                        self.ref_len = 1;
                        self.lex = Lex::RefName;
                    }
                    _ => return Err(nwf("`&` not starting a reference")),
                },
                Lex::RefName => {
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
                }
                Lex::RefHash => match b {
                    b'x' => self.lex = Lex::RefHexStart,
                    b'0'..=b'9' => {
                        self.ref_val = u32::from(b - b'0');
                        self.lex = Lex::RefDec;
                    }
                    _ => return Err(nwf("malformed character reference")),
                },
                Lex::RefHexStart | Lex::RefHex | Lex::RefDec => {
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
                }
                Lex::Bang => match b {
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
                    b'A'..=b'Z' => {
                        return Err(FramerError::RestrictedXml("document type declaration"))
                    }
                    _ => return Err(nwf("invalid markup after `<!`")),
                },
                Lex::CdataOpen(matched) => {
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
                }
                Lex::Cdata(brackets) => {
                    if c & CDATA != 0 {
                        let stop = len.min(window);
                        let mut p = self.pos + 1;
                        while p < stop && class(self.buf[p]) & CDATA != 0 {
                            p += 1;
                        }
                        self.pos = p;
                        self.lex = Lex::Cdata(0);
                        continue;
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
                }
                Lex::Decl(question) => match b {
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
                },
            }
            self.pos += 1;
        }
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
    fn end_tag_end(&mut self) -> Result<Option<Found>, FramerError> {
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
