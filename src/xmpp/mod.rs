//! XMPP wire protocol without I/O: namespaces, the element tree, the
//! incremental framer (bytes -> stream events), and RFC 6120 error conditions.
