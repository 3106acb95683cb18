//! What the client sends a bound session: stanzas (RFC 6120 §8.1.2.1 `from`
//! checked and stamped, then handed to `im`), XEP-0198 nonzas (enable, ack
//! requests, acks), XEP-0352 client state, and read pacing.
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::debug;

use super::{Ended, Session};
use crate::c2s::sm::StreamMgmt;
use crate::xmpp::id::random_id;
use crate::xmpp::{ns, Element, StreamCondition, StreamError};

impl Session {
    /// Paces a client to `max_stanzas_per_second` by not reading faster.
    async fn pace(&mut self) {
        let max = self.shared.config.max_stanzas_per_second;
        let (start, count) = &mut self.rate_window;
        if start.elapsed() >= Duration::from_secs(1) {
            *start = Instant::now();
            *count = 0;
        }
        *count += 1;
        if *count > max {
            let wait = Duration::from_secs(1).saturating_sub(start.elapsed());
            tokio::time::sleep(wait).await;
            self.rate_window = (Instant::now(), 0);
        }
    }

    pub(super) async fn handle_client(&mut self, mut el: Element) -> Result<(), Ended> {
        self.shared
            .router
            .metrics()
            .stanzas_in
            .inc(crate::metrics::StanzaKind::of(el.name()));
        match (el.name(), el.ns()) {
            ("r", ns::SM) if self.sm.is_some() => {
                if let Some(h) = self
                    .sm
                    .as_mut()
                    .and_then(|sm| sm.on_request(Instant::now()))
                {
                    self.conn.ack(h);
                }
                return Ok(());
            }
            ("a", ns::SM) if self.sm.is_some() => {
                let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                return match h {
                    Some(h) => self.acked(h),
                    None => Err(Ended::Error(StreamError::with_text(
                        StreamCondition::UndefinedCondition,
                        "bad <a/>",
                    ))),
                };
            }
            ("enable", ns::SM) => {
                self.enable_sm(&el);
                return Ok(());
            }
            ("active", ns::CSI) => {
                self.inactive = false;
                self.flush_held_presence();
                return Ok(());
            }
            ("inactive", ns::CSI) => {
                self.inactive = true;
                return Ok(());
            }
            ("message" | "presence" | "iq", ns::CLIENT) => {}
            _ => {
                // RFC 6120 §4.9.3.23.
                return Err(Ended::Error(StreamError::with_text(
                    StreamCondition::UnsupportedStanzaType,
                    format!(
                        "<{}/> in {} is not a stanza this server knows",
                        el.name(),
                        el.ns()
                    ),
                )));
            }
        }
        // XEP-0198 §5: after a resumption the client sends again what our
        // `h` did not count yet (its guard was still running): it was
        // handled, and is not routed twice.
        if let Some(sm) = self.sm.as_mut() {
            if sm.is_resent(el.attr("id")) {
                debug!(id = ?el.attr("id"), "stanza sent again after resumption skipped");
                return Ok(());
            }
        }
        self.pace().await;
        // RFC 6120 §8.1.2.1: the server stamps `from` with the full JID; a
        // client that claims another is refused with invalid-from.
        if let Some(from) = el.attr("from") {
            if from != self.full.as_str() && from != self.bare.as_str() {
                let ok = jid::Jid::new(from)
                    .map(|j| j == self.full || j == self.bare)
                    .unwrap_or(false);
                if !ok {
                    return Err(Ended::Error(StreamError::with_text(
                        StreamCondition::InvalidFrom,
                        "the from address does not match this session",
                    )));
                }
            }
        }
        el.set_attr("from", self.full.to_string());
        // Counted now, safe when its handler is done, or for a guarded
        // message, when its guard is (`guard_notify` takes the ticket).
        let id = el.attr("id").map(str::to_string);
        self.ticket = self.sm.as_mut().map(|sm| sm.on_received(false, id));
        let handled = self.handle_im(el).await;
        if let Some(c) = self.ticket.take() {
            self.mark_safe(c);
        }
        handled
    }

    fn enable_sm(&mut self, el: &Element) {
        if self.sm.is_some() {
            self.conn.queue(&format!(
                "<failed xmlns='{}'><unexpected-request xmlns='{}'/></failed>",
                ns::SM,
                ns::STANZA_ERRORS
            ));
            return;
        }
        let resume = matches!(el.attr("resume"), Some("true" | "1"));
        let reply = self.start_sm(resume);
        self.conn.queue(&reply);
    }

    /// Turns XEP-0198 on (resumable when `resume`: here, and movable to
    /// another node); returns the `<enabled/>` to send.
    pub(super) fn start_sm(&mut self, resume: bool) -> String {
        let id = random_id();
        if resume {
            let (tx, resume_rx) = mpsc::channel(1);
            let mut map = self
                .shared
                .resumable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.insert(id.clone(), (self.bare.to_string(), tx));
            self.resume_rx = Some(resume_rx);
            let (tx, takeover_rx) = mpsc::channel(1);
            self.shared
                .router
                .takeovers()
                .register(&id, self.bare.as_str(), tx);
            self.takeover_rx = Some(takeover_rx);
        }
        let max = self.shared.config.sm_resume_timeout_secs;
        let reply = if resume {
            format!(
                "<enabled xmlns='{}' id='{id}' resume='true' max='{max}'/>",
                ns::SM
            )
        } else {
            format!("<enabled xmlns='{}' id='{id}'/>", ns::SM)
        };
        // Stanzas written before SM was on count as delivered (their
        // queued copies go once the write is flushed).
        self.sm = Some(StreamMgmt::new(id, resume));
        reply
    }

    /// The client acknowledged everything up to its count `h`: what it has
    /// leaves the replicated queue, and a pull that stopped at its limit
    /// goes on.
    fn acked(&mut self, h: u32) -> Result<(), Ended> {
        let Some(sm) = self.sm.as_mut() else {
            return Ok(());
        };
        let released = sm.on_ack(h).map_err(|e| Ended::Error(e.stream_error()))?;
        let ids: Vec<String> = released.into_iter().filter_map(|o| o.queued_id).collect();
        self.recently_acked.note(&ids);
        self.shared.router.delivered(self.bare.as_str(), ids);
        if self.more_queued && self.available && self.pull_room() > 0 {
            self.pull(true);
        }
        Ok(())
    }
}
