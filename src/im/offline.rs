//! Offline messages (XEP-0160) and the pull from the replicated queue.
//!
//! Every message for an account is in the account's replicated queue until
//! a client of the account has it (see `router::inbox`). A session *pulls*
//! from the queue the messages no live copy brought it:
//! - after initial presence (RFC 6121 §4.2 / XEP-0160: everything queued),
//! - when an acknowledgement makes room after a pull that stopped at its
//!   limit (so a queue longer than the unacknowledged window drains),
//! - every few seconds while available: messages whose live copy was lost
//!   (its node or session went away) or never sent (no available resource
//!   at the time). While other sessions of the account exist, only messages
//!   older than [`PULL_OTHERS_AFTER`] are taken, so one that another
//!   resource is about to acknowledge is not shown twice.
//!
//! A node that is cut off from the majority does not pull (its copy of
//! the queue is stale and removals would not commit).
//!
//! Each pulled message gets an XEP-0203 delay stamp. It leaves the queue
//! once acknowledged (XEP-0198) or written (without it).
use std::time::Duration;

use tracing::warn;

use crate::c2s::session::Session;
use crate::clock::{datetime, now_ms};
use crate::xmpp::{ns, Element};

/// Most queued messages handed to a session in one pull; never more than
/// half the unacknowledged window (`Session::pull_room`).
const BATCH: usize = 100;

/// Age before a queued message may be pulled while other sessions of the
/// account could still acknowledge it.
pub const PULL_OTHERS_AFTER: Duration = Duration::from_secs(10);

/// Sends the queued messages this session has not written yet, oldest
/// first. `all`: everything (initial presence, a drain going on); else
/// only what no other session of the account may still deliver.
pub fn pull(s: &mut Session, all: bool) {
    // A node cut off from the majority has a stale queue and cannot commit
    // the removal of what its client acknowledges: the client would get it
    // again on its next node. It delivers from the queue once back.
    if !s.shared.cluster.in_quorum_contact() {
        s.set_more_queued(true);
        return;
    }
    let room = s.pull_room().min(BATCH);
    if room == 0 {
        s.set_more_queued(true);
        return;
    }
    let min_age_ms = if !all && others_exist(s) {
        PULL_OTHERS_AFTER.as_millis() as u64
    } else {
        0
    };
    let now = now_ms();
    let (queued, more): (Vec<(u64, u64, String)>, bool) = {
        let state = s.shared.cluster.state().read();
        let mut it = state
            .data
            .queue(s.bare.as_str())
            .filter(|(_, m)| now.saturating_sub(m.stamp_ms) >= min_age_ms && s.may_pull(&m.id));
        let taken: Vec<_> = it
            .by_ref()
            .take(room)
            .map(|(seq, m)| (seq, m.stamp_ms, m.stanza.clone()))
            .collect();
        let more = it.next().is_some();
        (taken, more)
    };
    if queued.is_empty() {
        s.set_more_queued(more);
        return;
    }
    // The cheap check above is blind for up to ten heartbeats after a cut:
    // confirm contact now (a raft read index, shared by the node) before
    // writing anything from this copy of the queue.
    if !s.contact_confirmed(all) {
        s.set_more_queued(true);
        return;
    }
    s.set_more_queued(more);
    s.note_pulled();
    for (seq, stamp_ms, xml) in queued {
        let mut el = match crate::xmpp::parse_stanza(&xml) {
            Ok(el) => el,
            Err(e) => {
                warn!(seq, error = %e, "unreadable stored message skipped");
                continue;
            }
        };
        // XEP-0203: when the server first received it.
        el.remove_children(|c| {
            c.is("delay", ns::DELAY) && c.attr("from") == Some(&s.shared.domain)
        });
        el.push(
            Element::new("delay", ns::DELAY)
                .with_attr("from", s.shared.domain.clone())
                .with_attr("stamp", datetime(stamp_ms))
                .with_text("Offline storage"),
        );
        s.write_stanza(el);
    }
}

/// Whether another session of the account is bound (anywhere).
fn others_exist(s: &Session) -> bool {
    let state = s.shared.cluster.state().read();
    let n = state.data.sessions_of(s.bare.as_str()).count();
    n > 1
}
