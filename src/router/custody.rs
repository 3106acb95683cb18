//! Custody: the in-memory half of the delivery guarantee, as a pure state
//! machine (no I/O; the router carries out the [`Effect`]s it returns).
//!
//! A message for a recipient that is online is safe once *a majority of the
//! voting nodes* hold a copy in memory (one of three, two of five can then
//! fail and a copy survives): the sender's node, the node(s) of the
//! recipient's session(s) and, where those are too few (the recipient is on
//! the sender's node), a *keeper* that only holds it. The sender's XEP-0198
//! ack waits for the other holders to confirm (their mesh ack), not for
//! consensus. A copy leaves every holder once the recipient's client has
//! the message (XEP-0198 ack, or written to a stream without it): the node
//! that delivered it tells the others (`Done`).
//!
//! A copy that is not done in time, whose holder became unreachable, or
//! whose recipient session went away, is written to the recipient's
//! replicated queue (`Commit`, idempotent by its XEP-0359 stanza id), which
//! is the guarantee's durable half (`router::inbox`). So a holder that dies
//! leaves the message with the others, and the survivors commit it: the
//! recipient gets it from its queue wherever it logs in again.
//!
//! A copy is written to the recipient's session only once it is safe
//! (*released*): on the sender's node once the other holders confirmed,
//! on the recipient's node once the sender's node says so (`Safe`), or
//! once it is in the queue or another holder's client has it. A node that
//! wrote a message it could not confirm (its link to the sender's node cut
//! one way, or a keeper's confirmation lost) made the sender's node commit
//! it in doubt, and the client got it a second time from the queue at its
//! next session elsewhere; released copies are never committed in doubt.
//! This costs the recipient one mesh round trip.
//!
//! Timeouts: a holder that delivers the message to the recipient (primary)
//! commits it after `primary_hold`; the others after the longer
//! `keeper_hold`, so that while the primary is alive one commit happens,
//! not three. A copy originated here that lacks confirmations after
//! `confirm_wait` (a paused or cut-off peer) is committed instead, and the
//! sender is acked once that commit is known.
//!
//! Size: over 600 lines because it is one state machine (one `Book`, one
//! `State` per copy) whose transitions must be read and reviewed together;
//! split by event, each file would hold half of every invariant.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use starling_raft::command::OfflineMessage;
use starling_raft::NodeId;

use super::Guarded;

/// A copy's identity: the recipient's bare JID and the message's queue id
/// (its XEP-0359 stanza id by that JID). Defined with the mesh's wire,
/// which carries it between holders.
pub use crate::mesh::Key;

/// What the caller must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect<W> {
    /// Tell the sender's session (`W`) what became of its message.
    Outcome(W, Guarded),
    /// Write the message to its recipient's queue, then call
    /// [`Book::committed`] with the outcome.
    Commit(Key, OfflineMessage),
    /// Tell these holders the recipient's client has it (drop the copy;
    /// remove it from the queue if it got there).
    Done(Vec<NodeId>, Key),
    /// Tell these holders it is in the queue now (drop the copy; it stays
    /// queued until a client has it).
    Stored(Vec<NodeId>, Key),
    /// The recipient's client has it and it is (or is about to be) in the
    /// queue: remove it from there.
    Remove(Key),
    /// A peer says the client has it and it is not held here: remove it
    /// from the queue if the queue holds it.
    RemoveIfQueued(Key),
    /// Tell these holders (the recipient's nodes) the copy is safe: they
    /// may write it to the recipient's session now.
    Safe(Vec<NodeId>, Key),
    /// Write the copy kept back for the recipient's session(s) here.
    Release(Key),
    /// Forget the copy kept back for the session(s) here (the sender was
    /// told it failed).
    Discard(Key),
    /// Tell these holders the sender was told it failed: drop the copy
    /// and write it nowhere.
    Failed(Vec<NodeId>, Key),
}

enum State<W> {
    /// Originated here; `needed` more of `awaiting` must confirm.
    Confirming {
        awaiting: Vec<NodeId>,
        needed: usize,
        waiter: W,
        by: Instant,
    },
    /// Held (safe), until done.
    Held,
    /// Being committed; `delivered` if a client of the recipient had it
    /// meanwhile (`here`: the one on this node).
    Committing {
        waiter: Option<W>,
        delivered: bool,
        here: bool,
    },
}

struct Copy<W> {
    message: OfflineMessage,
    /// The other holders.
    others: Vec<NodeId>,
    /// Originated here: the other holders that deliver it (told `Safe`).
    primaries: Vec<NodeId>,
    /// This node delivers it to a session of the recipient.
    primary: bool,
    /// This node delivers it and has not released it yet.
    waiting: bool,
    deadline: Instant,
    state: State<W>,
}

/// The timeouts (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub confirm_wait: Duration,
    pub primary_hold: Duration,
    pub keeper_hold: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            confirm_wait: Duration::from_secs(1),
            primary_hold: Duration::from_secs(3),
            keeper_hold: Duration::from_secs(6),
        }
    }
}

/// Most notices about copies not (yet) held here that are remembered.
const MAX_EARLY: usize = 65_536;

/// The copies this node holds.
pub struct Book<W> {
    copies: HashMap<Key, Copy<W>>,
    /// Notices ("done", "stored") that came before the copy they are about:
    /// a holder's notice and the origin's `HOLD` travel on different links,
    /// so a keeper can hear that a message was delivered before it gets the
    /// copy. Such a copy is not kept (it would be committed after its
    /// timeout and delivered again). Forgotten after `keeper_hold` * 2.
    early: HashMap<Key, Instant>,
    /// `Safe` notices that came before their copy (the sender's node sends
    /// a copy to each of the recipient's nodes in turn, and may hear the
    /// first one's confirmation before it sent the second its copy).
    early_safe: HashMap<Key, Instant>,
    bytes: usize,
    max_bytes: usize,
    timeouts: Timeouts,
}

impl<W> Book<W> {
    pub fn new(max_bytes: usize, timeouts: Timeouts) -> Self {
        Book {
            copies: HashMap::new(),
            early: HashMap::new(),
            early_safe: HashMap::new(),
            bytes: 0,
            max_bytes,
            timeouts,
        }
    }

    /// Whether a copy of `bytes` more fits (else the message takes the
    /// queue path: memory held for others is bounded).
    pub fn has_room(&self, bytes: usize) -> bool {
        self.bytes + bytes <= self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.copies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// The message of copy `key`, while the book has it.
    pub fn message(&self, key: &Key) -> Option<&OfflineMessage> {
        self.copies.get(key).map(|c| &c.message)
    }

    pub fn holds(&self, key: &Key) -> bool {
        self.copies.contains_key(key)
    }

    /// Whether copy `key` is held here and still to be released.
    pub fn is_waiting(&self, key: &Key) -> bool {
        self.copies.get(key).is_some_and(|c| c.waiting)
    }

    fn hold_for(&self, primary: bool) -> Duration {
        if primary {
            self.timeouts.primary_hold
        } else {
            self.timeouts.keeper_hold
        }
    }

    fn insert(&mut self, key: Key, copy: Copy<W>) {
        self.bytes += copy.message.stanza.len();
        if let Some(old) = self.copies.insert(key, copy) {
            self.bytes -= old.message.stanza.len();
        }
    }

    fn take(&mut self, key: &Key) -> Option<Copy<W>> {
        let c = self.copies.remove(key)?;
        self.bytes -= c.message.stanza.len();
        Some(c)
    }

    /// A message this node received from its sender: `needed` of `awaiting`
    /// (the other holders) must confirm before it is safe. `primaries` are
    /// the other holders with a session of the recipient (told `Safe` then);
    /// `primary`: a session of the recipient here gets it (released then).
    #[allow(clippy::too_many_arguments)]
    pub fn originate(
        &mut self,
        key: Key,
        message: OfflineMessage,
        awaiting: Vec<NodeId>,
        needed: usize,
        primaries: Vec<NodeId>,
        waiter: W,
        primary: bool,
        now: Instant,
    ) -> Vec<Effect<W>> {
        let deadline = now + self.hold_for(primary);
        let others = awaiting.clone();
        if needed == 0 {
            let mut out = vec![Effect::Outcome(waiter, Guarded::Safe)];
            if !primaries.is_empty() {
                out.push(Effect::Safe(primaries.clone(), key.clone()));
            }
            if primary {
                out.push(Effect::Release(key.clone()));
            }
            self.insert(
                key,
                Copy {
                    message,
                    others,
                    primaries,
                    primary,
                    waiting: false,
                    deadline,
                    state: State::Held,
                },
            );
            return out;
        }
        let by = now + self.timeouts.confirm_wait;
        self.insert(
            key,
            Copy {
                message,
                others,
                primaries,
                primary,
                waiting: primary,
                deadline,
                state: State::Confirming {
                    awaiting,
                    needed,
                    waiter,
                    by,
                },
            },
        );
        Vec::new()
    }

    /// A copy another node originated; `others` are the other holders.
    /// `primary`: a session of the recipient here gets it once released.
    pub fn hold(
        &mut self,
        key: Key,
        message: OfflineMessage,
        others: Vec<NodeId>,
        primary: bool,
        now: Instant,
    ) -> Vec<Effect<W>> {
        if let Some(c) = self.copies.get(&key) {
            // A second session of the recipient here: released with the
            // first if that is still to come, else now.
            return if primary && !c.waiting {
                vec![Effect::Release(key)]
            } else {
                Vec::new()
            };
        }
        if self.early.remove(&key).is_some() {
            // Delivered elsewhere or queued already: not kept, but this
            // resource gets it too.
            return if primary {
                vec![Effect::Release(key)]
            } else {
                Vec::new()
            };
        }
        let safe_already = self.early_safe.remove(&key).is_some();
        let deadline = now + self.hold_for(primary);
        let release = primary && safe_already;
        self.insert(
            key.clone(),
            Copy {
                message,
                others,
                primaries: Vec::new(),
                primary,
                waiting: primary && !safe_already,
                deadline,
                state: State::Held,
            },
        );
        if release {
            vec![Effect::Release(key)]
        } else {
            Vec::new()
        }
    }

    /// The sender's node says copy `key` is safe: write it here.
    pub fn safe(&mut self, key: &Key, now: Instant) -> Vec<Effect<W>> {
        if !self.copies.contains_key(key) {
            if self.early_safe.len() < MAX_EARLY {
                self.early_safe.insert(key.clone(), now);
            }
            return Vec::new();
        }
        self.release_here(key, now).into_iter().collect()
    }

    /// Releases copy `key` if it waits here; its client now has
    /// `primary_hold` to acknowledge it.
    fn release_here(&mut self, key: &Key, now: Instant) -> Option<Effect<W>> {
        let hold = self.timeouts.primary_hold;
        let c = self.copies.get_mut(key)?;
        if !c.waiting {
            return None;
        }
        c.waiting = false;
        if !matches!(c.state, State::Committing { .. }) {
            c.deadline = c.deadline.max(now + hold);
        }
        Some(Effect::Release(key.clone()))
    }

    /// Whether a confirmation of `key` now comes too late to make it safe:
    /// the copy is being committed (its confirmation did not come in time),
    /// so a holder waiting for the confirmation to be seen must wait for
    /// the commit instead (it may yet be refused).
    pub fn is_committing(&self, key: &Key) -> bool {
        self.copies
            .get(key)
            .is_some_and(|c| matches!(c.state, State::Committing { .. }))
    }

    /// The sender's node says the sender was told the message failed.
    pub fn failed_elsewhere(&mut self, key: &Key) -> Vec<Effect<W>> {
        match self.copies.get(key).map(|c| &c.state) {
            None => Vec::new(),
            // A commit of ours goes on: whatever it says decides.
            Some(State::Committing { .. }) => Vec::new(),
            Some(_) => match self.take(key) {
                Some(c) if c.waiting => vec![Effect::Discard(key.clone())],
                _ => Vec::new(),
            },
        }
    }

    /// Holder `node` confirmed its copy.
    pub fn confirmed(&mut self, key: &Key, node: NodeId) -> Vec<Effect<W>> {
        let Some(c) = self.copies.get_mut(key) else {
            return Vec::new();
        };
        let State::Confirming {
            awaiting, needed, ..
        } = &mut c.state
        else {
            return Vec::new();
        };
        let Some(i) = awaiting.iter().position(|n| *n == node) else {
            return Vec::new();
        };
        awaiting.swap_remove(i);
        *needed -= 1;
        if *needed > 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let State::Confirming { waiter, .. } = std::mem::replace(&mut c.state, State::Held) {
            out.push(Effect::Outcome(waiter, Guarded::Safe));
        }
        if !c.primaries.is_empty() {
            out.push(Effect::Safe(c.primaries.clone(), key.clone()));
        }
        out.extend(self.release_here(key, Instant::now()));
        out
    }

    /// Holder `node` could not take its copy (its link failed).
    pub fn unconfirmed(&mut self, key: &Key, node: NodeId) -> Vec<Effect<W>> {
        let Some(c) = self.copies.get_mut(key) else {
            return Vec::new();
        };
        c.others.retain(|n| *n != node);
        c.primaries.retain(|n| *n != node);
        match &mut c.state {
            State::Confirming {
                awaiting, needed, ..
            } => {
                awaiting.retain(|n| *n != node);
                if awaiting.len() >= *needed {
                    return Vec::new();
                }
            }
            // Confirmed already (a later link failure): the copy is safe,
            // but one holder fewer: commit it rather than wait.
            State::Held => {}
            State::Committing { .. } => return Vec::new(),
        }
        self.commit(key).into_iter().collect()
    }

    /// Starts the commit of a held or confirming copy.
    fn commit(&mut self, key: &Key) -> Option<Effect<W>> {
        let c = self.copies.get_mut(key)?;
        let waiter = match std::mem::replace(
            &mut c.state,
            State::Committing {
                waiter: None,
                delivered: false,
                here: false,
            },
        ) {
            State::Confirming { waiter, .. } => Some(waiter),
            State::Held => None,
            s @ State::Committing { .. } => {
                c.state = s;
                return None;
            }
        };
        c.state = State::Committing {
            waiter,
            delivered: false,
            here: false,
        };
        Some(Effect::Commit(key.clone(), c.message.clone()))
    }

    /// The recipient's client (on this node) has the message.
    pub fn delivered(&mut self, key: &Key) -> Vec<Effect<W>> {
        self.finished(key, true)
    }

    /// Another holder says the recipient's client has the message.
    pub fn done_elsewhere(&mut self, key: &Key) -> Vec<Effect<W>> {
        self.finished(key, false)
    }

    /// Another holder committed the message to the queue: this copy is not
    /// needed. (Not "delivered": a commit of ours in flight stays, and the
    /// queued message stays until a client has it.)
    pub fn stored_elsewhere(&mut self, key: &Key) -> Vec<Effect<W>> {
        match self.copies.get(key).map(|c| &c.state) {
            None => {
                self.remember_early(key);
                Vec::new()
            }
            Some(State::Committing { .. }) => Vec::new(),
            Some(_) => {
                let Some(c) = self.take(key) else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                if let State::Confirming { waiter, .. } = c.state {
                    out.push(Effect::Outcome(waiter, Guarded::Safe));
                }
                // Queued: safe to write here (the client's ack removes it).
                if c.waiting {
                    out.push(Effect::Release(key.clone()));
                }
                out
            }
        }
    }

    fn finished(&mut self, key: &Key, here: bool) -> Vec<Effect<W>> {
        if let Some(Copy {
            state:
                State::Committing {
                    delivered,
                    here: by_here,
                    ..
                },
            ..
        }) = self.copies.get_mut(key)
        {
            *delivered = true;
            // The client here has it while its commit is in flight: the
            // removal is asked for now, not after the commit. The remover
            // waits for the enqueue to apply, and meanwhile a pull on this
            // node skips it: after a quorum comes back the enqueue applies
            // first, and a pull that ran before the removal was even asked
            // wrote it again (jepsen-lite 3n-pause-kill-s2, 5 copies).
            let first = here && !*by_here;
            *by_here |= here;
            return if first {
                vec![Effect::Remove(key.clone())]
            } else {
                Vec::new()
            };
        }
        let Some(c) = self.take(key) else {
            return if here {
                vec![Effect::Remove(key.clone())]
            } else {
                self.remember_early(key);
                vec![Effect::RemoveIfQueued(key.clone())]
            };
        };
        let mut out = Vec::new();
        if let State::Confirming { waiter, .. } = c.state {
            // Not yet confirmed, but the recipient has it: that is what
            // the guarantee promises.
            out.push(Effect::Outcome(waiter, Guarded::Safe));
        }
        if c.waiting {
            // Another resource's client has it: this one gets it too. (The
            // client here had it from the queue: nothing to write.)
            out.push(if here {
                Effect::Discard(key.clone())
            } else {
                Effect::Release(key.clone())
            });
        }
        if here && !c.others.is_empty() {
            out.push(Effect::Done(c.others, key.clone()));
        }
        out
    }

    /// The recipient's session here is gone or could not take it: commit
    /// it now so another session gets it from the queue.
    pub fn release(&mut self, key: &Key) -> Vec<Effect<W>> {
        self.commit(key).into_iter().collect()
    }

    /// Commits every copy for account `bare` that this node was to
    /// deliver (its session here ended); copies kept for sessions
    /// elsewhere stay.
    pub fn release_account(&mut self, bare: &str) -> Vec<Effect<W>> {
        let keys: Vec<Key> = self
            .copies
            .iter()
            .filter(|(k, c)| {
                k.0 == bare && c.primary && !matches!(c.state, State::Committing { .. })
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| self.commit(k)).collect()
    }

    /// Whether a copy for account `bare` that this node was to deliver is
    /// still here (being committed included).
    pub fn holds_account(&self, bare: &str) -> bool {
        self.copies.iter().any(|(k, c)| k.0 == bare && c.primary)
    }

    /// Commits every copy (the node is stopping).
    pub fn release_all(&mut self) -> Vec<Effect<W>> {
        let keys: Vec<Key> = self.copies.keys().cloned().collect();
        keys.iter().filter_map(|k| self.commit(k)).collect()
    }

    /// `node` is unreachable: what it held or was to confirm is committed.
    pub fn peer_down(&mut self, node: NodeId) -> Vec<Effect<W>> {
        let keys: Vec<Key> = self
            .copies
            .iter()
            .filter(|(_, c)| c.others.contains(&node))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter()
            .flat_map(|k| self.unconfirmed(k, node))
            .collect()
    }

    fn remember_early(&mut self, key: &Key) {
        if self.early.len() < MAX_EARLY {
            self.early.insert(key.clone(), Instant::now());
        }
    }

    /// Commits what waited too long for confirmation or for its client.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect<W>> {
        let keep = self.timeouts.keeper_hold * 2;
        self.early
            .retain(|_, at| now.saturating_duration_since(*at) < keep);
        self.early_safe
            .retain(|_, at| now.saturating_duration_since(*at) < keep);
        let keys: Vec<Key> = self
            .copies
            .iter()
            .filter(|(_, c)| match &c.state {
                State::Confirming { by, .. } => *by <= now || c.deadline <= now,
                State::Held => c.deadline <= now,
                State::Committing { .. } => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| self.commit(k)).collect()
    }

    /// The outcome of a [`Effect::Commit`].
    pub fn committed(&mut self, key: &Key, outcome: Guarded) -> Vec<Effect<W>> {
        let Some(c) = self.take(key) else {
            return Vec::new();
        };
        let State::Committing {
            waiter,
            delivered,
            here,
        } = c.state
        else {
            // Not possible: only a committing copy is committed. Keep it.
            self.insert(key.clone(), c);
            return Vec::new();
        };
        let mut out = Vec::new();
        let safe = outcome == Guarded::Safe;
        let told_failed = waiter.is_some() && !safe;
        if let Some(w) = waiter {
            out.push(Effect::Outcome(w, outcome));
        }
        if told_failed && !c.others.is_empty() {
            out.push(Effect::Failed(c.others.clone(), key.clone()));
        }
        if safe {
            // In the queue now: the other holders need not keep it.
            if !c.others.is_empty() {
                out.push(Effect::Stored(c.others, key.clone()));
            }
            // (Removed already if the client here had it.)
            if delivered && !here {
                out.push(Effect::Remove(key.clone()));
            }
        }
        if c.waiting {
            // Queued: written here now. Refused: the sender was told it
            // failed (so it is not written), or, kept for another node's
            // sender, it is written rather than dropped. The client here
            // had it already (from the queue): nothing to write.
            out.push(if told_failed || here {
                Effect::Discard(key.clone())
            } else {
                Effect::Release(key.clone())
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Key {
        ("bob@x".into(), format!("m{i}"))
    }

    fn msg(i: u32) -> OfflineMessage {
        OfflineMessage {
            id: format!("m{i}"),
            stamp_ms: 0,
            stanza: "<message/>".into(),
        }
    }

    fn book() -> Book<u32> {
        Book::new(1 << 20, Timeouts::default())
    }

    #[test]
    fn safe_once_enough_holders_confirm() {
        let mut b = book();
        let t = Instant::now();
        assert!(b
            .originate(key(1), msg(1), vec![2, 3], 2, vec![], 7, true, t)
            .is_empty());
        assert!(b.confirmed(&key(1), 2).is_empty());
        // A confirmation from a node not asked counts for nothing.
        assert!(b.confirmed(&key(1), 9).is_empty());
        // Safe: acked, and written to the session here only now.
        assert_eq!(
            b.confirmed(&key(1), 3),
            vec![Effect::Outcome(7, Guarded::Safe), Effect::Release(key(1))]
        );
        // Delivered here: the others drop their copies.
        assert_eq!(b.delivered(&key(1)), vec![Effect::Done(vec![2, 3], key(1))]);
        assert!(b.is_empty());
    }

    #[test]
    fn delivered_before_confirmation_is_safe() {
        let mut b = book();
        b.originate(key(1), msg(1), vec![2], 1, vec![], 7, true, Instant::now());
        // (The client had it from the queue: the parked copy is dropped.)
        assert_eq!(
            b.delivered(&key(1)),
            vec![
                Effect::Outcome(7, Guarded::Safe),
                Effect::Discard(key(1)),
                Effect::Done(vec![2], key(1))
            ]
        );
    }

    #[test]
    fn a_failed_holder_falls_back_to_the_queue_and_acks_after_commit() {
        let mut b = book();
        b.originate(
            key(1),
            msg(1),
            vec![2],
            1,
            vec![2],
            7,
            false,
            Instant::now(),
        );
        assert_eq!(
            b.unconfirmed(&key(1), 2),
            vec![Effect::Commit(key(1), msg(1))]
        );
        // Not acked before the commit is known.
        assert!(b.tick(Instant::now() + Duration::from_secs(60)).is_empty());
        assert_eq!(
            b.committed(&key(1), Guarded::Safe),
            vec![Effect::Outcome(7, Guarded::Safe)]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn one_holder_of_two_failing_does_not_commit_when_enough_remain() {
        let mut b = book();
        b.originate(
            key(1),
            msg(1),
            vec![2, 3],
            1,
            vec![],
            7,
            true,
            Instant::now(),
        );
        assert!(b.unconfirmed(&key(1), 2).is_empty());
        assert_eq!(
            b.confirmed(&key(1), 3),
            vec![Effect::Outcome(7, Guarded::Safe), Effect::Release(key(1))]
        );
        // The failed holder is not told anything later.
        assert_eq!(b.delivered(&key(1)), vec![Effect::Done(vec![3], key(1))]);
    }

    #[test]
    fn unconfirmed_in_time_is_committed() {
        let mut b = book();
        let t = Instant::now();
        b.originate(key(1), msg(1), vec![2], 1, vec![], 7, true, t);
        assert!(b.tick(t + Duration::from_millis(500)).is_empty());
        assert_eq!(
            b.tick(t + Duration::from_millis(1000)),
            vec![Effect::Commit(key(1), msg(1))]
        );
        // A late confirmation changes nothing; the commit's outcome acks,
        // and the session here gets it (queued, so removed once acked).
        assert!(b.confirmed(&key(1), 2).is_empty());
        assert_eq!(
            b.committed(&key(1), Guarded::Safe),
            vec![
                Effect::Outcome(7, Guarded::Safe),
                Effect::Stored(vec![2], key(1)),
                Effect::Release(key(1))
            ]
        );
    }

    #[test]
    fn primary_commits_before_keepers() {
        let mut b = book();
        let t = Instant::now();
        b.hold(key(1), msg(1), vec![1], true, t);
        b.hold(key(2), msg(2), vec![1], false, t);
        let at = |s| t + Duration::from_secs(s);
        assert!(b.tick(at(2)).is_empty());
        assert_eq!(b.tick(at(3)), vec![Effect::Commit(key(1), msg(1))]);
        assert_eq!(b.tick(at(6)), vec![Effect::Commit(key(2), msg(2))]);
        // Nothing is committed twice.
        assert!(b.tick(at(60)).is_empty());
    }

    #[test]
    fn delivered_while_committing_is_removed_at_once() {
        let mut b = book();
        let t = Instant::now();
        b.hold(key(1), msg(1), vec![1], true, t);
        assert_eq!(b.release(&key(1)), vec![Effect::Commit(key(1), msg(1))]);
        assert_eq!(b.delivered(&key(1)), vec![Effect::Remove(key(1))]);
        // Asked once only.
        assert!(b.delivered(&key(1)).is_empty());
        assert_eq!(
            b.committed(&key(1), Guarded::Safe),
            vec![Effect::Stored(vec![1], key(1)), Effect::Discard(key(1))]
        );
        // Delivered by another node's client while committing: removed
        // after the commit (that node's remover has nothing to wait for).
        b.hold(key(2), msg(2), vec![1], true, t);
        assert_eq!(b.release(&key(2)), vec![Effect::Commit(key(2), msg(2))]);
        assert!(b.done_elsewhere(&key(2)).is_empty());
        assert_eq!(
            b.committed(&key(2), Guarded::Safe),
            vec![
                Effect::Stored(vec![1], key(2)),
                Effect::Remove(key(2)),
                Effect::Release(key(2))
            ]
        );
    }

    #[test]
    fn stored_elsewhere_is_not_delivered() {
        // The bug this guards against: a holder that committed told the
        // others "done", and one whose own commit was in flight (or done)
        // then removed the message from the queue undelivered.
        let mut b = book();
        let t = Instant::now();
        b.hold(key(1), msg(1), vec![2], false, t);
        assert_eq!(b.release(&key(1)), vec![Effect::Commit(key(1), msg(1))]);
        assert!(b.stored_elsewhere(&key(1)).is_empty());
        assert_eq!(
            b.committed(&key(1), Guarded::Safe),
            vec![Effect::Stored(vec![2], key(1))]
        );
        // Unknown here: nothing to remove.
        assert!(b.stored_elsewhere(&key(1)).is_empty());
        // A held copy is dropped; a confirming one is safe (it is queued).
        b.hold(key(2), msg(2), vec![2], false, t);
        assert!(b.stored_elsewhere(&key(2)).is_empty());
        assert!(!b.holds(&key(2)));
        b.originate(key(3), msg(3), vec![2], 1, vec![], 5, true, t);
        assert_eq!(
            b.stored_elsewhere(&key(3)),
            vec![Effect::Outcome(5, Guarded::Safe), Effect::Release(key(3))]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn done_from_a_peer_drops_without_telling_anyone() {
        let mut b = book();
        b.hold(key(1), msg(1), vec![1, 3], false, Instant::now());
        assert!(b.done_elsewhere(&key(1)).is_empty());
        assert!(b.is_empty());
        // Unknown here: maybe a commit of ours made it queued.
        assert_eq!(
            b.done_elsewhere(&key(1)),
            vec![Effect::RemoveIfQueued(key(1))]
        );
        assert_eq!(b.delivered(&key(2)), vec![Effect::Remove(key(2))]);
    }

    #[test]
    fn a_notice_before_its_copy_means_the_copy_is_not_kept() {
        // The keeper hears "delivered" from the recipient's node before the
        // sender's HOLD arrives (two links): the copy must not be kept, or
        // its timeout commits it and the client gets it twice.
        let mut b = book();
        let t = Instant::now();
        assert_eq!(
            b.done_elsewhere(&key(1)),
            vec![Effect::RemoveIfQueued(key(1))]
        );
        b.hold(key(1), msg(1), vec![1, 2], false, t);
        assert!(!b.holds(&key(1)));
        assert!(b.stored_elsewhere(&key(2)).is_empty());
        b.hold(key(2), msg(2), vec![1, 2], false, t);
        assert!(!b.holds(&key(2)));
        assert!(b.tick(t + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn peer_down_commits_what_it_shared() {
        let mut b = book();
        let t = Instant::now();
        b.hold(key(1), msg(1), vec![2], true, t);
        b.hold(key(2), msg(2), vec![3], true, t);
        b.originate(key(3), msg(3), vec![2], 1, vec![], 9, true, t);
        let mut e = b.peer_down(2);
        e.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            e,
            vec![
                Effect::Commit(key(1), msg(1)),
                Effect::Commit(key(3), msg(3))
            ]
        );
        assert!(b.holds(&key(2)));
    }

    #[test]
    fn release_account_and_refused_commit() {
        let mut b = book();
        let t = Instant::now();
        b.hold(key(1), msg(1), vec![2], true, t);
        b.hold(key(2), msg(2), vec![2], false, t);
        b.hold(("eve@x".into(), "m9".into()), msg(9), vec![2], true, t);
        assert_eq!(
            b.release_account("bob@x"),
            vec![Effect::Commit(key(1), msg(1))]
        );
        let refused = Guarded::Refused(crate::xmpp::StanzaError::new(
            crate::xmpp::StanzaCondition::ResourceConstraint,
        ));
        // Refused: the others keep theirs (nothing to tell); the session
        // here gets it rather than nobody.
        assert_eq!(
            b.committed(&key(1), refused.clone()),
            vec![Effect::Release(key(1))]
        );
        assert_eq!(b.len(), 2);
        // Refused where the sender waits: it is told, and nothing written
        // here or by the other holders.
        b.originate(key(5), msg(5), vec![2, 3], 2, vec![], 7, true, t);
        assert!(b.confirmed(&key(5), 2).is_empty());
        assert_eq!(
            b.tick(t + Duration::from_secs(1)),
            vec![Effect::Commit(key(5), msg(5))]
        );
        assert!(b.is_committing(&key(5)));
        assert_eq!(
            b.committed(&key(5), refused.clone()),
            vec![
                Effect::Outcome(7, refused),
                Effect::Failed(vec![2, 3], key(5)),
                Effect::Discard(key(5))
            ]
        );
        let mut k = book();
        k.hold(key(5), msg(5), vec![1], true, t);
        assert_eq!(k.failed_elsewhere(&key(5)), vec![Effect::Discard(key(5))]);
        assert!(k.is_empty());
    }

    #[test]
    fn the_recipients_node_writes_only_what_the_senders_node_made_safe() {
        // The duplicates this guards against: the recipient's node wrote
        // a copy whose confirmation never reached the sender's node (a
        // one-way cut); that node committed it in doubt, and the client
        // got it again from the queue at its next session elsewhere.
        let mut b = book();
        let t = Instant::now();
        assert!(b.hold(key(1), msg(1), vec![1], true, t).is_empty());
        assert!(b.tick(t + Duration::from_secs(2)).is_empty());
        assert_eq!(b.safe(&key(1), t), vec![Effect::Release(key(1))]);
        // Once only.
        assert!(b.safe(&key(1), t).is_empty());
        assert_eq!(b.delivered(&key(1)), vec![Effect::Done(vec![1], key(1))]);
        // Never made safe: committed by its timeout, written after that.
        assert!(b.hold(key(2), msg(2), vec![1], true, t).is_empty());
        assert_eq!(
            b.tick(t + Duration::from_secs(3)),
            vec![Effect::Commit(key(2), msg(2))]
        );
        assert_eq!(
            b.committed(&key(2), Guarded::Safe),
            vec![Effect::Stored(vec![1], key(2)), Effect::Release(key(2))]
        );
        // Queued by another holder, or delivered to another resource:
        // written here too.
        b.hold(key(3), msg(3), vec![1], true, t);
        assert_eq!(b.stored_elsewhere(&key(3)), vec![Effect::Release(key(3))]);
        b.hold(key(4), msg(4), vec![1, 3], true, t);
        assert_eq!(b.done_elsewhere(&key(4)), vec![Effect::Release(key(4))]);
        // A keeper has nothing to write.
        b.hold(key(5), msg(5), vec![1], false, t);
        assert!(b.safe(&key(5), t).is_empty());
        assert!(b.done_elsewhere(&key(5)).is_empty());
    }

    #[test]
    fn the_senders_node_tells_the_recipients_nodes_once_safe() {
        let mut b = book();
        let t = Instant::now();
        b.originate(key(1), msg(1), vec![2, 3], 1, vec![2, 3], 7, false, t);
        assert_eq!(
            b.confirmed(&key(1), 2),
            vec![
                Effect::Outcome(7, Guarded::Safe),
                Effect::Safe(vec![2, 3], key(1))
            ]
        );
        assert!(b.confirmed(&key(1), 3).is_empty());
        // A one-node cluster: safe at once.
        assert_eq!(
            b.originate(key(2), msg(2), vec![], 0, vec![], 8, true, t),
            vec![Effect::Outcome(8, Guarded::Safe), Effect::Release(key(2))]
        );
    }

    #[test]
    fn a_safe_notice_before_its_copy_is_kept() {
        let mut b = book();
        let t = Instant::now();
        assert!(b.safe(&key(1), t).is_empty());
        assert_eq!(
            b.hold(key(1), msg(1), vec![1], true, t),
            vec![Effect::Release(key(1))]
        );
        b.delivered(&key(1));
        // Forgotten after a while.
        assert!(b.safe(&key(2), t).is_empty());
        assert!(b.tick(t + Duration::from_secs(13)).is_empty());
        assert!(b.hold(key(2), msg(2), vec![1], true, t).is_empty());
    }

    #[test]
    fn a_released_copy_gets_its_full_time_to_be_acknowledged() {
        let mut b = book();
        let t = Instant::now();
        b.hold(key(1), msg(1), vec![1], true, t);
        let at = |ms| t + Duration::from_millis(ms);
        assert_eq!(b.safe(&key(1), at(2500)), vec![Effect::Release(key(1))]);
        assert!(b.tick(at(3000)).is_empty());
        assert_eq!(b.tick(at(5500)), vec![Effect::Commit(key(1), msg(1))]);
    }

    #[test]
    fn memory_is_bounded() {
        let mut b: Book<u32> = Book::new(15, Timeouts::default());
        assert!(b.has_room(10));
        b.hold(key(1), msg(1), vec![2], true, Instant::now());
        assert!(!b.has_room(10));
        b.done_elsewhere(&key(1));
        assert!(b.has_room(15));
    }
}
