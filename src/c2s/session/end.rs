//! The end of a session for any reason: the stream closed or failed, the
//! resumable state dropped, the binding removed (retried: the command is
//! idempotent), contacts told (RFC 6121 §4.5.2), and what it held left to
//! the replicated queue or another resource.
use std::time::Duration;

use starling_raft::command::Command;
use tracing::{debug, info, warn};

use super::{Ended, Session};
use crate::router::{queued_id, ToSession};
use crate::xmpp::{Element, StreamCondition, StreamError};

impl Session {
    /// Ends the session: stream closed or failed, binding removed, contacts
    /// told. Messages it did not deliver stay in the replicated queue (each
    /// was written there by its guard) for the next session of the account
    /// (RFC 6121 §4.5.2, XEP-0198 §5).
    pub(super) async fn finish(mut self, ended: Ended) {
        match &ended {
            Ended::ClosedByClient => {
                // What the client acknowledged leaves its queue before the
                // stream is closed: logging in again at once does not bring
                // it a second time.
                let remover = self.shared.router.remover().clone();
                remover
                    .sync(self.bare.as_str(), Duration::from_secs(2))
                    .await;
                self.conn.close().await
            }
            Ended::Error(e) => {
                debug!(error = %e, "ending session");
                self.conn.fail(e, &self.shared.domain).await
            }
            Ended::Shutdown => {
                self.conn
                    .fail(
                        &StreamError::new(StreamCondition::SystemShutdown),
                        &self.shared.domain,
                    )
                    .await
            }
            Ended::Lost | Ended::Takeover(_) | Ended::Move(_) | Ended::Moved => {
                self.conn.shutdown().await
            }
        }
        let router = self.shared.router.clone();
        if let Some(sm) = &self.sm {
            self.unregister_resumable(sm.id().to_string());
        }
        router.unregister(&self.full, self.id);
        // A moved session's contacts see it on its new node: no
        // unavailable presence (RFC 6121 §4.5 is for a session that ends).
        if self.available && !matches!(ended, Ended::Moved) {
            self.available = false;
            let directed = std::mem::take(&mut self.directed);
            crate::im::presence::session_ended(
                &router,
                self.bare.as_str(),
                self.full.as_str(),
                directed,
            )
            .await;
        }
        self.unbind().await;
        // XEP-0045: a session that ends leaves its rooms (with or without
        // the unavailable presence it owed them).
        router.muc_session_ended(self.full.as_str()).await;
        // Stanzas routed to us but never acknowledged (or never written).
        // Messages for the account are in its replicated queue already (or
        // their sender was never acknowledged): nothing to do. Other
        // routable messages go to another resource if there is one.
        let mut leftovers: Vec<Element> = Vec::new();
        if let Some(sm) = self.sm.take() {
            leftovers.extend(
                sm.into_unacked()
                    .into_iter()
                    .filter(|o| o.queued_id.is_none())
                    .map(|o| o.el),
            );
        }
        self.rx.close();
        while let Ok(m) = self.rx.try_recv() {
            if let ToSession::Stanza(el) = m {
                if queued_id(&el, self.bare.as_str()).is_none() {
                    leftovers.push(*el);
                }
            }
        }
        for el in leftovers {
            let t = el.attr("type").unwrap_or("normal");
            if el.name() == "message" && matches!(t, "normal" | "chat") {
                router.undeliverable_here(el).await;
            }
        }
        // Copies in custody for the account here go to its queue now, for
        // its next session wherever it logs in (see `router::custody`).
        router.custody_release_account(self.bare.as_str());
        info!(ended = ended.kind(), "session ended");
    }
}

impl Session {
    /// Removes this session's binding, retrying (the command is idempotent)
    /// so no ghost resource is left to answer probes and take messages. If
    /// the cluster stays unavailable, the leader's liveness check or this
    /// node's reconciliation at its next start removes it.
    async fn unbind(&self) {
        let cmd = Command::UnbindSession {
            full_jid: self.full.to_string(),
            node: self.shared.router.node(),
            session: self.id,
        };
        let mut wait = Duration::from_millis(50);
        for _ in 0..8 {
            match self.shared.cluster.write(cmd.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    debug!(error = %e, "unbind not committed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        warn!("could not remove the session binding");
    }
}
