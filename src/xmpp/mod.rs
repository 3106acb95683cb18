//! XMPP wire protocol without I/O: namespaces, the element tree, the
//! incremental framer (bytes -> stream events), typed JIDs, server-made ids,
//! and RFC 6120 error conditions.

pub mod element;
pub mod error;
pub mod framer;
pub mod id;
pub mod jid;
pub mod ns;

pub use element::{Element, Node};
pub use error::{StanzaCondition, StanzaError, StreamCondition, StreamError};

/// The stream header under which stored and forwarded stanzas are parsed:
/// the namespaces a client stream declares.
const FRAGMENT_HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// Parses one serialized stanza (as stored in the offline queue or sent
/// over the mesh) back into an element.
pub fn parse_stanza(xml: &str) -> Result<Element, framer::FramerError> {
    let mut f = framer::Framer::new(framer::Limits {
        max_stanza_bytes: xml.len() + 64,
        ..framer::Limits::default()
    });
    f.feed(FRAGMENT_HEADER);
    f.feed(xml.as_bytes());
    let incomplete = framer::FramerError::NotWellFormed("incomplete stanza");
    match f.next_event()? {
        Some(framer::Event::StreamOpen { .. }) => {}
        _ => return Err(incomplete),
    }
    match f.next_event()? {
        Some(framer::Event::Stanza(el)) => Ok(el),
        _ => Err(incomplete),
    }
}
