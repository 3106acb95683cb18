//! The router as the mesh's [`Host`]: what arrives from a peer, and what
//! becomes of what a link sent, handed to the router's own methods
//! (routing in `route.rs`, custody in `keeper.rs`, hints, takeovers). The
//! mesh knows only the trait, so it does not import the router.
use starling_raft::NodeId;

use super::Router;
use crate::mesh::{Hint, Host, Key, Notice};
use crate::xmpp::Element;

#[tonic::async_trait]
impl Host for Router {
    async fn stanza(&self, full: &str, session: u64, el: Element) {
        self.from_mesh(full, session, el).await
    }

    fn custody_arrived(
        &self,
        full: &str,
        session: u64,
        el: Element,
        id: &str,
        stanza: String,
        holders: &[NodeId],
    ) {
        Router::custody_arrived(self, full, session, el, id, stanza, holders)
    }

    fn custody_hold(&self, bare: &str, id: &str, stanza: String, holders: &[NodeId]) {
        // Not a primary: no session here delivers it.
        Router::custody_hold(self, bare, id, stanza, holders, false)
    }

    fn custody_notice(&self, notice: Notice) {
        Router::custody_notice(self, notice)
    }

    async fn kick(&self, full: &str, session: u64) {
        self.kick_local(full, session).await
    }

    fn hint(&self, hint: Hint) {
        self.hints().record(hint)
    }

    fn auth_block(&self, key: std::net::IpAddr, duration: std::time::Duration) {
        self.auth_block_from_peer(key, duration)
    }

    async fn take_over(&self, bare: &str, previd: &str, h: u32) -> Option<String> {
        self.takeovers().take(bare, previd, h).await
    }

    fn hinted(&self, bare: &str, previd: &str, h: u32) -> Vec<String> {
        self.hints().take(previd, bare, h)
    }

    async fn undeliverable(&self, el: Element, node: NodeId) {
        Router::undeliverable(self, el, node).await
    }

    fn custody_confirmed(&self, keys: Vec<Key>, node: NodeId) -> Vec<Key> {
        Router::custody_confirmed(self, keys, node)
    }

    fn custody_unconfirmed(&self, keys: Vec<Key>, node: NodeId) {
        Router::custody_unconfirmed(self, keys, node)
    }

    fn custody_undelivered_notice(&self, notice: &Notice) {
        Router::custody_undelivered_notice(self, notice)
    }

    fn custody_peer_down(&self, node: NodeId) {
        Router::custody_peer_down(self, node)
    }
}
