//! Per-account data kept for the server's XMPP extensions, as data: XEP-0163
//! PEP nodes (their configuration) and items, XEP-0115 capabilities (which
//! PEP nodes a client version wants notifications of, `+notify`), XEP-0054
//! vCards and XEP-0049 private XML. Payloads are serialized XML, opaque to
//! the state machine; what they mean is the server's (`im::pep`,
//! `im::vcard`, `im::private`).
use serde::{Deserialize, Serialize};

/// XEP-0060 §4.5 access models a PEP node may have (the subset XEP-0163
/// needs: `presence` is PEP's default, §3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PepAccess {
    #[default]
    Presence,
    Open,
    Whitelist,
}

/// A PEP node's configuration (XEP-0060 §16.4.3 `pubsub#node_config`, the
/// fields PEP uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PepNodeConfig {
    pub access: PepAccess,
    /// Items kept; publishing beyond drops the oldest.
    pub max_items: u32,
    /// `pubsub#persist_items`: false keeps only the last item.
    pub persist: bool,
    /// `pubsub#send_last_published_item` is not `never`.
    pub send_last: bool,
    /// `pubsub#notify_retract`.
    pub notify_retract: bool,
}

impl Default for PepNodeConfig {
    fn default() -> Self {
        PepNodeConfig {
            access: PepAccess::Presence,
            max_items: 1,
            persist: true,
            send_last: true,
            notify_retract: true,
        }
    }
}

/// A PEP node of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PepNode {
    pub config: PepNodeConfig,
    /// The sequence number the next published item gets (publication order).
    pub next_seq: u64,
    pub created_ms: u64,
}

/// One published item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PepItem {
    /// Publication order within its node.
    pub seq: u64,
    /// The item's payload, serialized XML (empty: none).
    pub payload: String,
    /// The full JID that published it.
    pub publisher: String,
    pub stamp_ms: u64,
}

/// The caps a publish is applied under, from the proposer's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PepLimits {
    /// Most items one node keeps (`max_items` above it is lowered to it).
    pub max_items: u32,
    /// Most nodes of one account.
    pub max_nodes: u32,
    /// Most payload bytes of one account's items together.
    pub max_bytes: u64,
}

/// The second part of an item's key in [`crate::keyspace::PEP_ITEMS`].
pub fn item_key(node: &str, id: &str) -> String {
    format!("{node}\0{id}")
}

/// The second part of a private XML key in [`crate::keyspace::PRIVATE`].
pub fn private_key(name: &str, ns: &str) -> String {
    format!("{ns}\0{name}")
}

/// The key in [`crate::keyspace::CAPS`] of one session's own interests:
/// those its client announced with a `ver` that did not verify (stored for
/// that full JID only, and removed with its binding).
pub fn session_caps_key(full_jid: &str) -> String {
    format!("jid {full_jid}")
}
