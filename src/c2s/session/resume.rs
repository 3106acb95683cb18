//! XEP-0198 §5 on this node: a detached session waits for its client to
//! resume it (or for a peer to ask for it, see `c2s::handoff`), and a new
//! connection takes the session over, with what it had not acknowledged
//! sent again.
use std::time::Duration;

use tracing::{debug, info};

use super::{recv_resumption, recv_takeover, stopped, Ended, Session};
use crate::c2s::negotiate::Resumption;
use crate::router::ToSession;
use crate::xmpp::ns;

impl Session {
    /// Detached (XEP-0198 §5): keep the session for `sm_resume_timeout_secs`
    /// while stanzas keep arriving. `None` when a new connection resumed it
    /// here; else how it ended (not resumed in time, or moved to the node
    /// the client resumed it on).
    pub(super) async fn wait_for_resumption(&mut self) -> Option<Ended> {
        let timeout = Duration::from_secs(self.shared.config.sm_resume_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        debug!("session detached, waiting for resumption");
        // XEP-0357: messages written but not acknowledged may never have
        // reached the client; pushed now (as mod_cloud_notify does when
        // mod_smacks hibernates a session), coalesced into one push. An
        // inactive session pushed them as they came.
        let unacked: Vec<_> = self
            .sm
            .iter()
            .filter(|_| !self.inactive)
            .flat_map(|sm| sm.unacked())
            .filter(|o| o.el.name() == "message")
            .map(|o| o.el.clone())
            .collect();
        for el in &unacked {
            self.shared.router.push_for_session(self.full.as_str(), el);
        }
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Some(Ended::Lost),
                _ = stopped(&mut shutdown) => return Some(Ended::Lost),
                r = recv_resumption(&mut self.resume_rx) => {
                    let Some(r) = r else { return Some(Ended::Lost) };
                    return if self.resume(r).await { None } else { Some(Ended::Lost) };
                }
                t = recv_takeover(&mut self.takeover_rx) => {
                    let Some(t) = t else {
                        self.takeover_rx = None;
                        continue;
                    };
                    if self.move_out(t).await {
                        return Some(Ended::Moved);
                    }
                }
                m = self.rx.recv() => match m {
                    Some(ToSession::Stanza(el)) => {
                        // XEP-0357: detached, so a message may be pushed.
                        self.push_if_worthy(&el);
                        self.write_stanza(*el);
                    }
                    Some(ToSession::Kick(_)) | None => return Some(Ended::Lost),
                },
                d = self.guard_rx.recv() => {
                    if let Some(d) = d {
                        self.guard_done(d);
                    }
                }
            }
            // Nothing can be written while detached.
            self.conn.out().clear();
        }
    }

    pub(super) async fn resume(&mut self, r: Resumption) -> bool {
        self.conn = r.conn;
        self.admission = Some(r.ticket);
        let Some(sm) = self.sm.as_mut() else {
            return false;
        };
        let resumed = format!(
            "<resumed xmlns='{}' h='{}' previd='{}'/>",
            ns::SM,
            sm.h(),
            sm.id()
        );
        // Inside SASL2's `<success/>` when resumed inline (XEP-0198
        // §"Inline Stream Resumption").
        let reply = r.reply.wrap(&resumed, self.full.as_str());
        let (released, again) = match sm.on_resume(r.h) {
            Ok(x) => x,
            Err(e) => {
                let _ = self.conn.fail(&e.stream_error(), &self.shared.domain).await;
                return false;
            }
        };
        self.conn.queue(&reply);
        let ids: Vec<String> = released.into_iter().filter_map(|o| o.queued_id).collect();
        self.recently_acked.note(&ids);
        self.shared.router.delivered(self.bare.as_str(), ids);
        // Retransmit what the client did not get (XEP-0198 §5), then ask.
        for el in &again {
            el.write_to(self.conn.out(), ns::CLIENT);
        }
        if self.sm.as_mut().is_some_and(|sm| sm.wants_request()) {
            self.conn.request_ack();
        }
        info!(resent = again.len(), "session resumed");
        let limit = Duration::from_secs(self.shared.config.write_timeout_secs);
        self.conn.flush_within(limit).await.is_ok()
    }
}
