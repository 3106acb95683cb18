//! Copies in custody kept back from the sessions of this node until
//! custody releases them (`custody`: only a safe copy is written), and
//! written in the order they were routed: one sender's messages reach a
//! session in the order it sent them (RFC 6120 §10.1, in-order
//! processing), although each copy is released on its own (its keeper's
//! confirmation, its commit). No I/O: the router writes what this returns.
//!
//! A copy held up longer than [`ORDER_WAIT`] (its commit waits for a
//! majority) no longer holds back the same sender's later copies: order is
//! given up before liveness. A copy custody no longer waits to release
//! (a bug, not a design case) is written by [`Parked::sweep`].
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::custody::Key;
use crate::xmpp::Element;

/// Longest a not yet released copy holds back the same sender's later
/// copies to the same session.
pub const ORDER_WAIT: Duration = Duration::from_secs(2);
/// A kept copy custody does not know as waiting is written after this.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(1);

/// A session here: its full JID and session id.
pub type Slot = (String, u64);

struct Entry {
    key: Key,
    /// The sender (the stanza's `from`): order is kept per sender.
    from: String,
    el: Element,
    since: Instant,
    ready: bool,
}

/// A copy to write now.
#[derive(Debug)]
pub struct Write {
    pub key: Key,
    pub full: String,
    pub session: u64,
    pub el: Element,
}

/// The copies kept back, per session, in routing order.
#[derive(Default)]
pub struct Parked {
    slots: HashMap<Slot, VecDeque<Entry>>,
    /// The sessions each key has a copy kept for.
    index: HashMap<Key, Vec<Slot>>,
}

impl Parked {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.values().map(VecDeque::len).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Keeps `el` (copy `key`) for session `session` of `full`.
    pub fn park(&mut self, key: Key, full: &str, session: u64, el: Element, now: Instant) {
        let slot = (full.to_string(), session);
        let from = el.attr("from").unwrap_or_default().to_string();
        self.slots
            .entry(slot.clone())
            .or_default()
            .push_back(Entry {
                key: key.clone(),
                from,
                el,
                since: now,
                ready: false,
            });
        let slots = self.index.entry(key).or_default();
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }

    /// Copy `key` may be written: what can be written now, in order.
    pub fn release(&mut self, key: &Key, now: Instant) -> Vec<Write> {
        let slots = self.index.get(key).cloned().unwrap_or_default();
        for slot in &slots {
            if let Some(q) = self.slots.get_mut(slot) {
                for e in q.iter_mut().filter(|e| &e.key == key) {
                    e.ready = true;
                }
            }
        }
        slots.iter().flat_map(|s| self.flush(s, now)).collect()
    }

    /// Copy `key` is not to be written (the sender was told it failed, or
    /// the client here had it): forgotten, and what waited behind it is
    /// written.
    pub fn discard(&mut self, key: &Key, now: Instant) -> Vec<Write> {
        let Some(slots) = self.index.remove(key) else {
            return Vec::new();
        };
        for slot in &slots {
            if let Some(q) = self.slots.get_mut(slot) {
                q.retain(|e| &e.key != key);
            }
        }
        slots.iter().flat_map(|s| self.flush(s, now)).collect()
    }

    /// Writes what waited too long: copies custody does not know as
    /// waiting (`waiting` says whether it does), and copies held back
    /// behind one older than [`ORDER_WAIT`].
    pub fn sweep(&mut self, now: Instant, waiting: impl Fn(&Key) -> bool) -> Vec<Write> {
        let mut due = Vec::new();
        for (slot, q) in self.slots.iter_mut() {
            let mut touched = false;
            for e in q.iter_mut() {
                let age = now.saturating_duration_since(e.since);
                if !e.ready && age > ORPHAN_AFTER && !waiting(&e.key) {
                    e.ready = true;
                    touched = true;
                }
                if age > ORDER_WAIT {
                    touched = true;
                }
            }
            if touched {
                due.push(slot.clone());
            }
        }
        due.iter().flat_map(|s| self.flush(s, now)).collect()
    }

    /// Takes from `slot` every ready copy that no earlier copy from the
    /// same sender (still to be released, and younger than
    /// [`ORDER_WAIT`]) holds back.
    fn flush(&mut self, slot: &Slot, now: Instant) -> Vec<Write> {
        let Some(q) = self.slots.get_mut(slot) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // The usual case: copies released in the order they came.
        while q.front().is_some_and(|e| e.ready) {
            out.extend(q.pop_front());
        }
        if !q.is_empty() {
            let mut blocked: HashSet<String> = HashSet::new();
            let mut kept = VecDeque::with_capacity(q.len());
            for e in q.drain(..) {
                if !e.ready {
                    if now.saturating_duration_since(e.since) <= ORDER_WAIT {
                        blocked.insert(e.from.clone());
                    }
                    kept.push_back(e);
                } else if blocked.contains(&e.from) {
                    kept.push_back(e);
                } else {
                    out.push(e);
                }
            }
            *q = kept;
        }
        if q.is_empty() {
            self.slots.remove(slot);
        }
        let mut writes = Vec::with_capacity(out.len());
        for e in out {
            if let Some(slots) = self.index.get_mut(&e.key) {
                slots.retain(|s| s != slot);
                if slots.is_empty() {
                    self.index.remove(&e.key);
                }
            }
            writes.push(Write {
                key: e.key,
                full: slot.0.clone(),
                session: slot.1,
                el: e.el,
            });
        }
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::ns;

    fn key(i: u32) -> Key {
        ("bob@x".into(), format!("m{i}"))
    }

    fn msg(from: &str, i: u32) -> Element {
        Element::new("message", ns::CLIENT)
            .with_attr("from", from)
            .with_attr("id", format!("m{i}"))
    }

    fn ids(w: &[Write]) -> Vec<String> {
        w.iter().map(|w| w.key.1.clone()).collect()
    }

    #[test]
    fn one_senders_copies_are_written_in_routing_order() {
        let mut p = Parked::default();
        let t = Instant::now();
        for i in 1..=3 {
            p.park(key(i), "bob@x/a", 7, msg("alice@x/d", i), t);
        }
        // m2 and m3 are safe before m1 (another keeper answered first).
        assert!(p.release(&key(2), t).is_empty());
        assert!(p.release(&key(3), t).is_empty());
        assert_eq!(ids(&p.release(&key(1), t)), ["m1", "m2", "m3"]);
        assert!(p.is_empty());
        assert!(p.index.is_empty());
    }

    #[test]
    fn another_sender_is_not_held_back() {
        let mut p = Parked::default();
        let t = Instant::now();
        p.park(key(1), "bob@x/a", 7, msg("alice@x/d", 1), t);
        p.park(key(2), "bob@x/a", 7, msg("carol@x/d", 2), t);
        let w = p.release(&key(2), t);
        assert_eq!(ids(&w), ["m2"]);
        assert_eq!((w[0].full.as_str(), w[0].session), ("bob@x/a", 7));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_discarded_copy_lets_the_next_go() {
        let mut p = Parked::default();
        let t = Instant::now();
        p.park(key(1), "bob@x/a", 7, msg("alice@x/d", 1), t);
        p.park(key(2), "bob@x/a", 7, msg("alice@x/d", 2), t);
        assert!(p.release(&key(2), t).is_empty());
        assert_eq!(ids(&p.discard(&key(1), t)), ["m2"]);
        assert!(p.is_empty());
    }

    #[test]
    fn two_sessions_of_one_key_are_released_together() {
        let mut p = Parked::default();
        let t = Instant::now();
        p.park(key(1), "bob@x/a", 7, msg("alice@x/d", 1), t);
        p.park(key(1), "bob@x/b", 8, msg("alice@x/d", 1), t);
        let mut w: Vec<_> = p.release(&key(1), t).into_iter().map(|w| w.full).collect();
        w.sort();
        assert_eq!(w, ["bob@x/a", "bob@x/b"]);
        assert!(p.is_empty());
    }

    #[test]
    fn order_is_given_up_after_a_while_and_orphans_are_written() {
        let mut p = Parked::default();
        let t = Instant::now();
        p.park(key(1), "bob@x/a", 7, msg("alice@x/d", 1), t);
        p.park(key(2), "bob@x/a", 7, msg("alice@x/d", 2), t);
        assert!(p.release(&key(2), t).is_empty());
        // m1 still waits in custody (its commit): m2 goes after ORDER_WAIT.
        let still = |_: &Key| true;
        assert!(p.sweep(t + Duration::from_millis(500), still).is_empty());
        let w = p.sweep(t + ORDER_WAIT + Duration::from_millis(1), still);
        assert_eq!(ids(&w), ["m2"]);
        // m1 is not written while custody waits to release it ...
        assert!(p.sweep(t + Duration::from_secs(60), still).is_empty());
        // ... and is once custody forgot it.
        let w = p.sweep(t + Duration::from_secs(60), |_| false);
        assert_eq!(ids(&w), ["m1"]);
        assert!(p.is_empty());
    }
}
