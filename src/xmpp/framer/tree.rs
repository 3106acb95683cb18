//! The tree builder: turns one complete top-level element of the stream (a
//! slice whose syntax and end the lexer has already checked) into an
//! [`Element`], with quick-xml's [`Reader`] borrowing the slice.
//!
//! Namespaces are resolved here (RFC 6120 §4.8; Namespaces in XML §5-6) with
//! a scope stack seeded from the stream header's declarations, which are in
//! scope for every stanza (§4.8.2); elements keep their resolved namespace,
//! never a prefix. Character data gets XML 1.0 §2.11 end-of-line handling,
//! attribute values §3.3.3 normalization, and references are replaced
//! (§4.1, §4.6). The attribute and namespace helpers (`tag_attrs`, `resolve`)
//! and the mapping of quick-xml errors (`xml_error`) are shared with the
//! stream header parser.

use std::borrow::Cow;

use quick_xml::events::attributes::Attributes;
use quick_xml::events::Event as XmlEvent;
use quick_xml::reader::Reader;

use super::chars::{check_ncname, check_ns_decl, resolve_ref, split_qname, xml_str, XML_NS};
use super::header::Header;
use super::{nwf, FramerError};
use crate::xmpp::element::Element;

/// Append character data with XML 1.0 §2.11 end-of-line handling: `\r\n` and
/// a lone `\r` become `\n`.
fn push_text(out: &mut String, s: &str) {
    if !s.as_bytes().contains(&b'\r') {
        out.push_str(s);
        return;
    }
    let mut rest = s;
    while let Some(i) = rest.find('\r') {
        out.push_str(&rest[..i]);
        out.push('\n');
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('\n') {
            rest = after;
        }
    }
    out.push_str(rest);
}

/// Unescape and normalize an attribute value (XML 1.0 §3.3.3): references
/// are replaced, literal tab, LF, CR and CR LF become one space each.
/// Borrows when there is nothing to do.
fn attr_value(raw: &str) -> Result<Cow<'_, str>, FramerError> {
    let bytes = raw.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'&' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let (mut i, mut run) = (0, 0);
    // Every index used to slice `raw` is that of an ASCII byte, hence a
    // character boundary.
    while let Some(&b) = bytes.get(i) {
        match b {
            b'&' => {
                out.push_str(&raw[run..i]);
                let semi = raw[i..]
                    .find(';')
                    .ok_or(nwf("unterminated entity reference"))?;
                out.push(resolve_ref(&raw[i + 1..i + semi])?);
                i += semi + 1;
                run = i;
            }
            b'\t' | b'\n' | b'\r' => {
                out.push_str(&raw[run..i]);
                out.push(' ');
                i += 1;
                if b == b'\r' && bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
                run = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&raw[run..]);
    Ok(Cow::Owned(out))
}

pub(super) fn xml_error(e: quick_xml::Error) -> FramerError {
    use quick_xml::errors::IllFormedError;
    match e {
        quick_xml::Error::IllFormed(IllFormedError::MismatchedEndTag { .. }) => {
            nwf("end tag does not match start tag")
        }
        quick_xml::Error::IllFormed(IllFormedError::UnmatchedEndTag(_)) => {
            nwf("end tag without start tag")
        }
        quick_xml::Error::InvalidAttr(_) => nwf("malformed or duplicate attribute"),
        quick_xml::Error::Encoding(_) => FramerError::UnsupportedEncoding("invalid UTF-8"),
        _ => nwf("malformed XML"),
    }
}

/// The attributes of a tag whose text between `<` and `>` (without a
/// trailing `/`) is `content` and whose name is `name_len` bytes long, as
/// `(name, value)` with values unescaped. Duplicates are refused.
pub(super) fn tag_attrs<'a>(
    content: &'a str,
    name_len: usize,
    out: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<(), FramerError> {
    out.clear();
    for attr in Attributes::new(content, name_len) {
        let attr = attr.map_err(|_| nwf("malformed or duplicate attribute"))?;
        let key = match attr.key.into_inner() {
            [] => return Err(nwf("malformed attribute")),
            k => std::str::from_utf8(k).map_err(|_| nwf("internal: attribute name"))?,
        };
        let raw = match attr.value {
            Cow::Borrowed(v) => {
                std::str::from_utf8(v).map_err(|_| nwf("internal: attribute value"))?
            }
            Cow::Owned(_) => return Err(nwf("internal: attribute value")),
        };
        out.push((key, attr_value(raw)?));
    }
    Ok(())
}

/// A namespace binding declared inside a stanza: prefix (`""` for the
/// default namespace) and namespace name.
type Binding<'a> = (&'a str, Cow<'a, str>);

/// Resolve `prefix` (`None`: the default namespace) against the stanza's
/// scopes, innermost first, then the stream header's declarations.
///
/// RFC 6120 §4.8.2: "The content namespace applies to all first-level child
/// elements sent over the stream unless explicitly qualified by another
/// namespace (i.e., the content namespace is the default namespace)." The
/// same holds for every prefix the header declares, `stream` included.
pub(super) fn resolve<'s>(
    scopes: &'s [Binding<'_>],
    header: &'s Header,
    prefix: Option<&str>,
) -> Result<&'s str, FramerError> {
    let key = match prefix {
        None => "",
        Some("xml") => return Ok(XML_NS),
        Some("xmlns") => return Err(nwf("the xmlns prefix cannot qualify a name")),
        Some(p) => p,
    };
    if let Some((_, uri)) = scopes.iter().rev().find(|(p, _)| *p == key) {
        return Ok(uri);
    }
    match prefix {
        None => Ok(header.default_ns.as_deref().unwrap_or("")),
        Some(p) => header
            .prefixes
            .iter()
            .rev()
            .find(|(hp, _)| hp == p)
            .map(|(_, uri)| uri.as_str())
            .ok_or_else(|| FramerError::UnboundPrefix(p.to_string())),
    }
}

/// Builds the element tree of one stanza from quick-xml events.
struct Builder<'a, 'h> {
    header: &'h Header,
    /// Elements opened and not yet closed.
    stack: Vec<Element>,
    /// Namespace declarations in scope, and where each open element's begin.
    scopes: Vec<Binding<'a>>,
    marks: Vec<usize>,
    /// Character data not yet attached to the current element.
    text: String,
    /// Scratch: the attributes of the tag being opened.
    attrs: Vec<(&'a str, Cow<'a, str>)>,
}

impl<'a, 'h> Builder<'a, 'h> {
    fn flush_text(&mut self) {
        if !self.text.is_empty() {
            if let Some(top) = self.stack.last_mut() {
                top.push_text(std::mem::take(&mut self.text));
            }
        }
    }

    /// Open an element from its tag `content` (between `<` and `>`, without
    /// a trailing `/`): push its namespace scope and build it with its
    /// attributes.
    fn open(&mut self, content: &'a str, name_len: usize) -> Result<Element, FramerError> {
        let qname = content.get(..name_len).ok_or(nwf("internal: tag"))?;
        let mut attrs = std::mem::take(&mut self.attrs);
        let result = self.open_with(qname, content, name_len, &mut attrs);
        self.attrs = attrs;
        result
    }

    fn open_with(
        &mut self,
        qname: &'a str,
        content: &'a str,
        name_len: usize,
        attrs: &mut Vec<(&'a str, Cow<'a, str>)>,
    ) -> Result<Element, FramerError> {
        self.marks.push(self.scopes.len());
        tag_attrs(content, name_len, attrs)?;
        // Namespace declarations first: they apply to the element's own name
        // and attributes whatever their order.
        let mut foreign_prefix = false;
        for (key, value) in attrs.iter() {
            if *key == "xmlns" {
                check_ns_decl(None, value)?;
                self.scopes.push(("", value.clone()));
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                check_ncname(p)?;
                check_ns_decl(Some(p), value)?;
                self.scopes.push((p, value.clone()));
            } else {
                let (prefix, _) = split_qname(key)?;
                foreign_prefix |= prefix.is_some_and(|p| p != "xml");
            }
        }
        let (prefix, local) = split_qname(qname)?;
        let ns = resolve(&self.scopes, self.header, prefix)?;
        let mut element = Element::new(local, ns);
        for (key, value) in attrs.iter_mut() {
            if *key != "xmlns" && !key.starts_with("xmlns:") {
                element.set_attr(*key, std::mem::take(value).into_owned());
            }
        }
        if foreign_prefix {
            self.declare_attr_prefixes(&mut element, attrs)?;
        }
        Ok(element)
    }

    /// For attributes with a prefix other than `xml`: check the prefix is
    /// bound, that no two of them have the same expanded name (Namespaces in
    /// XML §6.3), and give the element an `xmlns:p` attribute for each such
    /// prefix, so the element re-serializes namespace-well-formed on its own.
    fn declare_attr_prefixes(
        &self,
        element: &mut Element,
        attrs: &[(&'a str, Cow<'a, str>)],
    ) -> Result<(), FramerError> {
        let mut expanded: Vec<(&str, &str)> = Vec::new();
        for (key, _) in attrs {
            let Some((prefix, local)) = key.split_once(':') else {
                continue;
            };
            if prefix == "xml" || prefix == "xmlns" {
                continue;
            }
            let uri = resolve(&self.scopes, self.header, Some(prefix))?;
            if expanded.iter().any(|&(u, l)| u == uri && l == local) {
                return Err(nwf("duplicate attribute"));
            }
            expanded.push((uri, local));
            let decl = format!("xmlns:{prefix}");
            if element.attr(&decl).is_none() {
                element.set_attr(decl, uri);
            }
        }
        Ok(())
    }

    fn close_scope(&mut self) {
        if let Some(mark) = self.marks.pop() {
            self.scopes.truncate(mark);
        }
    }

    /// Attach a finished element to its parent; returns it if it is the root.
    fn attach(&mut self, element: Element) -> Option<Element> {
        match self.stack.last_mut() {
            Some(parent) => {
                parent.push(element);
                None
            }
            None => Some(element),
        }
    }
}

/// Parse one complete top-level element (the lexer has checked its syntax
/// and found its end) into an [`Element`].
pub(super) fn parse_stanza(slice: &[u8], header: &Header) -> Result<Element, FramerError> {
    let text = xml_str(slice)?;
    let mut reader = Reader::from_str(text);
    let mut b = Builder {
        header,
        stack: Vec::with_capacity(4),
        scopes: Vec::new(),
        marks: Vec::with_capacity(4),
        text: String::new(),
        attrs: Vec::with_capacity(8),
    };
    let mut last = 0usize;
    loop {
        let event = reader.read_event().map_err(xml_error)?;
        // The events of a slice reader are contiguous: this one's raw text is
        // everything since the previous one ended.
        let now =
            usize::try_from(reader.buffer_position()).map_err(|_| nwf("internal: position"))?;
        let raw = text.get(last..now).ok_or(nwf("internal: event bounds"))?;
        last = now;
        match event {
            XmlEvent::Start(e) => {
                b.flush_text();
                let content = raw
                    .strip_prefix('<')
                    .and_then(|r| r.strip_suffix('>'))
                    .ok_or(nwf("internal: start tag"))?;
                let element = b.open(content, e.name().as_ref().len())?;
                b.stack.push(element);
            }
            XmlEvent::Empty(e) => {
                b.flush_text();
                let content = raw
                    .strip_prefix('<')
                    .and_then(|r| r.strip_suffix("/>"))
                    .ok_or(nwf("internal: empty tag"))?;
                let element = b.open(content, e.name().as_ref().len())?;
                b.close_scope();
                if let Some(root) = b.attach(element) {
                    return Ok(root);
                }
            }
            XmlEvent::End(_) => {
                b.flush_text();
                b.close_scope();
                let element = b.stack.pop().ok_or(nwf("end tag without start tag"))?;
                if let Some(root) = b.attach(element) {
                    return Ok(root);
                }
            }
            XmlEvent::Text(_) => push_text(&mut b.text, raw),
            XmlEvent::CData(_) => {
                let data = raw
                    .strip_prefix("<![CDATA[")
                    .and_then(|r| r.strip_suffix("]]>"))
                    .ok_or(nwf("internal: CDATA"))?;
                push_text(&mut b.text, data);
            }
            XmlEvent::GeneralRef(_) => {
                let name = raw
                    .strip_prefix('&')
                    .and_then(|r| r.strip_suffix(';'))
                    .ok_or(nwf("internal: reference"))?;
                b.text.push(resolve_ref(name)?);
            }
            // The lexer refuses all of these before a slice gets here.
            XmlEvent::Comment(_) => return Err(FramerError::RestrictedXml("comment")),
            XmlEvent::PI(_) | XmlEvent::Decl(_) => {
                return Err(FramerError::RestrictedXml("processing instruction"))
            }
            XmlEvent::DocType(_) => {
                return Err(FramerError::RestrictedXml("document type declaration"))
            }
            XmlEvent::Eof => return Err(nwf("unexpected end of element")),
        }
    }
}
