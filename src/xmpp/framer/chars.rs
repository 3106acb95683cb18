//! XML character and name rules, shared by the lexer, the stream header
//! parser and the tree builder:
//!
//! * which code points XML allows (XML 1.0 §2.2 Char), and UTF-8 validation
//!   of a complete slice (RFC 6120 §11.6; invalid UTF-8 is
//!   `unsupported-encoding` by §4.9.3.22);
//! * what a name is (XML 1.0 §2.3; NCName and QName of Namespaces in XML
//!   §3-4) and which namespace declarations are legal (Namespaces in XML §3,
//!   RFC 6120 §4.8);
//! * the five predefined entities and character references (XML 1.0 §4.1,
//!   §4.6; any other entity reference is restricted XML, RFC 6120 §11.1);
//! * the hash the lexer uses to match end tags to start tags.

use super::{nwf, FramerError};

/// The namespace the `xml` prefix is bound to (Namespaces in XML §3).
pub(super) const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace of `xmlns` attributes, which may never be declared.
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

pub(super) const BAD_CHAR: &str = "character not allowed in XML 1.0";

/// FNV-1a of a tag name (an equality check for end tags; a collision only
/// defers the error to the full parse, which compares the names).
pub(super) fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Validate a complete slice as UTF-8 and as XML 1.0 characters. The lexer
/// has already refused the C0 controls; what is left is malformed UTF-8 and
/// the non-characters U+FFFE and U+FFFF.
pub(super) fn xml_str(bytes: &[u8]) -> Result<&str, FramerError> {
    // RFC 6120 §11.6 (paraphrased): UTF-8 is the only encoding of an XML
    // stream. §4.9.3.22 makes "violating the rules of the [UTF-8] encoding"
    // an unsupported-encoding error.
    let s = std::str::from_utf8(bytes)
        .map_err(|_| FramerError::UnsupportedEncoding("invalid UTF-8"))?;
    // U+FFFE is EF BF BE and U+FFFF is EF BF BF in UTF-8. `contains` on a
    // byte slice is a memchr; the character search runs only when needed.
    if bytes.contains(&0xEF) && s.contains(['\u{FFFE}', '\u{FFFF}']) {
        return Err(nwf(BAD_CHAR));
    }
    Ok(s)
}

/// XML 1.0 §2.2: `Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD]
/// | [#x10000-#x10FFFF]`.
pub(super) fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x1_0000..=0x10_FFFF)
}

/// XML 1.0 §2.3 NameStartChar, without `:` (Namespaces in XML NCName).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 §2.3 NameChar, without `:`.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

pub(super) fn check_ncname(s: &str) -> Result<(), FramerError> {
    let bytes = s.as_bytes();
    if bytes.is_ascii() {
        return match bytes.split_first() {
            Some((first, rest))
                if (first.is_ascii_alphabetic() || *first == b'_')
                    && rest
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) =>
            {
                Ok(())
            }
            _ => Err(nwf("invalid name")),
        };
    }
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if is_name_start(c) => {}
        _ => return Err(nwf("invalid name")),
    }
    if chars.all(is_name_char) {
        Ok(())
    } else {
        Err(nwf("invalid name"))
    }
}

/// Split a qualified name (Namespaces in XML §4) into prefix and local part.
pub(super) fn split_qname(name: &str) -> Result<(Option<&str>, &str), FramerError> {
    match name.split_once(':') {
        Some((prefix, local)) => {
            check_ncname(prefix)?;
            check_ncname(local)?;
            Ok((Some(prefix), local))
        }
        None => {
            check_ncname(name)?;
            Ok((None, name))
        }
    }
}

/// Check a namespace declaration (Namespaces in XML §3, "Namespace
/// constraints"). `prefix` is `None` for a default namespace declaration.
pub(super) fn check_ns_decl(prefix: Option<&str>, uri: &str) -> Result<(), FramerError> {
    match prefix {
        Some("xmlns") => Err(nwf("the xmlns prefix cannot be declared")),
        Some("xml") if uri != XML_NS => Err(nwf("the xml prefix cannot be rebound")),
        Some(_) if uri.is_empty() => Err(nwf("a prefix cannot be undeclared")),
        Some(p) if p != "xml" && uri == XML_NS => {
            Err(nwf("only xml may be bound to the XML namespace"))
        }
        _ if uri == XMLNS_NS => Err(nwf("the xmlns namespace cannot be declared")),
        None if uri == XML_NS => Err(nwf("the XML namespace cannot be the default")),
        _ => Ok(()),
    }
}

/// Resolve a predefined entity or character reference (the text between `&`
/// and `;`). The lexer has already refused everything else; this re-checks.
pub(super) fn resolve_ref(name: &str) -> Result<char, FramerError> {
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        _ => {
            let Some(num) = name.strip_prefix('#') else {
                return Err(FramerError::RestrictedXml("entity reference"));
            };
            let (digits, radix) = match num.strip_prefix('x') {
                Some(hex) => (hex, 16),
                None => (num, 10),
            };
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return Err(nwf("malformed character reference"));
            }
            u32::from_str_radix(digits, radix)
                .ok()
                .filter(|&v| is_xml_char(v))
                .and_then(char::from_u32)
                .ok_or(nwf(
                    "character reference to a character not allowed in XML 1.0",
                ))
        }
    }
}
