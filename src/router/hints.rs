//! Delivery hints: which queued messages a resumable XEP-0198 stream wrote
//! to its client, by number, kept by the *other* nodes.
//!
//! When a node dies or is cut off, its clients resume elsewhere; the
//! resumption fails there (the session lived on the dead node), the client
//! binds again and gets everything it had not acknowledged from its queue.
//! Messages written just before the failure, that the client read but
//! whose acknowledgement never reached the server, would come twice. The
//! client's `<resume h='…'/>` says how many stanzas it had; with these
//! hints the node it resumes on knows which queued messages those numbers
//! were, and does not send them again (XEP-0198 §5 numbering). A hint only
//! ever says "stanza *n* was message *id*", so using it can only skip what
//! the client's own count says it received.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one session tells its peers after a burst of writes (its wire
/// form is the mesh's: a `HINT` envelope carries it as JSON).
pub use crate::mesh::Hint;

struct Entry {
    bare: String,
    written: VecDeque<(u32, String)>,
    updated: Instant,
}

/// Hints from peers, by stream id; bounded in age and size.
pub struct Hints {
    inner: Mutex<HashMap<String, Entry>>,
    keep_for: Duration,
}

/// Most streams, and numbers per stream, kept.
const MAX_STREAMS: usize = 100_000;
const MAX_PER_STREAM: usize = 2_000;

/// `a <= b` in XEP-0198's numbering modulo 2^32.
fn at_or_before(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

impl Hints {
    pub fn new(keep_for: Duration) -> Self {
        Hints {
            inner: Mutex::new(HashMap::new()),
            keep_for,
        }
    }

    pub fn record(&self, h: Hint) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_STREAMS && !map.contains_key(&h.sm) {
            let keep = self.keep_for;
            map.retain(|_, e| e.updated.elapsed() < keep);
            if map.len() >= MAX_STREAMS {
                return;
            }
        }
        let e = map.entry(h.sm).or_insert_with(|| Entry {
            bare: h.bare.clone(),
            written: VecDeque::new(),
            updated: Instant::now(),
        });
        if e.bare != h.bare {
            return;
        }
        e.updated = Instant::now();
        e.written.extend(h.written);
        while e
            .written
            .front()
            .is_some_and(|(n, _)| at_or_before(*n, h.acked))
        {
            e.written.pop_front();
        }
        while e.written.len() > MAX_PER_STREAM {
            e.written.pop_front();
        }
    }

    /// The queued messages stream `sm` of `bare` wrote to its client with
    /// numbers up to the client's `h` (it had them); forgets the stream.
    pub fn take(&self, sm: &str, bare: &str, h: u32) -> Vec<String> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(sm) {
            Some(e) if e.bare == bare && e.updated.elapsed() < self.keep_for => e
                .written
                .into_iter()
                .filter(|(n, _)| at_or_before(*n, h))
                .map(|(_, id)| id)
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(written: &[(u32, &str)], acked: u32) -> Hint {
        Hint {
            sm: "s1".into(),
            bare: "b@x".into(),
            written: written.iter().map(|(n, i)| (*n, i.to_string())).collect(),
            acked,
        }
    }

    #[test]
    fn the_clients_h_selects_what_it_had() {
        let hints = Hints::new(Duration::from_secs(60));
        hints.record(hint(&[(3, "a"), (5, "b")], 0));
        hints.record(hint(&[(7, "c"), (8, "d")], 3));
        // Another account cannot use the stream's hints.
        assert!(hints.take("s1", "other@x", 100).is_empty());
        hints.record(hint(&[(3, "a"), (5, "b"), (7, "c"), (8, "d")], 3));
        assert_eq!(
            hints.take("s1", "b@x", 7),
            ["b", "c"],
            "a was acked, d not had"
        );
        assert!(hints.take("s1", "b@x", 7).is_empty(), "taken once");
    }

    #[test]
    fn numbers_wrap() {
        let hints = Hints::new(Duration::from_secs(60));
        hints.record(hint(&[(u32::MAX, "a"), (0, "b"), (1, "c")], u32::MAX - 1));
        assert_eq!(hints.take("s1", "b@x", 0), ["a", "b"]);
    }
}
