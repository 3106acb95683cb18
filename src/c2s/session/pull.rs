//! The session's pull from the account's replicated queue (XEP-0160):
//! when a node may write from its copy of the queue, and the writing.
//! Which messages and their XEP-0203 stamp are `im::offline`'s.
use tracing::warn;

use super::Session;
use crate::clock::now_ms;
use crate::im::offline::{self, BATCH, PULL_OTHERS_AFTER};

impl Session {
    /// Sends the queued messages this session has not written yet, oldest
    /// first. `all`: everything (initial presence, a drain going on); else
    /// only what no other session of the account may still deliver.
    pub(crate) fn pull(&mut self, all: bool) {
        // A node cut off from the majority has a stale queue and cannot
        // commit the removal of what its client acknowledges: the client
        // would get it again on its next node. It delivers from the queue
        // once back.
        if !self.shared.cluster.in_quorum_contact() {
            self.set_more_queued(true);
            return;
        }
        let room = self.pull_room().min(BATCH);
        if room == 0 {
            self.set_more_queued(true);
            return;
        }
        let min_age_ms = if !all && self.others_exist() {
            PULL_OTHERS_AFTER.as_millis() as u64
        } else {
            0
        };
        let (queued, more) = {
            let state = self.shared.cluster.state().read();
            offline::select(
                state.data.queue(self.bare.as_str()),
                now_ms(),
                min_age_ms,
                room,
                |id| self.may_pull(id),
            )
        };
        if queued.is_empty() {
            self.set_more_queued(more);
            return;
        }
        // The cheap check above is blind for up to ten heartbeats after a
        // cut: confirm contact now (a raft read index, shared by the node)
        // before writing anything from this copy of the queue.
        if !self.contact_confirmed(all) {
            self.set_more_queued(true);
            return;
        }
        self.set_more_queued(more);
        self.note_pulled();
        for p in queued {
            match offline::stamped(&p.xml, p.stamp_ms, &self.shared.domain) {
                Ok(el) => self.write_stanza(el),
                Err(e) => warn!(seq = p.seq, error = %e, "unreadable stored message skipped"),
            }
        }
    }

    /// Whether another session of the account is bound (anywhere).
    fn others_exist(&self) -> bool {
        let state = self.shared.cluster.state().read();
        let n = state.data.sessions_of(self.bare.as_str()).count();
        n > 1
    }
}
