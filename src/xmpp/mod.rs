//! XMPP wire protocol without I/O: namespaces, the element tree, the
//! incremental framer (bytes -> stream events), and RFC 6120 error conditions.

pub mod element;
pub mod ns;

pub use element::{Element, Node};
