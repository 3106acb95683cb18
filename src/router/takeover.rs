//! Cross-node XEP-0198 resumption: the registry of this node's resumable
//! sessions that a peer may take over, and the request a node makes when a
//! client resumes on it a session that lives elsewhere.
//!
//! A phone that lost its connection reconnects wherever DNS or its server
//! list sends it. When its old node is alive, the new node asks every peer
//! (over the mesh, `Takeover`); the one holding the session waits for the
//! session's running guards (so its `h` counts everything the client sent),
//! applies the client's `h`, commits what custody held for the account to
//! its queue, and hands over the rest of the session as JSON: the XEP-0198
//! counters and unacknowledged stanzas, presence, carbons, CSI. It then
//! ends the session there without unavailable presence; the new node binds
//! the same full JID, answers `<resumed/>` and sends again what the client
//! had not acknowledged. Nothing the client had not acknowledged depends
//! on the handover reaching it: every message among those stanzas is in
//! custody or the queue, so if the new node dies before the client acks,
//! the next session gets them from the queue. The router does not read the
//! state it carries (the session's shape is `c2s`'s business).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// How long a session may take to hand itself over (its guards included).
pub const HANDOFF_LIMIT: Duration = Duration::from_secs(3);

/// A peer asks the session to hand itself over: `h` is the client's count
/// of stanzas it received; `reply` gets the session's state as JSON, or
/// `None` if it could not be handed over (it then ends as if lost).
pub struct Takeover {
    pub h: u32,
    pub reply: oneshot::Sender<Option<String>>,
}

/// This node's resumable sessions, by XEP-0198 id: (account, channel).
#[derive(Default)]
pub struct Registry(Mutex<HashMap<String, (String, mpsc::Sender<Takeover>)>>);

impl Registry {
    pub fn register(&self, sm_id: &str, bare: &str, tx: mpsc::Sender<Takeover>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sm_id.to_string(), (bare.to_string(), tx));
    }

    pub fn unregister(&self, sm_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sm_id);
    }

    /// Asks the session `sm_id` of `bare` here to hand itself over; `None`
    /// when there is no such session (or another account's), or it could
    /// not.
    pub async fn take(&self, bare: &str, sm_id: &str, h: u32) -> Option<String> {
        let tx = {
            let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.get(sm_id)
                .filter(|(owner, _)| owner == bare)
                .map(|(_, tx)| tx.clone())?
        };
        let (reply, rx) = oneshot::channel();
        // One takeover at a time: a second attempt meanwhile is refused.
        tx.try_send(Takeover { h, reply }).ok()?;
        tokio::time::timeout(HANDOFF_LIMIT, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_owner_account_takes_a_session_over() {
        let reg = Registry::default();
        let (tx, mut rx) = mpsc::channel(1);
        reg.register("sm1", "bob@x", tx);
        tokio::spawn(async move {
            while let Some(t) = rx.recv().await {
                let _ = t.reply.send(Some(format!("state h={}", t.h)));
            }
        });
        assert_eq!(reg.take("eve@x", "sm1", 3).await, None);
        assert_eq!(reg.take("bob@x", "sm2", 3).await, None);
        assert_eq!(
            reg.take("bob@x", "sm1", 3).await.as_deref(),
            Some("state h=3")
        );
        reg.unregister("sm1");
        assert_eq!(reg.take("bob@x", "sm1", 3).await, None);
    }
}
