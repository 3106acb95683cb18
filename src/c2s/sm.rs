//! XEP-0198 stream management of one session, as a state machine with no
//! I/O: the session task feeds it events (a stanza received from the
//! client, one of those made safe, an `<r/>`, an `<a h/>`, a stanza written
//! to the client, a resumption) and acts on what it returns.
//!
//! Two counters, one per direction (XEP-0198 §4):
//! - **Inbound** (`h` we report): a stanza from the client counts as
//!   handled only once it is *safe*. Most stanzas are safe when their
//!   handler returns; a message routed to an account is safe once it is in
//!   the recipient's replicated queue (see `router::guard`), which happens
//!   in parallel with its live delivery. So `h` is the length of the
//!   longest prefix of received stanzas that are all safe, and an `<r/>`
//!   that arrives while some are not is answered as soon as they are. The
//!   server never acknowledges what a minority of nodes could lose.
//! - **Outbound**: stanzas written to the client and not acknowledged, in
//!   order, each with the replicated queue entry that still holds it (if
//!   any); the client's `<a h/>` releases them. After each burst of writes
//!   the session asks for an ack (`<r/>`), as Prosody does, so a client that
//!   closes right after reading has acknowledged what it read.
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::xmpp::{ns, Element, StreamCondition, StreamError};

/// How long an `<r/>` waits for unsafe stanzas before it is answered with
/// what is safe so far (the rest is acknowledged later, unasked: §4 lets
/// either side send `<a/>` at any time).
pub const ACK_DEFER_MAX: Duration = Duration::from_secs(2);

/// A stanza written to the client and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub el: Element,
    /// The id of the entry in the recipient's replicated queue that holds
    /// this stanza until the client acknowledges it, if one does.
    pub queued_id: Option<String>,
}

/// Protocol errors a client can make (each ends the stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmError {
    /// §4: an `h` higher than the number of stanzas sent (`send_count`,
    /// mod 2^32, as on the wire).
    #[error("acknowledged {acked} stanzas, only {unacked} were unacknowledged")]
    HandledCountTooHigh {
        acked: u32,
        unacked: u32,
        h: u32,
        send_count: u32,
    },
}

impl SmError {
    /// The stream error that ends the stream. XEP-0198 §4: "the server
    /// MUST respond with an 'undefined-condition' stream error that
    /// includes a <handled-count-too-high/> element qualified by the
    /// 'urn:xmpp:sm:3' namespace, whose 'h' attribute is the value of 'h'
    /// received and whose 'send-count' attribute is the number of stanzas
    /// the server sent".
    pub fn stream_error(&self) -> StreamError {
        match self {
            SmError::HandledCountTooHigh { h, send_count, .. } => {
                StreamError::with_text(StreamCondition::UndefinedCondition, self.to_string())
                    .with_app(
                        Element::new("handled-count-too-high", ns::SM)
                            .with_attr("h", h.to_string())
                            .with_attr("send-count", send_count.to_string()),
                    )
            }
        }
    }
}

/// The stream management state of one session.
#[derive(Debug)]
pub struct StreamMgmt {
    id: String,
    resumable: bool,
    /// Stanzas received from the client (never wraps in practice; `h` on
    /// the wire is this modulo 2^32).
    received: u64,
    /// Received stanzas (by their count) not yet safe.
    unsafe_counts: BTreeSet<u64>,
    /// An `<r/>` not yet answered: the count it asked about, and when.
    owed: Option<(u64, Instant)>,
    /// Received stanzas after the safe prefix (count, `id` attribute): what
    /// a resuming client will send again, since our `h` did not count it.
    tail: VecDeque<(u64, Option<String>)>,
    /// After a resumption: the `id`s of the stanzas the client is expected
    /// to send again, oldest first. They were handled already.
    resent: VecDeque<Option<String>>,
    /// Stanzas written to the client.
    sent: u64,
    /// Written and not acknowledged, oldest first: the first is number
    /// `sent - unacked.len() + 1`.
    unacked: VecDeque<Outbound>,
    /// `sent` when we last asked for an ack.
    requested_at: u64,
}

impl StreamMgmt {
    pub fn new(id: String, resumable: bool) -> Self {
        StreamMgmt {
            id,
            resumable,
            received: 0,
            unsafe_counts: BTreeSet::new(),
            owed: None,
            tail: VecDeque::new(),
            resent: VecDeque::new(),
            sent: 0,
            unacked: VecDeque::new(),
            requested_at: 0,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn resumable(&self) -> bool {
        self.resumable
    }

    /// A stanza arrived from the client (`id`: its `id` attribute).
    /// Returns its count; when `safe` is false, [`StreamMgmt::on_safe`]
    /// must be called with it later.
    pub fn on_received(&mut self, safe: bool, id: Option<String>) -> u64 {
        self.received += 1;
        if !safe {
            self.unsafe_counts.insert(self.received);
        }
        self.tail.push_back((self.received, id));
        self.trim_tail();
        self.received
    }

    /// Whether a stanza from the client (`id`: its `id` attribute) is one
    /// it sends again after a resumption (XEP-0198 §5: everything our `h`
    /// did not count), already handled here: it is neither counted nor
    /// handled a second time. A stanza that does not match ends the
    /// retransmission (what follows is new).
    pub fn is_resent(&mut self, id: Option<&str>) -> bool {
        match self.resent.front() {
            Some(expected) if expected.as_deref() == id => {
                self.resent.pop_front();
                true
            }
            Some(_) => {
                self.resent.clear();
                false
            }
            None => false,
        }
    }

    fn trim_tail(&mut self) {
        let upto = self.safe_upto();
        while self.tail.front().is_some_and(|(c, _)| *c <= upto) {
            self.tail.pop_front();
        }
    }

    /// Received stanzas not yet safe.
    pub fn unsafe_count(&self) -> usize {
        self.unsafe_counts.len()
    }

    /// Received stanzas after the safe prefix (kept for a resumption).
    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }

    /// Our `h`: received stanzas that are handled and safe, every one
    /// before them too.
    pub fn h(&self) -> u32 {
        self.safe_upto() as u32
    }

    fn safe_upto(&self) -> u64 {
        match self.unsafe_counts.first() {
            Some(first) => first - 1,
            None => self.received,
        }
    }

    /// Stanza `count` is now safe. Returns the `h` to send if that answers
    /// an owed `<r/>`.
    pub fn on_safe(&mut self, count: u64) -> Option<u32> {
        self.unsafe_counts.remove(&count);
        self.trim_tail();
        match self.owed {
            Some((asked, _)) if self.safe_upto() >= asked => {
                self.owed = None;
                Some(self.h())
            }
            _ => None,
        }
    }

    /// The client asked for an ack (`<r/>`). Returns the `h` to answer now,
    /// or `None` when stanzas it covers are not safe yet (answered by
    /// [`StreamMgmt::on_safe`] or [`StreamMgmt::overdue_ack`]).
    pub fn on_request(&mut self, now: Instant) -> Option<u32> {
        if self.safe_upto() >= self.received {
            self.owed = None;
            return Some(self.h());
        }
        // A later request subsumes an earlier one; keep the earlier time.
        let since = self.owed.map(|(_, t)| t).unwrap_or(now);
        self.owed = Some((self.received, since));
        None
    }

    /// An owed ack that has waited [`ACK_DEFER_MAX`]: answer with what is
    /// safe so far (the request stays owed for the rest).
    pub fn overdue_ack(&mut self, now: Instant) -> Option<u32> {
        match self.owed {
            Some((asked, since)) if now.duration_since(since) >= ACK_DEFER_MAX => {
                self.owed = Some((asked, now));
                Some(self.h())
            }
            _ => None,
        }
    }

    /// A stanza was written to the client.
    pub fn on_sent(&mut self, out: Outbound) {
        self.sent += 1;
        self.unacked.push_back(out);
    }

    /// Written stanzas not acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    pub fn unacked(&self) -> impl Iterator<Item = &Outbound> {
        self.unacked.iter()
    }

    /// The number (XEP-0198, modulo 2^32) of the last stanza written.
    pub fn sent_number(&self) -> u64 {
        self.sent
    }

    /// The highest number the client acknowledged.
    pub fn acked_number(&self) -> u32 {
        (self.sent - self.unacked.len() as u64) as u32
    }

    /// Unacknowledged queued messages written after number `after`, with
    /// their numbers.
    pub fn queued_after(&self, after: u64) -> Vec<(u32, String)> {
        let first = self.sent - self.unacked.len() as u64 + 1;
        self.unacked
            .iter()
            .enumerate()
            .map(|(i, o)| (first + i as u64, o))
            .filter(|(n, _)| *n > after)
            .filter_map(|(n, o)| o.queued_id.clone().map(|id| (n as u32, id)))
            .collect()
    }

    /// The client acknowledged its count `h`: returns the stanzas this
    /// releases, oldest first. An `h` behind an earlier one releases
    /// nothing; one ahead of what was sent is an error (§4).
    pub fn on_ack(&mut self, h: u32) -> Result<Vec<Outbound>, SmError> {
        let n = self.ack_span(h)?;
        Ok(self.unacked.drain(..n).collect())
    }

    /// Whether [`on_ack`](Self::on_ack) accepts `h` (it does not count
    /// more than was written).
    pub fn ack_valid(&self, h: u32) -> bool {
        self.ack_span(h).is_ok()
    }

    /// How many unacknowledged stanzas `h` releases.
    fn ack_span(&self, h: u32) -> Result<usize, SmError> {
        let unacked = self.unacked.len() as u32;
        let first = (self.sent - self.unacked.len() as u64) as u32;
        let n = h.wrapping_sub(first);
        if n > unacked {
            if n > u32::MAX / 2 {
                // Behind: an older count (a resumption's h can be).
                return Ok(0);
            }
            return Err(SmError::HandledCountTooHigh {
                acked: n,
                unacked,
                h,
                send_count: self.sent as u32,
            });
        }
        Ok(n as usize)
    }

    /// After a burst of writes: whether to ask the client for an ack now
    /// (once per burst, only with something unacknowledged).
    pub fn wants_request(&mut self) -> bool {
        if self.unacked.is_empty() || self.requested_at == self.sent {
            return false;
        }
        self.requested_at = self.sent;
        true
    }

    /// A resumption (§5) with the client's `h`: the stanzas it releases and
    /// the ones to send again, in order (they keep their numbers).
    pub fn on_resume(&mut self, h: u32) -> Result<(Vec<Outbound>, Vec<Element>), SmError> {
        let acked = self.on_ack(h)?;
        let again = self.unacked.iter().map(|o| o.el.clone()).collect();
        // The new connection has not been asked yet.
        self.requested_at = self.sent.wrapping_sub(1);
        self.owed = None;
        // The client sends again what our `h` (in `<resumed/>`) did not
        // count: those it sent us are handled already.
        self.resent = self.tail.iter().map(|(_, id)| id.clone()).collect();
        Ok((acked, again))
    }

    /// The unacknowledged stanzas, when the session ends.
    pub fn into_unacked(self) -> VecDeque<Outbound> {
        self.unacked
    }

    /// Whether everything received is handled and safe: our `h` counts it
    /// all, so a client resuming elsewhere sends nothing again.
    pub fn all_safe(&self) -> bool {
        self.unsafe_counts.is_empty() && self.tail.is_empty()
    }

    /// The client resumes this stream on another node with its `h`
    /// (`router::takeover`): returns the stanzas `h` releases and the state
    /// to hand over. Only when [`all_safe`](Self::all_safe): the other node
    /// cannot learn the outcome of stanzas still being made safe here.
    pub fn hand_off(&mut self, h: u32) -> Result<(Vec<Outbound>, SmHandoff), SmError> {
        let acked = self.on_ack(h)?;
        let handoff = SmHandoff {
            id: self.id.clone(),
            received: self.received,
            sent: self.sent,
            unacked: self
                .unacked
                .iter()
                .map(|o| (o.el.to_standalone_xml(), o.queued_id.clone()))
                .collect(),
        };
        Ok((acked, handoff))
    }

    /// The stream management of a session taken over from another node:
    /// resumable, counting on from where it was; `unacked` is the handed
    /// over list, parsed (the caller sends it again after `<resumed/>`).
    pub fn adopt(id: String, received: u64, sent: u64, unacked: Vec<Outbound>) -> Self {
        let unacked: VecDeque<Outbound> = unacked.into();
        // A list longer than what was sent cannot come from a real
        // session; keep the numbering consistent anyway.
        let sent = sent.max(unacked.len() as u64);
        StreamMgmt {
            id,
            resumable: true,
            received,
            unsafe_counts: BTreeSet::new(),
            owed: None,
            tail: VecDeque::new(),
            resent: VecDeque::new(),
            sent,
            unacked,
            // The new connection has not been asked yet.
            requested_at: sent.wrapping_sub(1),
        }
    }
}

/// The XEP-0198 state one node hands another when the client resumes there
/// (see [`StreamMgmt::hand_off`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SmHandoff {
    pub id: String,
    /// Stanzas received from the client (all safe).
    pub received: u64,
    /// Stanzas written to the client.
    pub sent: u64,
    /// Written and not acknowledged, oldest first: each stanza's XML and
    /// the queue entry that holds it, if any.
    pub unacked: Vec<(String, Option<String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::ns;

    #[test]
    fn a_stream_handed_to_another_node_counts_on_there() {
        let mut a = StreamMgmt::new("sm1".into(), true);
        a.on_received(true, Some("c1".into()));
        let c2 = a.on_received(false, Some("c2".into()));
        for i in 1..=4 {
            a.on_sent(msg(i));
        }
        // A stanza still being made safe: not handed over.
        assert!(!a.all_safe());
        a.on_safe(c2);
        assert!(a.all_safe());
        // The client had two of the four.
        let (released, h) = a.hand_off(2).unwrap();
        assert_eq!(ids(&released), ["1", "2"]);
        assert_eq!(h.received, 2);
        assert_eq!(h.sent, 4);
        assert_eq!(
            h.unacked.iter().map(|(_, q)| q.clone()).collect::<Vec<_>>(),
            [Some("q3".to_string()), Some("q4".to_string())]
        );
        let again: Vec<Outbound> = h
            .unacked
            .iter()
            .map(|(xml, q)| Outbound {
                el: crate::xmpp::parse_stanza(xml).unwrap(),
                queued_id: q.clone(),
            })
            .collect();
        let mut b = StreamMgmt::adopt(h.id.clone(), h.received, h.sent, again);
        assert_eq!(b.id(), "sm1");
        assert!(b.resumable());
        // `<resumed h>` on the new node is the old node's count.
        assert_eq!(b.h(), 2);
        assert_eq!(b.acked_number(), 2);
        assert_eq!(
            b.queued_after(2),
            [(3, "q3".to_string()), (4, "q4".to_string())]
        );
        // Sent again, not yet asked: the next burst asks.
        assert!(b.wants_request());
        // Numbering goes on: number 5 is the next stanza written.
        b.on_sent(msg(5));
        assert_eq!(b.sent_number(), 5);
        assert_eq!(ids(&b.on_ack(4).unwrap()), ["3", "4"]);
        assert!(b.on_ack(6).is_err());
        assert_eq!(ids(&b.on_ack(5).unwrap()), ["5"]);
        // Received stanzas count on too.
        assert_eq!(b.on_received(true, None), 3);
        assert_eq!(b.h(), 3);
        // An `h` the old node never sent is refused there.
        let mut c = StreamMgmt::new("sm2".into(), true);
        c.on_sent(msg(1));
        assert!(c.ack_valid(1) && !c.ack_valid(2));
        assert!(c.hand_off(2).is_err());
    }

    fn msg(i: u32) -> Outbound {
        Outbound {
            el: Element::new("message", ns::CLIENT).with_attr("id", i.to_string()),
            queued_id: Some(format!("q{i}")),
        }
    }

    fn ids(v: &[Outbound]) -> Vec<String> {
        v.iter()
            .map(|o| o.el.attr("id").unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn h_counts_only_a_safe_prefix() {
        let mut sm = StreamMgmt::new("s".into(), true);
        let now = Instant::now();
        sm.on_received(true, None);
        let two = sm.on_received(false, None);
        let three = sm.on_received(false, None);
        sm.on_received(true, None);
        assert_eq!(sm.h(), 1);
        // The request waits: stanzas 2 and 3 are not safe.
        assert_eq!(sm.on_request(now), None);
        // 3 safe first: still only the prefix up to 1.
        assert_eq!(sm.on_safe(three), None);
        assert_eq!(sm.h(), 1);
        // 2 safe: everything is, and the owed ack goes out.
        assert_eq!(sm.on_safe(two), Some(4));
        assert_eq!(sm.h(), 4);
        assert_eq!(sm.on_request(now), Some(4));
    }

    #[test]
    fn an_owed_ack_is_answered_when_its_stanzas_are_safe_not_later_ones() {
        let mut sm = StreamMgmt::new("s".into(), false);
        let now = Instant::now();
        let one = sm.on_received(false, None);
        assert_eq!(sm.on_request(now), None);
        let two = sm.on_received(false, None);
        // The request asked about 1 only.
        assert_eq!(sm.on_safe(one), Some(1));
        assert_eq!(sm.on_safe(two), None, "nothing owed any more");
        assert_eq!(sm.h(), 2);
    }

    #[test]
    fn an_overdue_ack_reports_the_safe_prefix_and_stays_owed() {
        let mut sm = StreamMgmt::new("s".into(), false);
        let t0 = Instant::now();
        sm.on_received(true, None);
        let two = sm.on_received(false, None);
        assert_eq!(sm.on_request(t0), None);
        assert_eq!(sm.overdue_ack(t0 + Duration::from_millis(10)), None);
        assert_eq!(sm.overdue_ack(t0 + ACK_DEFER_MAX), Some(1));
        assert_eq!(sm.overdue_ack(t0 + ACK_DEFER_MAX), None, "timer restarted");
        assert_eq!(sm.on_safe(two), Some(2));
    }

    #[test]
    fn after_a_resumption_what_h_did_not_count_is_recognised_when_sent_again() {
        let mut sm = StreamMgmt::new("s".into(), true);
        sm.on_received(true, Some("a".into()));
        let b = sm.on_received(false, Some("b".into()));
        sm.on_received(true, Some("c".into()));
        assert_eq!(sm.h(), 1);
        sm.on_resume(0).unwrap();
        // The client sends b and c again (our h said 1), then a new d.
        assert!(sm.is_resent(Some("b")));
        assert!(sm.is_resent(Some("c")));
        assert!(!sm.is_resent(Some("d")));
        sm.on_received(true, Some("d".into()));
        sm.on_safe(b);
        assert_eq!(sm.h(), 4, "b, c counted once; d after them");
        // A client that does not resend: the first other stanza ends it.
        let e = sm.on_received(false, Some("e".into()));
        sm.on_resume(0).unwrap();
        assert!(!sm.is_resent(Some("x")));
        assert!(!sm.is_resent(Some("e")), "expectation cleared");
        sm.on_safe(e);
    }

    #[test]
    fn acks_release_in_order_and_too_high_is_an_error() {
        let mut sm = StreamMgmt::new("s".into(), true);
        for i in 1..=5 {
            sm.on_sent(msg(i));
        }
        assert_eq!(ids(&sm.on_ack(2).unwrap()), ["1", "2"]);
        assert_eq!(sm.unacked_len(), 3);
        assert!(
            sm.on_ack(1).unwrap().is_empty(),
            "an older h releases nothing"
        );
        assert_eq!(ids(&sm.on_ack(2).unwrap()), Vec::<String>::new());
        assert_eq!(
            sm.on_ack(6).err(),
            Some(SmError::HandledCountTooHigh {
                acked: 4,
                unacked: 3,
                h: 6,
                send_count: 5,
            })
        );
        let xml = sm.on_ack(6).expect_err("too high").stream_error().to_xml();
        assert!(xml.contains("<undefined-condition "), "{xml}");
        assert!(
            xml.contains(r#"<handled-count-too-high xmlns="urn:xmpp:sm:3" h="6" send-count="5"/>"#),
            "{xml}"
        );
        assert_eq!(ids(&sm.on_ack(5).unwrap()), ["3", "4", "5"]);
    }

    #[test]
    fn counts_wrap_at_two_to_the_32() {
        let mut sm = StreamMgmt::new("s".into(), true);
        sm.sent = u32::MAX as u64 - 1;
        sm.on_sent(msg(1)); // number 2^32 - 1
        sm.on_sent(msg(2)); // number 2^32, which is 0 on the wire
        sm.on_sent(msg(3)); // 1
        assert_eq!(ids(&sm.on_ack(0).unwrap()), ["1", "2"]);
        assert_eq!(ids(&sm.on_ack(1).unwrap()), ["3"]);
        sm.received = u32::MAX as u64;
        sm.on_received(true, None);
        assert_eq!(sm.h(), 0);
    }

    #[test]
    fn queued_messages_are_listed_with_their_numbers() {
        let mut sm = StreamMgmt::new("s".into(), true);
        sm.on_sent(msg(1));
        sm.on_sent(Outbound {
            el: Element::new("presence", ns::CLIENT),
            queued_id: None,
        });
        sm.on_sent(msg(3));
        assert_eq!(
            sm.queued_after(0),
            [(1, "q1".to_string()), (3, "q3".to_string())]
        );
        assert_eq!(sm.queued_after(1), [(3, "q3".to_string())]);
        sm.on_ack(1).unwrap();
        assert_eq!(sm.acked_number(), 1);
        assert_eq!(sm.queued_after(0), [(3, "q3".to_string())]);
        assert_eq!(sm.sent_number(), 3);
    }

    #[test]
    fn an_ack_is_requested_once_per_burst() {
        let mut sm = StreamMgmt::new("s".into(), true);
        assert!(!sm.wants_request(), "nothing sent");
        sm.on_sent(msg(1));
        sm.on_sent(msg(2));
        assert!(sm.wants_request());
        assert!(!sm.wants_request(), "same burst");
        sm.on_sent(msg(3));
        assert!(sm.wants_request(), "a new burst");
        sm.on_ack(3).unwrap();
        sm.on_sent(msg(4));
        sm.on_ack(4).unwrap();
        assert!(!sm.wants_request(), "all acknowledged already");
    }

    #[test]
    fn resumption_releases_what_the_client_had_and_resends_the_rest() {
        let mut sm = StreamMgmt::new("s".into(), true);
        for i in 1..=4 {
            sm.on_sent(msg(i));
        }
        assert!(sm.wants_request());
        let (acked, again) = sm.on_resume(1).unwrap();
        assert_eq!(ids(&acked), ["1"]);
        let again: Vec<_> = again.iter().map(|e| e.attr("id").unwrap()).collect();
        assert_eq!(again, ["2", "3", "4"]);
        assert!(sm.wants_request(), "the new connection is asked");
        assert!(sm.on_resume(9).is_err());
        let left = sm.into_unacked();
        assert_eq!(left.len(), 3);
        assert_eq!(left[0].queued_id.as_deref(), Some("q2"));
    }
}
