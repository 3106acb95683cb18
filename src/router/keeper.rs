//! Carries out custody (`custody.rs`) for the router: which nodes hold a
//! message, the mesh notices between holders, the commits to the queue,
//! the timer, the outcome for the sender's session, and the copies kept
//! back from the recipient's sessions here until custody releases them.
use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use starling_raft::command::OfflineMessage;
use starling_raft::NodeId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::custody::{Book, Effect, Key};
use super::parked::{Parked, Write};
use super::{inbox, GuardDone, Guarded, Inner, Router, Target};
use crate::clock::now_ms;
use crate::mesh::{Notice, Tag};
use crate::xmpp::Element;

/// Most bytes of messages this node keeps in custody (beyond, messages
/// take the queue path: commit first, then ack).
pub const MAX_CUSTODY_BYTES: usize = 64 * 1024 * 1024;
/// How often copies are checked for their timeouts.
const TICK: Duration = Duration::from_millis(100);
/// A tick later than this means the process was stalled ...
const STALL: Duration = Duration::from_secs(1);
/// ... and commits wait this long for the notices sent meanwhile.
const STALL_GRACE: Duration = Duration::from_millis(750);

/// Who learns the outcome of a message in custody: the sender's session.
/// (No copy of the message: the rare refusal rebuilds it from the
/// custody copy's xml for the error reply.)
#[derive(Debug)]
pub struct Waiter {
    pub tx: mpsc::UnboundedSender<GuardDone>,
    pub count: Option<u64>,
}

pub type CustodyBook = Book<Waiter>;

/// The holders a message of `bare` needs besides this node, when custody
/// can take it: the nodes of `chosen` and, if those are too few for a
/// majority of the voters, keepers.
pub(super) struct Plan {
    /// Every holder, this node first.
    pub holders: Vec<NodeId>,
    /// Holders that only keep a copy (no recipient session there).
    pub keepers: Vec<NodeId>,
    /// The other holders whose confirmation counts: voters only (a
    /// learner holding a copy does not make a majority).
    pub awaiting: Vec<NodeId>,
    /// The other holders with a session of the recipient that must be
    /// told (a `safe` notice) once the copy is safe, to write it; those
    /// whose own confirmation makes it safe learn it from the mesh acks
    /// (see [`Plan::safe_on_ack`]).
    pub primaries: Vec<NodeId>,
    /// How many of the other holders must confirm.
    pub needed: usize,
}

impl Plan {
    /// The mesh tag of a copy of `key` under this plan, for `node`.
    pub(super) fn tag(&self, key: &Key, node: NodeId) -> Tag {
        Tag {
            key: key.clone(),
            holders: self.holders.clone(),
            safe_on_ack: self.safe_on_ack(node),
        }
    }

    /// Whether `node`'s confirmation alone makes the copy safe (one more
    /// voter needed, and it is one).
    pub(super) fn safe_on_ack(&self, node: NodeId) -> bool {
        self.needed == 1 && self.awaiting.contains(&node)
    }
}

impl Router {
    /// Plans custody for a message `id` to `chosen`; none when custody
    /// cannot take it (no room; too few reachable voters; this node not a
    /// voter). In a one-node cluster this node alone is the majority: no
    /// node can fail without taking the whole service, so the message is
    /// acked at once and committed only if its client does not take it
    /// (and at a graceful stop); a crash of that node loses what was in
    /// flight, as with any single server.
    pub(super) fn custody_plan(&self, id: &str, chosen: &[&Target], bytes: usize) -> Option<Plan> {
        let voters = self.0.cluster.voter_ids();
        if !voters.contains(&self.0.node) {
            return None;
        }
        if !self.book().has_room(bytes) {
            return None;
        }
        let majority = voters.len() / 2 + 1;
        let mut holders = vec![self.0.node];
        for t in chosen {
            if !holders.contains(&t.binding.node) {
                holders.push(t.binding.node);
            }
        }
        let voting = |h: &[NodeId]| h.iter().filter(|n| voters.contains(n)).count();
        let mut keepers = Vec::new();
        if voting(&holders) < majority {
            let mut candidates: Vec<NodeId> = voters
                .iter()
                .copied()
                .filter(|n| !holders.contains(n) && !self.0.mesh.is_down(*n))
                .collect();
            // Spread the keeping over the candidates.
            let spin = id
                .bytes()
                .fold(0usize, |a, b| a.wrapping_mul(31) + b as usize);
            if !candidates.is_empty() {
                let len = candidates.len();
                candidates.rotate_left(spin % len);
            }
            for n in candidates {
                if voting(&holders) >= majority {
                    break;
                }
                holders.push(n);
                keepers.push(n);
            }
            if voting(&holders) < majority {
                return None;
            }
        }
        // Enough other voters to confirm, this node counting for one.
        let needed = majority - 1;
        let awaiting = holders[1..]
            .iter()
            .copied()
            .filter(|n| voters.contains(n))
            .collect();
        let mut plan = Plan {
            holders,
            keepers,
            awaiting,
            primaries: Vec::new(),
            needed,
        };
        plan.primaries = plan.holders[1..]
            .iter()
            .copied()
            .filter(|n| !plan.keepers.contains(n) && !plan.safe_on_ack(*n))
            .collect();
        Some(plan)
    }

    pub(super) fn book(&self) -> std::sync::MutexGuard<'_, CustodyBook> {
        self.0.custody.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.0.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `el` (in custody as `key`) back from session `session` of
    /// `full` here until custody releases it. Before the copy enters the
    /// book: a release may come at once.
    pub(super) fn park(&self, key: Key, full: &str, session: u64, el: Element) {
        self.parked().park(key, full, session, el, Instant::now());
    }

    /// Writes copies to their sessions; one a session cannot take (gone,
    /// full) is committed to the queue for the account's next pull.
    fn write_parked(&self, writes: Vec<Write>) {
        for w in writes {
            if self.deliver_local(&w.full, w.session, w.el).is_err() {
                self.custody_release(&w.key);
            }
        }
    }

    /// Writes what waited too long (see `parked`).
    fn sweep_parked(&self, now: Instant) {
        let writes = {
            let book = self.book();
            self.parked().sweep(now, |k| book.is_waiting(k))
        };
        if !writes.is_empty() {
            debug!(count = writes.len(), "custody: kept copies written late");
        }
        self.write_parked(writes);
    }

    /// Takes a message this node received from its sender into custody
    /// (before any copy is sent: confirmations may come at once). A copy
    /// for a session here must be parked first.
    pub(super) fn custody_originate(
        &self,
        key: Key,
        stanza: String,
        plan: &Plan,
        waiter: Waiter,
        primary: bool,
    ) {
        let message = OfflineMessage {
            id: key.1.clone(),
            stamp_ms: now_ms(),
            stanza,
        };
        let e = self.book().originate(
            key,
            message,
            plan.awaiting.clone(),
            plan.needed,
            plan.primaries.clone(),
            waiter,
            primary,
            Instant::now(),
        );
        self.run(e);
    }

    /// Sends the keepers of `plan` their copies.
    pub(super) async fn custody_keepers(&self, key: &Key, stanza: &str, plan: &Plan) {
        for n in &plan.keepers {
            let tag = plan.tag(key, *n);
            self.0.mesh.send_hold(*n, tag, stanza.to_string()).await;
        }
    }

    /// A copy another node originated (`holders` includes this node).
    pub fn custody_hold(
        &self,
        bare: &str,
        id: &str,
        stanza: String,
        holders: &[u64],
        primary: bool,
    ) {
        if id.is_empty() {
            return;
        }
        let others: Vec<NodeId> = holders
            .iter()
            .copied()
            .filter(|n| *n != self.0.node)
            .collect();
        let message = OfflineMessage {
            id: id.to_string(),
            stamp_ms: now_ms(),
            stanza,
        };
        let e = self.book().hold(
            (bare.to_string(), id.to_string()),
            message,
            others,
            primary,
            Instant::now(),
        );
        self.run(e);
    }

    /// A copy another node originated (queue id `id`, not empty) for
    /// session `session` of `full` here: held, and written once custody
    /// releases it.
    pub fn custody_arrived(
        &self,
        full: &str,
        session: u64,
        el: Element,
        id: &str,
        stanza: String,
        holders: &[u64],
    ) {
        let bare = crate::xmpp::jid::bare_of(full);
        self.park((bare.to_string(), id.to_string()), full, session, el);
        self.custody_hold(bare, id, stanza, holders, true);
    }

    /// Holder `node` confirmed these copies. Returns those whose
    /// confirmation came after their commit began (see [`Notice::late`]).
    pub fn custody_confirmed(&self, keys: Vec<Key>, node: NodeId) -> Vec<Key> {
        let mut late = Vec::new();
        let e: Vec<_> = {
            let mut b = self.book();
            keys.into_iter()
                .flat_map(|k| {
                    if b.is_committing(&k) {
                        late.push(k);
                        Vec::new()
                    } else {
                        b.confirmed(&k, node)
                    }
                })
                .collect()
        };
        self.run(e);
        late
    }

    pub fn custody_unconfirmed(&self, keys: Vec<Key>, node: NodeId) {
        let e: Vec<_> = {
            let mut b = self.book();
            keys.iter().flat_map(|k| b.unconfirmed(k, node)).collect()
        };
        self.run(e);
    }

    pub fn custody_peer_down(&self, node: NodeId) {
        let e = self.book().peer_down(node);
        if !e.is_empty() {
            debug!(peer = node, commits = e.len(), "custody: peer down");
        }
        self.run(e);
    }

    /// A holder's notice: `delivered` (its client has them), `stored`
    /// (it committed them to the queue) and, from the sender's node,
    /// `safe` (write them here).
    pub fn custody_notice(&self, notice: Notice) {
        let now = Instant::now();
        let e: Vec<_> = {
            let mut b = self.book();
            let mut e: Vec<_> = notice.safe.iter().flat_map(|k| b.safe(k, now)).collect();
            e.extend(notice.delivered.iter().flat_map(|k| b.done_elsewhere(k)));
            e.extend(notice.stored.iter().flat_map(|k| b.stored_elsewhere(k)));
            e.extend(notice.failed.iter().flat_map(|k| b.failed_elsewhere(k)));
            e
        };
        self.run(e);
    }

    /// The client of `bare` on this node has these messages (XEP-0198 ack,
    /// or written without stream management): they leave custody, or the
    /// queue.
    pub fn delivered(&self, bare: &str, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let e: Vec<_> = {
            let mut b = self.book();
            ids.into_iter()
                .flat_map(|id| b.delivered(&(bare.to_string(), id)))
                .collect()
        };
        self.run(e);
    }

    /// Notices for `node` that could not be sent (its link is down; they
    /// are kept for when it is back): what they say was delivered is
    /// removed through raft now, as that holder may commit its copy first.
    pub fn custody_undelivered_notice(&self, notice: &Notice) {
        for (bare, id) in &notice.delivered {
            self.0.remover.tombstone(bare, id.clone());
        }
    }

    /// The recipient's session here could not take `key`: commit it.
    pub fn custody_release(&self, key: &Key) {
        let e = self.book().release(key);
        self.run(e);
    }

    /// A session of `bare` here ended: what is still in custody for the
    /// account goes to its queue now, for its next session wherever.
    pub fn custody_release_account(&self, bare: &str) {
        let e = self.book().release_account(bare);
        self.run(e);
    }

    /// The session of `bare` here moves to another node: what custody
    /// held for it is committed to its queue, and this waits (at most
    /// `limit`) for those commits, so that the acks the client sends there
    /// remove what they count from the queue rather than race the commits.
    pub async fn custody_settle_account(&self, bare: &str, limit: Duration) {
        self.custody_release_account(bare);
        let until = Instant::now() + limit;
        while self.book().holds_account(bare) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stopping: every copy goes to the queue; waits (at most `limit`).
    pub(super) async fn custody_release_all(&self, limit: Duration) {
        let e = self.book().release_all();
        self.run(e);
        let until = Instant::now() + limit;
        while !self.book().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn custody_committed(&self, key: Key, outcome: Guarded) {
        // A refusal is answered with an error reply, rebuilt from the
        // copy's xml (the book keeps it until now).
        let (stanza, e) = {
            let mut b = self.book();
            let stanza = match outcome {
                Guarded::Refused(_) => b.message(&key).map(|m| m.stanza.clone()),
                _ => None,
            };
            (stanza, b.committed(&key, outcome))
        };
        let (refused, e): (Vec<_>, Vec<_>) = e
            .into_iter()
            .partition(|e| matches!(e, Effect::Outcome(_, Guarded::Refused(_))));
        for effect in refused {
            if let Effect::Outcome(w, outcome) = effect {
                let _ = w.tx.send(GuardDone {
                    count: w.count,
                    outcome,
                    message: stanza
                        .as_deref()
                        .and_then(|s| crate::xmpp::parse_stanza(s).ok()),
                });
            }
        }
        self.run(e);
    }

    /// Carries out custody effects (never waits).
    fn run(&self, effects: Vec<Effect<Waiter>>) {
        if effects.is_empty() {
            return;
        }
        let mut notices: BTreeMap<NodeId, Notice> = BTreeMap::new();
        for e in effects {
            match e {
                Effect::Outcome(w, outcome) => {
                    let _ = w.tx.send(GuardDone {
                        count: w.count,
                        outcome,
                        message: None,
                    });
                }
                Effect::Commit(key, message) => {
                    let router = self.clone();
                    let to = key.0.clone();
                    self.0.custody_pipeline.submit(inbox::GuardJob {
                        to,
                        message,
                        // As for a live message (see `route_message`).
                        caps: self.0.queue_caps.live(),
                        done: Box::new(move |outcome| {
                            if let Guarded::Refused(e) = &outcome {
                                warn!(to = %key.0, error = %e.condition, "custody: queue refused a message");
                            }
                            router.custody_committed(key, outcome)
                        }),
                    });
                }
                Effect::Done(nodes, key) => {
                    // A holder out of reach may commit its copy before it
                    // hears this: the removal goes to raft now, so the
                    // queue drops that commit (else the client got the
                    // message again at its next session).
                    if nodes.iter().any(|n| self.0.mesh.is_down(*n)) {
                        self.0.remover.tombstone(&key.0, key.1.clone());
                    }
                    for n in nodes {
                        notices.entry(n).or_default().delivered.push(key.clone());
                    }
                }
                Effect::Stored(nodes, key) => {
                    for n in nodes {
                        notices.entry(n).or_default().stored.push(key.clone());
                    }
                }
                Effect::Safe(nodes, key) => {
                    for n in nodes {
                        notices.entry(n).or_default().safe.push(key.clone());
                    }
                }
                Effect::Failed(nodes, key) => {
                    for n in nodes {
                        notices.entry(n).or_default().failed.push(key.clone());
                    }
                }
                Effect::Release(key) => {
                    let w = self.parked().release(&key, Instant::now());
                    self.write_parked(w);
                }
                Effect::Discard(key) => {
                    let w = self.parked().discard(&key, Instant::now());
                    self.write_parked(w);
                }
                Effect::Remove(key) => self.0.remover.delivered(&key.0, key.1),
                Effect::RemoveIfQueued(key) => {
                    let queued = self
                        .0
                        .cluster
                        .state()
                        .read()
                        .data
                        .offline_ids
                        .get(&key)
                        .is_some();
                    if queued {
                        self.0.remover.delivered(&key.0, key.1);
                    }
                }
            }
        }
        for (node, notice) in notices {
            self.0.mesh.send_done(node, notice);
        }
    }
}

/// Commits what waited too long; ends with the router.
pub(super) async fn run_ticker(router: Weak<Inner>) {
    let mut t = tokio::time::interval(TICK);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut grace_until: Option<Instant> = None;
    loop {
        t.tick().await;
        let now = Instant::now();
        // A tick far too late means this process was stopped (SIGSTOP, a
        // VM pause, swapping): the copies' deadlines passed while the
        // notices that would have settled them ("done" from the recipient's
        // node) sat unread in the sockets. Let those be read first; a copy
        // kept a little longer is still safe, one committed needlessly
        // comes to the client twice.
        if now.duration_since(last) > TICK + STALL {
            debug!(late = ?now.duration_since(last), "custody: timer stalled, reading notices first");
            grace_until = Some(now + STALL_GRACE);
        }
        last = now;
        if grace_until.is_some_and(|g| now < g) {
            continue;
        }
        let Some(inner) = router.upgrade() else {
            return;
        };
        let r = Router(inner);
        let e = r.book().tick(now);
        if !e.is_empty() {
            debug!(commits = e.len(), "custody: timed out copies to the queue");
        }
        r.run(e);
        r.sweep_parked(now);
    }
}
