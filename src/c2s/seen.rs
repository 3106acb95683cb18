//! The ids of replicated-queue messages a session wrote to its client, so
//! that each is written once, whether its live copy (custody) or its queued
//! copy (a pull) comes first; and those its client acknowledged lately
//! ([`RecentlyAcked`]), which go along when the session moves.
//!
//! Bounded in count ([`MAX_SEEN`]) as well as in age ([`SEEN_FOR`]): at 600
//! messages/s to one session, 120 s of ids was 72,000 entries per session,
//! hundreds of MB for a busy node. The unacknowledged window
//! (`sm_max_unacked`) is far smaller, so what is evicted was acknowledged
//! long ago.
//!
//! The set stores a 128-bit keyed fingerprint of each id, not the id: a
//! flat table of `u128` whose growth and rehashing touch no string and no
//! other allocation. With `Arc<str>` keys, fifty busy sessions reached the
//! same table size within a millisecond of each other and rehashed
//! thousands of strings each, stalling the node for tens of milliseconds
//! (the p99.9 at 20,000 msg/s in BENCHMARKS.md). Two different ids share a
//! fingerprint with probability about 2^-128 per pair (two SipHash keys
//! drawn when the table is made), far below the odds of a memory error.
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::time::{Duration, Instant};

/// Most ids a session remembers.
pub const MAX_SEEN: usize = 8192;
/// How long an id of a queued message is remembered after the client
/// acknowledged it (so a late live copy or a pull does not repeat it).
pub const SEEN_FOR: Duration = Duration::from_secs(120);

type Print = u128;

/// Hashes a fingerprint (already uniformly random) by taking its low bits.
#[derive(Default)]
struct PrintHasher(u64);

impl Hasher for PrintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

pub(crate) struct Seen {
    keys: (RandomState, RandomState),
    ids: HashSet<Print, BuildHasherDefault<PrintHasher>>,
    /// Insertion order with the time of each, for eviction and pruning;
    /// holds exactly the fingerprints of `ids`.
    order: VecDeque<(Print, Instant)>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            keys: (RandomState::new(), RandomState::new()),
            ids: HashSet::default(),
            order: VecDeque::new(),
        }
    }
}

impl Seen {
    fn print(&self, id: &str) -> Print {
        let hi = self.keys.0.hash_one(id);
        let lo = self.keys.1.hash_one(id);
        (u128::from(hi) << 64) | u128::from(lo)
    }

    /// Records `id`; false when it was already written to this session.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        let p = self.print(id);
        if !self.ids.insert(p) {
            return false;
        }
        self.order.push_back((p, Instant::now()));
        while self.order.len() > MAX_SEEN {
            if let Some((old, _)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.contains(&self.print(id))
    }

    /// Forgets ids older than [`SEEN_FOR`], oldest first, stopping at the
    /// first one still unacknowledged (in `unacked`) or young enough.
    /// Costs what it removes.
    pub(crate) fn prune<'a>(&mut self, unacked: impl Iterator<Item = &'a str>, now: Instant) {
        let keep: HashSet<Print> = unacked.map(|id| self.print(id)).collect();
        while let Some((front, at)) = self.order.front() {
            if now.duration_since(*at) < SEEN_FOR || keep.contains(front) {
                break;
            }
            self.ids.remove(front);
            self.order.pop_front();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.ids.len(), self.order.len());
        self.ids.len()
    }
}

/// The ids of messages this session's client acknowledged recently
/// (XEP-0198), newest last: a session that moves to another node takes
/// them along (`SessionHandoff::removing`), so the new node neither writes
/// them again nor leaves them queued. The ack removes a live copy by a
/// notice to its other holder; that holder may have committed its copy to
/// the queue meanwhile (this node paused past `keeper_hold`: jepsen-lite
/// 3n-pause-leader-s3 on 08db5bc, 15 copies), and the removal is then
/// the new node's to make.
#[derive(Debug, Default)]
pub struct RecentlyAcked(VecDeque<(Instant, String)>);

/// Most ids [`RecentlyAcked`] keeps...
pub const MAX_RECENTLY_ACKED: usize = 512;
/// ...and for how long (ten times the default `keeper_hold`, far less than
/// the new node's wait for an enqueue to remove, 120 s).
pub const RECENTLY_ACKED_FOR: Duration = Duration::from_secs(60);

impl RecentlyAcked {
    /// Remembers `ids`, acknowledged now.
    pub fn note(&mut self, ids: &[String]) {
        let now = Instant::now();
        self.forget_old(now);
        for id in ids {
            if self.0.len() == MAX_RECENTLY_ACKED {
                self.0.pop_front();
            }
            self.0.push_back((now, id.clone()));
        }
    }

    /// The ids acknowledged within [`RECENTLY_ACKED_FOR`], oldest first.
    pub fn ids(&mut self) -> Vec<String> {
        self.forget_old(Instant::now());
        self.0.iter().map(|(_, id)| id.clone()).collect()
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .0
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RECENTLY_ACKED_FOR)
        {
            self.0.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recently_acked_keeps_the_newest_in_order_up_to_its_cap() {
        let mut r = RecentlyAcked::default();
        r.note(&["a".to_string(), "b".to_string()]);
        assert_eq!(r.ids(), ["a", "b"]);
        let many: Vec<String> = (0..MAX_RECENTLY_ACKED).map(|i| format!("m{i}")).collect();
        r.note(&many);
        let ids = r.ids();
        assert_eq!(ids.len(), MAX_RECENTLY_ACKED);
        assert_eq!(
            ids.first().map(String::as_str),
            Some("m0"),
            "a and b evicted first"
        );
        assert_eq!(
            ids.last().map(String::as_str),
            Some(format!("m{}", MAX_RECENTLY_ACKED - 1).as_str())
        );
    }

    #[test]
    fn seen_ids_are_bounded_in_count_oldest_first() {
        let mut s = Seen::default();
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        for i in 0..MAX_SEEN {
            assert!(s.insert(&format!("m{i}")));
        }
        assert!(!s.contains("a"), "the oldest is evicted");
        assert!(s.contains("m0") && s.contains(&format!("m{}", MAX_SEEN - 1)));
        assert!(!s.contains("m-never"));
        assert_eq!(s.len(), MAX_SEEN);
        s.prune(std::iter::empty(), Instant::now());
        assert_eq!(s.len(), MAX_SEEN, "young ids stay");
    }

    #[test]
    fn pruning_drops_old_ids_up_to_the_first_unacknowledged() {
        let mut s = Seen::default();
        for id in ["a", "b", "c", "d"] {
            assert!(s.insert(id));
        }
        let later = Instant::now() + SEEN_FOR + Duration::from_secs(1);
        s.prune(["c"].into_iter(), later);
        assert!(!s.contains("a") && !s.contains("b"));
        assert!(
            s.contains("c") && s.contains("d"),
            "kept from the first unacked on"
        );
        s.prune(std::iter::empty(), later);
        assert_eq!(s.len(), 0);
        assert!(s.insert("a"), "forgotten ids may come again");
    }

    #[test]
    fn fingerprints_of_distinct_ids_differ() {
        let s = Seen::default();
        let prints: HashSet<Print> = (0..100_000).map(|i| s.print(&format!("id{i}"))).collect();
        assert_eq!(prints.len(), 100_000);
        assert_eq!(s.print("x"), s.print("x"));
    }
}
