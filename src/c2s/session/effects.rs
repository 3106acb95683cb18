//! Carries out what `im` handlers return ([`crate::im::Effects`]) on this
//! session, in order: writes to the client, routes, presence and carbons
//! state, the binding, directed presence, the queue pull, the end.
use tracing::warn;

use super::{Ended, Session};
use crate::im::{self, Effect, Effects};

impl Session {
    /// Hands a client stanza to `im` and carries out its effects.
    pub(super) async fn handle_im(&mut self, el: crate::xmpp::Element) -> Result<(), Ended> {
        let shared = self.shared.clone();
        let effects = {
            let me = im::Me {
                full: &self.full,
                bare: &self.bare,
                available: self.available,
                directed: &self.directed,
            };
            im::handle_stanza(&shared.im(), &me, el).await
        };
        self.apply(effects).await
    }

    /// Carries out `effects` in order; an [`Effect::End`] ends the session
    /// once the rest is done.
    pub(super) async fn apply(&mut self, effects: Effects) -> Result<(), Ended> {
        let router = self.shared.router.clone();
        let mut end = None;
        for effect in effects {
            match effect {
                Effect::Write(el) => self.write_stanza(el),
                Effect::Route(el) => router.route(el).await,
                Effect::RouteGuarded(el) => {
                    let notify = self.guard_notify();
                    let routed = router.route_guarded(el, notify.clone()).await;
                    if routed.archived {
                        self.archive_started(&notify);
                    }
                    if !routed.guarded {
                        self.guard_not_started(notify);
                    }
                }
                Effect::Available { priority, presence } => {
                    self.available = true;
                    self.priority = priority;
                    self.presence = Some(presence);
                }
                Effect::Unavailable => {
                    self.available = false;
                    self.presence = None;
                }
                Effect::PublishBinding => {
                    if !self.publish_binding().await {
                        warn!("presence not published to the shared table");
                    }
                }
                Effect::Carbons {
                    enable,
                    reply,
                    failed,
                } => {
                    self.carbons = enable;
                    if self.publish_binding().await {
                        self.write_stanza(reply);
                    } else if let Some(f) = failed {
                        self.write_stanza(f);
                    }
                }
                Effect::Broadcast(el) => {
                    im::presence::broadcast(&router, self.bare.as_str(), self.full.as_str(), &el)
                        .await
                }
                Effect::InitialPresence => {
                    let presences = im::presence::initial_presence(
                        &router,
                        self.bare.as_str(),
                        self.full.as_str(),
                    );
                    for p in presences {
                        self.write_stanza(p);
                    }
                }
                Effect::DirectedAdd(to) => {
                    self.directed.insert(to);
                }
                Effect::DirectedRemove(to) => {
                    self.directed.remove(&to);
                }
                Effect::UnavailableToDirected(el) => {
                    let targets = std::mem::take(&mut self.directed);
                    im::presence::to_directed(&router, &el, targets).await;
                }
                Effect::PullQueue => self.pull(true),
                Effect::Deliver(list) => {
                    for (target, el) in list {
                        // A session that cannot take it (gone, or not
                        // reading) misses a notification, as a headline
                        // may be (RFC 6121 §8.5.2.1.1).
                        let _ = router.deliver(&target, el).await;
                    }
                }
                Effect::End(e) => end = Some(e),
            }
        }
        match end {
            Some(e) => Err(Ended::Error(e)),
            None => Ok(()),
        }
    }
}
