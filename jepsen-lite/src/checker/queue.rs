//! The total-queue checker (Jepsen's `total-queue`) over the queue
//! workload's entries (`Send`, `SendOk`, `SendFail`, `SendInfo`, `Bounce`,
//! `Recv`), plus XMPP's extras: acknowledged-then-bounced, failed-but-
//! delivered, duplicates and their stanza-ids, and per-stream order.
//!
//! It also owns the per-message index ([`index`]) that the availability and
//! latency statistics read.
use std::collections::{BTreeMap, HashMap};

use crate::history::Entry;
use crate::results::{Duplicate, MsgRef, OrderViolation, QueueResult};

/// At most this many order violations are listed (all are counted).
pub const ORDER_VIOLATIONS_LISTED: usize = 100;

/// How a send completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Info,
}

/// The `Send` entry of a message.
#[derive(Debug, Clone)]
pub struct SendRec {
    pub t_us: u64,
    pub process: String,
    pub from: String,
    pub to: String,
    pub node: u64,
    pub session: u64,
    pub seq: u64,
}

/// One `Recv` of a message.
#[derive(Debug, Clone)]
pub struct RecvRec {
    pub t_us: u64,
    pub from: String,
    pub to: String,
    pub node: u64,
    pub stanza_id: Option<String>,
    /// Came from offline storage (XEP-0203 delay).
    pub delayed: bool,
}

/// Everything the history says about one message id.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: String,
    /// The first `Send` with this id.
    pub send: Option<SendRec>,
    /// The earliest of its `SendOk`/`SendFail`/`SendInfo`, and when.
    pub completion: Option<(Outcome, u64)>,
    /// The earliest `SendOk`, whatever the completion.
    pub first_ok_us: Option<u64>,
    /// Times of its `Bounce` entries, ascending.
    pub bounces: Vec<u64>,
    /// Its receipts, in time order (history order among equal times).
    pub recvs: Vec<RecvRec>,
}

impl Msg {
    fn new(id: &str) -> Msg {
        Msg {
            id: id.to_string(),
            send: None,
            completion: None,
            first_ok_us: None,
            bounces: Vec::new(),
            recvs: Vec::new(),
        }
    }

    /// The send's outcome; a `Send` with no completion at all is unknown.
    pub fn outcome(&self) -> Option<Outcome> {
        self.send.as_ref()?;
        Some(self.completion.map_or(Outcome::Info, |(o, _)| o))
    }

    pub fn is_ok(&self) -> bool {
        self.outcome() == Some(Outcome::Ok)
    }

    pub fn first_recv_us(&self) -> Option<u64> {
        self.recvs.first().map(|r| r.t_us)
    }

    /// The message as an anomaly names it, with the anomaly's time.
    /// Without a `Send`, `from`/`to`/`node` come from the first receipt and
    /// `sent_us` is 0.
    fn msg_ref(&self, at_us: u64) -> MsgRef {
        match (&self.send, self.recvs.first()) {
            (Some(s), _) => MsgRef {
                id: self.id.clone(),
                from: s.from.clone(),
                to: s.to.clone(),
                sent_us: s.t_us,
                node: s.node,
                at_us,
            },
            (None, Some(r)) => MsgRef {
                id: self.id.clone(),
                from: r.from.clone(),
                to: r.to.clone(),
                sent_us: 0,
                node: r.node,
                at_us,
            },
            (None, None) => MsgRef {
                id: self.id.clone(),
                from: String::new(),
                to: String::new(),
                sent_us: 0,
                node: 0,
                at_us,
            },
        }
    }
}

/// Indexes the queue workload's entries by message id, in order of each
/// id's first appearance. Ids that appear only in completions or bounces
/// (no `Send`, no `Recv`) are kept but ignored by the checks.
pub fn index(history: &[Entry]) -> Vec<Msg> {
    let mut msgs: Vec<Msg> = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    fn slot<'a>(msgs: &mut Vec<Msg>, by_id: &mut HashMap<&'a str, usize>, id: &'a str) -> usize {
        *by_id.entry(id).or_insert_with(|| {
            msgs.push(Msg::new(id));
            msgs.len() - 1
        })
    }
    let complete = |m: &mut Msg, o: Outcome, t: u64| {
        if m.completion.is_none_or(|(_, t0)| t < t0) {
            m.completion = Some((o, t));
        }
    };
    for e in history {
        match e {
            Entry::Send {
                t_us,
                process,
                id,
                from,
                to,
                node,
                session,
                seq,
            } => {
                let i = slot(&mut msgs, &mut by_id, id);
                if msgs[i].send.is_none() {
                    msgs[i].send = Some(SendRec {
                        t_us: *t_us,
                        process: process.clone(),
                        from: from.clone(),
                        to: to.clone(),
                        node: *node,
                        session: *session,
                        seq: *seq,
                    });
                }
            }
            Entry::SendOk { t_us, id } => {
                let i = slot(&mut msgs, &mut by_id, id);
                let m = &mut msgs[i];
                complete(m, Outcome::Ok, *t_us);
                if m.first_ok_us.is_none_or(|t0| *t_us < t0) {
                    m.first_ok_us = Some(*t_us);
                }
            }
            Entry::SendFail { t_us, id, .. } => {
                let i = slot(&mut msgs, &mut by_id, id);
                let m = &mut msgs[i];
                complete(m, Outcome::Fail, *t_us);
            }
            Entry::SendInfo { t_us, id, .. } => {
                let i = slot(&mut msgs, &mut by_id, id);
                let m = &mut msgs[i];
                complete(m, Outcome::Info, *t_us);
            }
            Entry::Bounce { t_us, id, .. } => {
                let i = slot(&mut msgs, &mut by_id, id);
                msgs[i].bounces.push(*t_us);
            }
            Entry::Recv {
                t_us,
                id,
                from,
                to,
                stanza_id,
                node,
                delayed,
                ..
            } => {
                let i = slot(&mut msgs, &mut by_id, id);
                msgs[i].recvs.push(RecvRec {
                    t_us: *t_us,
                    from: from.clone(),
                    to: to.clone(),
                    node: *node,
                    stanza_id: stanza_id.clone(),
                    delayed: *delayed,
                });
            }
            _ => {}
        }
    }
    for m in &mut msgs {
        m.bounces.sort_unstable();
        // Stable: copies recorded at the same microsecond keep history order.
        m.recvs.sort_by_key(|r| r.t_us);
    }
    msgs
}

/// The queue checker's result, plus what `QueueResult` has no field for.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueCheck {
    pub result: QueueResult,
    /// Every order violation found; `result.order_violations` lists at most
    /// [`ORDER_VIOLATIONS_LISTED`].
    pub order_violations_total: u64,
}

/// Runs the total-queue checks over an index built by [`index`].
pub fn check_queue(msgs: &[Msg]) -> QueueCheck {
    let mut r = QueueResult::default();
    let mut extra_copies = 0u64;
    for m in msgs {
        // A copy that reached someone the message was not sent to is not a
        // delivery: it is unexpected there (and the message may be lost).
        let m = &match &m.send {
            Some(send) if m.recvs.iter().any(|c| c.to != send.to) => {
                for c in m.recvs.iter().filter(|c| c.to != send.to) {
                    let mut wrong = m.msg_ref(c.t_us);
                    wrong.to = c.to.clone();
                    r.unexpected.push(wrong);
                }
                let mut kept = m.clone();
                kept.recvs.retain(|c| c.to == send.to);
                kept
            }
            _ => m.clone(),
        };
        let received = !m.recvs.is_empty();
        if received {
            r.received += 1;
        }
        if m.recvs.len() > 1 {
            extra_copies += m.recvs.len() as u64 - 1;
            let stanza_ids: Vec<Option<String>> =
                m.recvs.iter().map(|c| c.stanza_id.clone()).collect();
            let same_stanza_id = match stanza_ids.first() {
                Some(Some(first)) => stanza_ids.iter().all(|s| s.as_ref() == Some(first)),
                _ => false,
            };
            r.duplicated.push(Duplicate {
                msg: m.msg_ref(m.recvs[1].t_us),
                copies: m.recvs.len() as u64,
                same_stanza_id,
                stanza_ids,
            });
        }
        let Some(outcome) = m.outcome() else {
            if let Some(first) = m.first_recv_us() {
                r.unexpected.push(m.msg_ref(first));
            }
            continue;
        };
        r.sent += 1;
        match outcome {
            Outcome::Ok => {
                r.ok += 1;
                if !received {
                    let at = m.completion.map_or(0, |(_, t)| t);
                    r.lost.push(m.msg_ref(at));
                }
            }
            Outcome::Fail => {
                r.fail += 1;
                if let Some(first) = m.first_recv_us() {
                    r.failed_but_delivered.push(m.msg_ref(first));
                }
            }
            Outcome::Info => {
                r.unknown += 1;
                if received {
                    r.recovered += 1;
                } else {
                    r.unknown_lost += 1;
                }
            }
        }
        if let Some(ok_us) = m.first_ok_us {
            if let Some(b) = m.bounces.iter().find(|b| **b >= ok_us) {
                r.acked_then_bounced.push(m.msg_ref(*b));
            }
        }
    }
    r.duplicate_rate = if r.received == 0 {
        0.0
    } else {
        extra_copies as f64 / r.received as f64
    };
    let (order_violations, total) = order_violations(msgs);
    r.order_violations = order_violations;
    for list in [
        &mut r.lost,
        &mut r.unexpected,
        &mut r.acked_then_bounced,
        &mut r.failed_but_delivered,
    ] {
        list.sort_by_key(|m| m.at_us);
    }
    r.duplicated.sort_by_key(|d| d.msg.at_us);
    QueueCheck {
        result: r,
        order_violations_total: total,
    }
}

/// One stream's acknowledged, received messages: (seq, message, first
/// receipt time).
type Stream<'a> = Vec<(u64, &'a Msg, u64)>;

/// Per (sender process, session), the acknowledged and received messages in
/// `seq` order; each adjacent pair whose first receipts are inverted is one
/// violation. Returns the first [`ORDER_VIOLATIONS_LISTED`] (by the later
/// one's receipt time) and the total.
fn order_violations(msgs: &[Msg]) -> (Vec<OrderViolation>, u64) {
    let mut streams: BTreeMap<(&str, u64), Stream> = BTreeMap::new();
    for m in msgs {
        let (Some(s), Some(first)) = (&m.send, m.first_recv_us()) else {
            continue;
        };
        if m.is_ok() {
            streams
                .entry((s.process.as_str(), s.session))
                .or_default()
                .push((s.seq, m, first));
        }
    }
    let mut out = Vec::new();
    let mut total = 0u64;
    for ((sender, session), mut stream) in streams {
        stream.sort_by_key(|(seq, _, _)| *seq);
        for pair in stream.windows(2) {
            let (_, earlier, t_earlier) = pair[0];
            let (_, later, t_later) = pair[1];
            if t_later < t_earlier {
                total += 1;
                out.push(OrderViolation {
                    sender: sender.to_string(),
                    session,
                    earlier: earlier.msg_ref(t_earlier),
                    later: later.msg_ref(t_later),
                });
            }
        }
    }
    out.sort_by_key(|v| v.later.at_us);
    out.truncate(ORDER_VIOLATIONS_LISTED);
    (out, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::fixture::*;

    fn run(h: &[Entry]) -> QueueCheck {
        check_queue(&index(h))
    }

    #[test]
    fn clean_history_has_no_anomaly() {
        let q = run(&clean_messages(0, 10));
        let r = &q.result;
        assert_eq!(
            (r.sent, r.ok, r.fail, r.unknown, r.received),
            (10, 10, 0, 0, 10)
        );
        assert!(r.lost.is_empty() && r.unexpected.is_empty() && r.duplicated.is_empty());
        assert!(r.acked_then_bounced.is_empty() && r.failed_but_delivered.is_empty());
        assert!(r.order_violations.is_empty());
        assert_eq!(q.order_violations_total, 0);
        assert_eq!(r.duplicate_rate, 0.0);
    }

    #[test]
    fn empty_history() {
        let q = run(&[]);
        assert_eq!(q.result, QueueResult::default());
    }

    #[test]
    fn lost_is_acked_never_received() {
        let mut h = clean_messages(0, 3);
        h.extend([send(50, "x"), ok(55, "x")]);
        let r = run(&h).result;
        assert_eq!(r.lost.len(), 1);
        assert_eq!(r.lost[0].id, "x");
        assert_eq!(r.lost[0].sent_us, ms(50));
        assert_eq!(r.lost[0].at_us, ms(55), "at the ack");
        assert_eq!(r.lost[0].from, "q-0@example.test");
    }

    #[test]
    fn a_copy_to_the_wrong_recipient_is_unexpected_and_the_message_lost() {
        let mut wrong = recv(20, "a");
        if let Entry::Recv { to, .. } = &mut wrong {
            *to = "someone-else@example.test".into();
        }
        let h = vec![send(10, "a"), ok(11, "a"), wrong];
        let r = check_queue(&index(&h)).result;
        assert_eq!(r.unexpected.len(), 1);
        assert_eq!(r.unexpected[0].to, "someone-else@example.test");
        assert_eq!(r.lost.len(), 1);
        assert_eq!(r.received, 0);
    }

    #[test]
    fn unexpected_is_received_never_sent() {
        let mut h = clean_messages(0, 3);
        h.extend([recv(60, "ghost"), recv(61, "ghost")]);
        let r = run(&h).result;
        assert_eq!(r.unexpected.len(), 1);
        assert_eq!(r.unexpected[0].id, "ghost");
        assert_eq!(r.unexpected[0].at_us, ms(60));
        assert_eq!(r.sent, 3, "a receipt is not a send");
        assert_eq!(r.received, 4);
        assert_eq!(r.duplicated.len(), 1, "received twice is also a duplicate");
    }

    #[test]
    fn an_ack_without_send_is_not_a_message() {
        let r = run(&[ok(5, "stray")]).result;
        assert_eq!(r.sent, 0);
        assert!(r.lost.is_empty() && r.unexpected.is_empty());
    }

    #[test]
    fn duplicate_with_same_stanza_id() {
        let mut h = clean_messages(0, 10);
        h.push(recv(90, "m3"));
        let r = run(&h).result;
        assert_eq!(r.duplicated.len(), 1);
        let d = &r.duplicated[0];
        assert_eq!(d.msg.id, "m3");
        assert_eq!(d.copies, 2);
        assert!(d.same_stanza_id);
        assert_eq!(d.msg.at_us, ms(90), "at the second copy");
        assert!((r.duplicate_rate - 0.1).abs() < 1e-12);
    }

    #[test]
    fn duplicate_with_different_or_missing_stanza_ids() {
        let mut h = clean_messages(0, 4);
        h.push(recv_sid(90, "m1", Some("other")));
        h.push(recv_sid(91, "m2", None));
        h.extend([send(95, "n"), ok(96, "n")]);
        h.push(recv_sid(97, "n", None));
        h.push(recv_sid(98, "n", None));
        let r = run(&h).result;
        assert_eq!(r.duplicated.len(), 3);
        assert!(r.duplicated.iter().all(|d| !d.same_stanza_id));
        assert_eq!(
            r.duplicated[0].stanza_ids,
            vec![Some("sid-m1".to_string()), Some("other".to_string())]
        );
        assert_eq!(r.duplicated[2].stanza_ids, vec![None, None]);
    }

    #[test]
    fn recovered_is_unknown_and_received() {
        let h = [
            send(1, "a"),
            info(2, "a"),
            recv(3, "a"),
            send(4, "b"),
            info(5, "b"),
            send(6, "c"), // no completion at all: unknown
            recv(7, "c"),
            send(8, "d"), // no completion, never received
        ];
        let r = run(&h).result;
        assert_eq!(r.unknown, 4);
        assert_eq!(r.recovered, 2);
        assert_eq!(r.unknown_lost, 2);
        assert!(r.lost.is_empty() && r.failed_but_delivered.is_empty());
    }

    #[test]
    fn acked_then_bounced() {
        let h = [
            send(1, "a"),
            ok(2, "a"),
            recv(3, "a"),
            bounce(10, "a"),
            send(4, "b"),
            ok(5, "b"),
            bounce(5, "b"), // same microsecond counts
        ];
        let r = run(&h).result;
        assert_eq!(r.acked_then_bounced.len(), 2);
        assert_eq!(r.acked_then_bounced[0].id, "b");
        assert_eq!(r.acked_then_bounced[1].id, "a");
        assert_eq!(r.acked_then_bounced[1].at_us, ms(10), "at the bounce");
        assert_eq!(r.lost.len(), 1, "b was acked and never received");
    }

    #[test]
    fn bounced_before_ack_is_a_fail_not_an_anomaly() {
        // The error came back first (SendFail); a later ack counted the
        // stanza but the outcome stays the first completion.
        let h = [send(1, "a"), bounce(2, "a"), fail(2, "a"), ok(3, "a")];
        let r = run(&h).result;
        assert_eq!((r.sent, r.ok, r.fail), (1, 0, 1));
        assert!(r.acked_then_bounced.is_empty());
        assert!(r.lost.is_empty());
        assert!(r.failed_but_delivered.is_empty());
    }

    #[test]
    fn completion_is_the_earliest_even_if_recorded_later() {
        let h = [send(1, "a"), fail(5, "a"), ok(3, "a")];
        let r = run(&h).result;
        assert_eq!((r.ok, r.fail), (1, 0));
    }

    #[test]
    fn failed_but_delivered() {
        let h = [send(1, "a"), fail(2, "a"), recv(3, "a"), recv(4, "a")];
        let r = run(&h).result;
        assert_eq!(r.failed_but_delivered.len(), 1);
        assert_eq!(
            r.failed_but_delivered[0].at_us,
            ms(3),
            "at the first receipt"
        );
    }

    #[test]
    fn order_violation_within_a_session() {
        let h = [
            send_s(1, "a", "q-0", 0, 0),
            send_s(2, "b", "q-0", 0, 1),
            send_s(3, "c", "q-0", 0, 2),
            ok(4, "a"),
            ok(4, "b"),
            ok(4, "c"),
            recv(5, "b"),
            recv(6, "a"),
            recv(7, "c"),
            recv(8, "b"), // a later copy doesn't matter: first copies only
        ];
        let q = run(&h);
        assert_eq!(q.order_violations_total, 1);
        let v = &q.result.order_violations[0];
        assert_eq!((v.sender.as_str(), v.session), ("q-0", 0));
        assert_eq!((v.earlier.id.as_str(), v.later.id.as_str()), ("a", "b"));
        assert_eq!((v.earlier.at_us, v.later.at_us), (ms(6), ms(5)));
    }

    #[test]
    fn order_is_per_session_and_ignores_unacked() {
        let h = [
            // Different sessions: no order between them.
            send_s(1, "a", "q-0", 0, 0),
            send_s(2, "b", "q-0", 1, 1),
            ok(3, "a"),
            ok(3, "b"),
            recv(5, "b"),
            recv(6, "a"),
            // Unknown outcome: not compared.
            send_s(7, "c", "q-1", 0, 0),
            send_s(8, "d", "q-1", 0, 1),
            info(9, "c"),
            ok(9, "d"),
            recv(10, "d"),
            recv(11, "c"),
        ];
        let q = run(&h);
        assert_eq!(q.order_violations_total, 0);
    }

    #[test]
    fn order_violations_are_capped_but_counted() {
        let mut h = Vec::new();
        // Pairs (2k, 2k+1) received in reverse: 150 adjacent inversions.
        for k in 0..150u64 {
            for (j, delay) in [(0u64, 2u64), (1, 1)] {
                let seq = 2 * k + j;
                let id = format!("m{seq}");
                h.push(send_s(10 * k, &id, "q-0", 0, seq));
                h.push(ok(10 * k, &id));
                h.push(recv(10 * k + delay, &id));
            }
        }
        let q = run(&h);
        assert_eq!(q.order_violations_total, 150);
        assert_eq!(q.result.order_violations.len(), ORDER_VIOLATIONS_LISTED);
    }
}
