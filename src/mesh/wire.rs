//! What mesh envelopes carry for the router, as plain data: a message's
//! custody key and its place in custody (`Tag`, sent with a copy), the
//! notices holders send each other (`Notice`, a `DONE` envelope as JSON)
//! and delivery hints (`Hint`, a `HINT` envelope as JSON). The mesh owns
//! these shapes because they are its wire; what they mean (custody's state
//! machine, the hints a resumption uses) is the router's
//! (`router::custody`, `router::hints`).
use serde::{Deserialize, Serialize};
use starling_raft::NodeId;

/// A copy's identity in custody: the recipient's bare JID and the
/// message's queue id (its XEP-0359 stanza id by that JID).
pub type Key = (String, String);

/// A stanza's place in custody (`router::custody`): its key and every
/// node holding a copy.
#[derive(Debug, Clone)]
pub struct Tag {
    pub key: Key,
    pub holders: Vec<NodeId>,
    /// The receiver's confirmation alone makes the copy safe: it writes
    /// the copy once this node has its ack (`acks_seen`), no `safe`
    /// notice needed.
    pub safe_on_ack: bool,
}

/// What one holder tells another (a `DONE` mesh envelope, as JSON).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Notice {
    /// The recipient's client has these.
    #[serde(default)]
    pub delivered: Vec<Key>,
    /// These are in the recipient's queue now.
    #[serde(default)]
    pub stored: Vec<Key>,
    /// These are safe: write them to the recipient's sessions.
    #[serde(default)]
    pub safe: Vec<Key>,
    /// The sender was told these failed: drop them, write them nowhere.
    #[serde(default)]
    pub failed: Vec<Key>,
    /// Your confirmations of these came after their commit began: wait
    /// for its outcome (`stored` or `failed`), not for `acks_seen`.
    #[serde(default)]
    pub late: Vec<Key>,
}

impl Notice {
    /// Adds `other`'s keys to this notice.
    pub fn merge(&mut self, other: Notice) {
        self.delivered.extend(other.delivered);
        self.stored.extend(other.stored);
        self.safe.extend(other.safe);
        self.failed.extend(other.failed);
        self.late.extend(other.late);
    }

    /// How many keys it carries.
    pub fn len(&self) -> usize {
        self.delivered.len()
            + self.stored.len()
            + self.safe.len()
            + self.failed.len()
            + self.late.len()
    }

    /// Whether the peer should have it at once (someone waits for `safe`),
    /// not after the batching delay.
    pub fn is_urgent(&self) -> bool {
        !self.safe.is_empty() || !self.failed.is_empty() || !self.late.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one resumable session tells its peers after a burst of writes
/// (see `router::hints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// The stream's XEP-0198 id (`previd` of a resumption).
    pub sm: String,
    /// The account (a resumption must be by the same account).
    pub bare: String,
    /// Queued messages written: (XEP-0198 number, queue id).
    pub written: Vec<(u32, String)>,
    /// The client acknowledged every stanza up to this number.
    pub acked: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of `DONE` and `HINT` envelopes, pinned: nodes of two
    /// versions meet on the mesh during a rolling restart.
    #[test]
    fn notice_and_hint_json_is_stable() {
        let key = || ("bob@x".to_string(), "q1".to_string());
        let notice = Notice {
            delivered: vec![key()],
            late: vec![key()],
            ..Notice::default()
        };
        assert_eq!(
            serde_json::to_string(&notice).unwrap(),
            r#"{"delivered":[["bob@x","q1"]],"stored":[],"safe":[],"failed":[],"late":[["bob@x","q1"]]}"#
        );
        let sparse: Notice = serde_json::from_str(r#"{"safe":[["bob@x","q1"]]}"#).unwrap();
        assert_eq!((sparse.len(), sparse.safe), (1, vec![key()]));
        let hint = Hint {
            sm: "s1".into(),
            bare: "bob@x".into(),
            written: vec![(3, "q1".into())],
            acked: 2,
        };
        let json = r#"{"sm":"s1","bare":"bob@x","written":[[3,"q1"]],"acked":2}"#;
        assert_eq!(serde_json::to_string(&hint).unwrap(), json);
        assert_eq!(serde_json::from_str::<Hint>(json).unwrap(), hint);
    }
}
