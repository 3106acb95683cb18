//! Offline messages (XEP-0160): stored in the replicated queue by the
//! router, delivered after initial presence, in order, each with an
//! XEP-0203 delay stamp, and removed from the queue only once delivered
//! (with XEP-0198: once the client acknowledged them).
use starling_raft::command::Command;
use tracing::warn;

use crate::c2s::session::Session;
use crate::xmpp::{ns, Element};

/// Most queued messages handed to a session in one go; the rest follow as
/// these are acknowledged (the next initial presence, or the next call).
const BATCH: usize = 1000;

/// XEP-0082 date-time in UTC (`1970-01-01T00:00:00.000Z`) from Unix ms.
pub fn datetime(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for any date
    // after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Sends the queued messages newer than the session's cursor.
pub async fn deliver(s: &mut Session) {
    let queued: Vec<(u64, u64, String)> = {
        let state = s.shared.cluster.state().read();
        state
            .data
            .queue(&s.bare)
            .filter(|(seq, _)| *seq > s.offline_cursor)
            .take(BATCH)
            .map(|(seq, m)| (seq, m.stamp_ms, m.stanza.clone()))
            .collect()
    };
    for (seq, stamp_ms, xml) in queued {
        s.offline_cursor = seq;
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
        s.write_stanza_from(el, true);
        let count = s.sm.as_ref().map(|sm| sm.outbound).unwrap_or(0);
        s.offline_sent.push_back((count, seq));
    }
}

/// The client has the queued messages up to `up_to`: remove them.
pub async fn ack(s: &mut Session, up_to: u64) {
    let cmd = Command::AckOffline {
        to: s.bare.clone(),
        up_to,
    };
    if let Err(e) = s.shared.cluster.write(cmd).await {
        // They stay queued and come again at the next login: a duplicate
        // (with the same stanza id) rather than a loss.
        warn!(error = %e, "offline ack not committed");
    }
}

#[cfg(test)]
mod tests {
    use super::datetime;

    #[test]
    fn xep_0082_datetimes() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(datetime(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(datetime(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }
}
