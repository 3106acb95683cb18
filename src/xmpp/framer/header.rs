//! The prolog of a stream: the optional XML declaration (XML 1.0 §2.8; RFC
//! 6120 §11.5, with UTF-8 the only encoding, §11.6) and the stream header
//! `<stream:stream ...>` (RFC 6120 §4.2, §4.7). The header's namespace
//! declarations become the [`Header`], the namespace context every stanza of
//! the stream inherits (§4.8); its root name is what `</stream:stream>` must
//! echo (§4.4). Whether the root is `stream` in the streams namespace
//! (§4.8.1) is the connection's check, not this file's.

use quick_xml::events::Event as XmlEvent;
use quick_xml::reader::Reader;

use super::chars::{check_ns_decl, split_qname, xml_str};
use super::lex::{class, WS};
use super::tree::{resolve, tag_attrs, xml_error};
use super::{nwf, Event, FramerError};

/// Namespace context established by the stream header.
#[derive(Debug, Clone, Default)]
pub(super) struct Header {
    /// The root element's name as written, to match `</stream:stream>`.
    pub(super) qname: Vec<u8>,
    pub(super) default_ns: Option<String>,
    /// `xmlns:p` declarations, in document order.
    pub(super) prefixes: Vec<(String, String)>,
}

/// Check the XML declaration `decl` (`<?xml ...?>`, RFC 6120 §11.5).
pub(super) fn check_decl(decl: &[u8]) -> Result<(), FramerError> {
    let target_end = decl
        .iter()
        .skip(2)
        .position(|&b| class(b) & WS != 0 || b == b'?')
        .map_or(decl.len(), |i| i + 2);
    if decl.get(2..target_end) != Some(b"xml".as_slice()) {
        // Some other processing instruction at the very start of the stream.
        return Err(FramerError::RestrictedXml("processing instruction"));
    }
    let text = xml_str(decl)?;
    let mut reader = Reader::from_str(text);
    let XmlEvent::Decl(d) = reader.read_event().map_err(xml_error)? else {
        return Err(nwf("malformed XML declaration"));
    };
    let version = d
        .version()
        .map_err(|_| nwf("XML declaration without version"))?;
    // XML 1.0 §2.8: VersionNum ::= '1.' [0-9]+
    match version.strip_prefix(b"1.") {
        Some(minor) if !minor.is_empty() && minor.iter().all(u8::is_ascii_digit) => {}
        _ => return Err(nwf("unsupported XML version")),
    }
    if let Some(encoding) = d.encoding() {
        let encoding = encoding.map_err(|_| nwf("malformed XML declaration"))?;
        // RFC 6120 §11.6 (paraphrased): data in an encoding other than
        // UTF-8 closes the stream, preferably with unsupported-encoding.
        if !encoding.eq_ignore_ascii_case(b"UTF-8") {
            return Err(FramerError::UnsupportedEncoding(
                "declared encoding is not UTF-8",
            ));
        }
    }
    if let Some(standalone) = d.standalone() {
        let standalone = standalone.map_err(|_| nwf("malformed XML declaration"))?;
        if standalone.as_ref() != b"yes" && standalone.as_ref() != b"no" {
            return Err(nwf("malformed XML declaration"));
        }
    }
    Ok(())
}

/// Parse the stream header `<stream:stream ...>` (the lexer has checked its
/// syntax) into the namespace context for the stream and the event.
pub(super) fn parse_header(slice: &[u8]) -> Result<(Header, Event), FramerError> {
    let text = xml_str(slice)?;
    let content = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .ok_or(nwf("internal: header"))?;
    let name_len = content
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(content.len());
    let qname = &content[..name_len];
    let mut raw_attrs = Vec::new();
    tag_attrs(content, name_len, &mut raw_attrs)?;

    let mut header = Header {
        qname: qname.as_bytes().to_vec(),
        ..Header::default()
    };
    let mut attrs = Vec::with_capacity(raw_attrs.len());
    for (key, value) in raw_attrs.iter() {
        let (prefix, local) = split_qname(key)?;
        match (prefix, local) {
            (None, "xmlns") => {
                check_ns_decl(None, value)?;
                header.default_ns = Some(value.to_string());
            }
            (Some("xmlns"), p) => {
                check_ns_decl(Some(p), value)?;
                header.prefixes.push((p.to_string(), value.to_string()));
            }
            _ => attrs.push((key.to_string(), value.to_string())),
        }
    }
    // Prefixed attributes (other than xml:) must be bound too.
    for (key, _) in &attrs {
        if let Some((prefix, _)) = key.split_once(':') {
            resolve(&[], &header, Some(prefix))?;
        }
    }
    let (prefix, local) = split_qname(qname)?;
    // RFC 6120 §4.8.1: "The root <stream/> element ("stream header") MUST be
    // qualified by the namespace 'http://etherx.jabber.org/streams'". The
    // connection checks that; here the name is only resolved.
    let ns = resolve(&[], &header, prefix)?.to_string();
    let event = Event::StreamOpen {
        name: local.to_string(),
        ns,
        default_ns: header.default_ns.clone(),
        attrs,
    };
    Ok((header, event))
}
