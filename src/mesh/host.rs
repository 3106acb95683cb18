//! What the mesh needs from the node it carries stanzas for: where what
//! arrives from a peer goes (stanzas, custody copies and notices, kicks,
//! hints, takeover requests, address blocks), and what becomes of what a link sent (a
//! peer's confirmations, a link that broke). The router implements it and
//! the node attaches it (`MeshLinks::attach`, `serve_mesh`); the mesh
//! knows only `dyn Host`, so it does not import the router, and
//! dependencies point one way (router -> mesh).
use starling_raft::NodeId;

use super::wire::{Hint, Key, Notice};
use crate::xmpp::Element;

/// The node behind the mesh (see the module doc). Calls come from link
/// tasks and from the `Mesh` service's receiving tasks: none may block.
#[tonic::async_trait]
pub trait Host: Send + Sync + 'static {
    // What arrives from a peer.

    /// A stanza for local session `session` of `full` (not in custody);
    /// if that session is gone, it is routed again without it.
    async fn stanza(&self, full: &str, session: u64, el: Element);

    /// A copy in custody (queue id `id`, `stanza` its serialization) for
    /// local session `session` of `full`: held, and written once custody
    /// releases it. `holders` includes this node.
    fn custody_arrived(
        &self,
        full: &str,
        session: u64,
        el: Element,
        id: &str,
        stanza: String,
        holders: &[NodeId],
    );

    /// A copy in custody to keep for `bare` (no session here needs it).
    fn custody_hold(&self, bare: &str, id: &str, stanza: String, holders: &[NodeId]);

    /// A holder's custody notice (or `safe` ones the receiving side
    /// derives from `acks_seen`).
    fn custody_notice(&self, notice: Notice);

    /// End local session `session` of `full` (if it is still that one):
    /// its full JID was bound on another node.
    async fn kick(&self, full: &str, session: u64);

    /// A peer's delivery hint.
    fn hint(&self, hint: Hint);

    /// A peer blocked address `key` (IPv4, or an IPv6 /64) for `duration`
    /// after repeated failed logins: block it here too.
    fn auth_block(&self, key: std::net::IpAddr, duration: std::time::Duration);

    /// A peer asks to take over the resumable session `previd` of `bare`
    /// here, the client having had `h` stanzas: its state as JSON, or
    /// `None`.
    async fn take_over(&self, bare: &str, previd: &str, h: u32) -> Option<String>;

    /// The session was not here: the queued messages this node's delivery
    /// hints say stream `previd` of `bare` wrote with numbers up to `h`
    /// (forgotten here once told).
    fn hinted(&self, bare: &str, previd: &str, h: u32) -> Vec<String>;

    // What becomes of what a link sent.

    /// A stanza (not in custody) `node` could not be handed: route it
    /// again as if that node's sessions did not exist.
    async fn undeliverable(&self, el: Element, node: NodeId);

    /// `node` confirmed these custody copies. Returns those whose
    /// confirmation came after their commit began (for a `late` notice).
    fn custody_confirmed(&self, keys: Vec<Key>, node: NodeId) -> Vec<Key>;

    /// These custody copies never reached `node`.
    fn custody_unconfirmed(&self, keys: Vec<Key>, node: NodeId);

    /// A notice for a peer could not be sent (or was not acknowledged in
    /// time).
    fn custody_undelivered_notice(&self, notice: &Notice);

    /// The link to `node` broke: what it confirmed may have died with it.
    fn custody_peer_down(&self, node: NodeId);
}
