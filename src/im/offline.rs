//! Offline messages (XEP-0160): which of the account's queued messages a
//! pull takes, and the XEP-0203 stamp they carry, without I/O.
//!
//! Every message for an account is in the account's replicated queue until
//! a client of the account has it (see `router::inbox`). A session *pulls*
//! from the queue the messages no live copy brought it (when, and the
//! checks a node makes before writing from its copy of the queue, are the
//! session's: `c2s::session::pull`):
//! - after initial presence (RFC 6121 §4.2 / XEP-0160: everything queued),
//! - when an acknowledgement makes room after a pull that stopped at its
//!   limit (so a queue longer than the unacknowledged window drains),
//! - every few seconds while available: messages whose live copy was lost
//!   (its node or session went away) or never sent (no available resource
//!   at the time). While other sessions of the account exist, only messages
//!   older than [`PULL_OTHERS_AFTER`] are taken, so one that another
//!   resource is about to acknowledge is not shown twice.
//!
//! Each pulled message gets an XEP-0203 delay stamp. It leaves the queue
//! once acknowledged (XEP-0198) or written (without it).
use std::time::Duration;

use starling_raft::command::OfflineMessage;

use crate::clock::datetime;
use crate::xmpp::{ns, Element};

/// Most queued messages handed to a session in one pull; never more than
/// half the unacknowledged window (the session's room).
pub const BATCH: usize = 100;

/// Age before a queued message may be pulled while other sessions of the
/// account could still acknowledge it.
pub const PULL_OTHERS_AFTER: Duration = Duration::from_secs(10);

/// A queued message a pull takes: its queue sequence number, when the
/// server accepted it, and the stored stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub seq: u64,
    pub stamp_ms: u64,
    pub xml: String,
}

/// The queued messages a pull takes, oldest first: at most `room`, at
/// least `min_age_ms` old at `now_ms`, and only those `may_take` allows
/// (not written to this session already, not being removed); and whether
/// the queue holds more that it could take later.
pub fn select<'a>(
    queue: impl Iterator<Item = (u64, &'a OfflineMessage)>,
    now_ms: u64,
    min_age_ms: u64,
    room: usize,
    may_take: impl Fn(&str) -> bool,
) -> (Vec<Pulled>, bool) {
    let mut it =
        queue.filter(|(_, m)| now_ms.saturating_sub(m.stamp_ms) >= min_age_ms && may_take(&m.id));
    let taken: Vec<Pulled> = it
        .by_ref()
        .take(room)
        .map(|(seq, m)| Pulled {
            seq,
            stamp_ms: m.stamp_ms,
            xml: m.stanza.clone(),
        })
        .collect();
    let more = it.next().is_some();
    (taken, more)
}

/// A stored message as the client gets it from the queue: with an XEP-0203
/// delay stamp from `domain` saying when the server first received it (a
/// stamp of ours it already carried is replaced).
pub fn stamped(
    xml: &str,
    stamp_ms: u64,
    domain: &str,
) -> Result<Element, crate::xmpp::framer::FramerError> {
    let mut el = crate::xmpp::parse_stanza(xml)?;
    el.remove_children(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(domain));
    el.push(
        Element::new("delay", ns::DELAY)
            .with_attr("from", domain)
            .with_attr("stamp", datetime(stamp_ms))
            .with_text("Offline storage"),
    );
    Ok(el)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, stamp_ms: u64) -> OfflineMessage {
        OfflineMessage {
            id: id.to_string(),
            stamp_ms,
            stanza: format!("<message xmlns='jabber:client' id='{id}'><body>{id}</body></message>"),
        }
    }

    #[test]
    fn select_takes_the_oldest_allowed_up_to_room_and_says_if_more() {
        let q = [
            msg("a", 1_000),
            msg("b", 2_000),
            msg("c", 3_000),
            msg("d", 9_500),
        ];
        let items = || q.iter().enumerate().map(|(i, m)| (i as u64, m));
        // Room for two, "a" already written here: b and c, and d remains.
        let (taken, more) = select(items(), 10_000, 0, 2, |id| id != "a");
        assert_eq!(taken.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(more);
        // Only messages at least 5 s old: a, b, c; d is too young and is
        // not "more" for this pull either.
        let (taken, more) = select(items(), 10_000, 5_000, 10, |_| true);
        assert_eq!(taken.len(), 3);
        assert!(!more);
        // No room: nothing taken, but more is there.
        let (taken, more) = select(items(), 10_000, 0, 0, |_| true);
        assert!(taken.is_empty());
        assert!(more);
    }

    #[test]
    fn stamped_replaces_our_own_delay_and_keeps_others() {
        let xml = "<message xmlns='jabber:client'><body>x</body>\
            <delay xmlns='urn:xmpp:delay' from='localhost' stamp='2000-01-01T00:00:00Z'/>\
            <delay xmlns='urn:xmpp:delay' from='elsewhere' stamp='1999-01-01T00:00:00Z'/></message>";
        let el = stamped(xml, 0, "localhost").expect("parses");
        let delays: Vec<_> = el.children().filter(|c| c.is("delay", ns::DELAY)).collect();
        assert_eq!(delays.len(), 2);
        assert_eq!(delays[0].attr("from"), Some("elsewhere"));
        assert_eq!(delays[1].attr("from"), Some("localhost"));
        assert_eq!(delays[1].attr("stamp"), Some("1970-01-01T00:00:00.000Z"));
        assert!(stamped("<message", 0, "localhost").is_err());
    }
}
