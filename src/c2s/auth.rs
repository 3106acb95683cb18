//! One SASL exchange over a connection, for both profiles: RFC 6120 §6
//! (`<auth/>` in `urn:ietf:params:xml:ns:xmpp-sasl`, answered here) and
//! XEP-0388 SASL2 (`<authenticate/>`, whose `<success/>` the caller sends
//! once the inline features are processed, see `c2s::sasl2`).
//!
//! What both share, so a login counts the same whichever profile it uses:
//! the refusals before any password is looked at (the address blocked by
//! `auth_limit`; a node not caught up with the cluster), the mechanisms
//! (`c2s::sasl`, PLAIN's PBKDF2 on a blocking thread), every failure
//! recorded by the limiter and answered after its delay, and on success the
//! connection promoted to the session pool.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use starling_raft::credentials::Credentials;
use tracing::{debug, info, warn};

use super::sasl::{ChannelBindings, CredentialStore, Mechanism, SaslFailure, SaslSession, Step};
use super::stream::{Conn, ConnError};
use super::{Shared, Ticket};
use crate::xmpp::jid::account_jid;
use crate::xmpp::{ns, StreamError};

/// SASL failures on one connection before it is closed (RFC 6120 §6.4.5
/// asks for at least 2 retries).
pub(super) const MAX_SASL_TRIES: u32 = 3;

/// Passwords are checked only against fresh replicated state (see
/// `ClusterHandle::caught_up`): a leader with a quorum heard within this
/// long (ten election timeouts at the defaults)...
const FRESH_WITHIN: Duration = Duration::from_secs(5);
/// ...and, on a follower, the leader's last commit index applied, waiting
/// at most `FRESH_WAIT` for the last `FRESH_SLACK` entries (a follower
/// applies within milliseconds of a commit; one catching up after a
/// restart is thousands behind, and is refused at once).
const FRESH_SLACK: u64 = 512;
const FRESH_WAIT: Duration = Duration::from_secs(1);

/// Which SASL profile an exchange runs in: it decides the elements sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Profile {
    /// RFC 6120 §6.
    Legacy,
    /// XEP-0388.
    Sasl2,
}

impl Profile {
    /// A `<failure/>` of this profile.
    pub(super) fn failure(self, f: SaslFailure, text: Option<&str>) -> String {
        match self {
            Profile::Legacy => {
                let mut s = format!("<failure xmlns='{}'><{}/>", ns::SASL, f.condition());
                if let Some(t) = text {
                    s.push_str("<text xml:lang='en'>");
                    crate::xmpp::element::escape_into(&mut s, t, false);
                    s.push_str("</text>");
                }
                s.push_str("</failure>");
                s
            }
            Profile::Sasl2 => super::sasl2::failure(f, text),
        }
    }

    fn challenge(self, data: &[u8]) -> String {
        match self {
            Profile::Legacy => format!(
                "<challenge xmlns='{}'>{}</challenge>",
                ns::SASL,
                super::sasl::encode_payload(data)
            ),
            Profile::Sasl2 => super::sasl2::challenge(data),
        }
    }
}

/// The accounts as this node's replicated state has them; remembers whether
/// a lookup found no account (see [`settle_miss`]).
pub(super) struct Store<'a> {
    shared: &'a Shared,
    missed: AtomicBool,
}

impl<'a> Store<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        Store {
            shared,
            missed: AtomicBool::new(false),
        }
    }

    fn missed(&self) -> bool {
        self.missed.load(Ordering::Relaxed)
    }
}

impl CredentialStore for Store<'_> {
    fn credentials(&self, username: &str) -> Option<Credentials> {
        let bare = account_jid(username, &self.shared.domain)?;
        let state = self.shared.cluster.state().read();
        let found = state.data.users.get(&bare).map(|u| u.credentials.clone());
        if found.is_none() {
            self.missed.store(true, Ordering::Relaxed);
        }
        found
    }
}

/// How long a lookup that found no account waits for the leader's read
/// index before the answer stands.
const MISS_CONFIRM: Duration = Duration::from_secs(1);

/// Whether a lookup that found no account (or no FAST token) on this node
/// should be run again:
/// a follower learns that an entry is committed with the leader's next
/// append, so an account created through another node a moment ago (its
/// creator already answered) may be in this node's log but not applied.
/// Refusing it would make "created, then log in on any node" fail for a
/// heartbeat (`tests/mam.rs` hit it in CI). So on a node that is not the
/// leader, a miss asks the leader for its commit index (a read index,
/// `ClusterHandle::confirm_contact`) and applies up to it: `true` if that
/// applied anything, and the lookup is worth repeating. Only misses pay
/// this round trip, and they are failures the limiter slows down anyway.
/// `before`: the applied index read before the lookup (read after it, an
/// entry applied in between would be missed by the comparison).
pub(super) async fn settle_miss(shared: &Shared, before: u64) -> bool {
    if shared.cluster.is_leader() {
        return false;
    }
    shared.cluster.confirm_contact(MISS_CONFIRM).await && shared.cluster.applied_index() > before
}

/// Why an authentication is refused before any password is looked at:
/// RFC 6120 §6.5.12 `temporary-auth-failure`, with a text saying why.
/// The address, not the account, is what gets blocked (see `auth_limit`).
/// A node catching up (restarted after writes it missed) or cut off from
/// the leader would check the password against stale accounts: "try again
/// later", and the client's next try may pick another node.
pub(super) async fn refusal(shared: &Shared, ip: std::net::IpAddr) -> Option<&'static str> {
    use crate::metrics::AuthOutcome;
    if auth_blocked(shared, ip) {
        shared.router.metrics().auth(AuthOutcome::Throttled).inc();
        return Some("too many failed attempts from your address; try again later");
    }
    if !shared
        .cluster
        .caught_up(FRESH_WITHIN, FRESH_SLACK, FRESH_WAIT)
        .await
    {
        shared.router.metrics().auth(AuthOutcome::Unavailable).inc();
        return Some(
            "this node is catching up with the cluster; try again shortly or use another node",
        );
    }
    None
}

/// Sends a refusal of [`refusal`], counted as a try of this connection (not
/// as a wrong password).
pub(super) async fn refuse(
    conn: &mut Conn,
    profile: Profile,
    why: &str,
    failures: &mut u32,
) -> Result<(), ConnError> {
    conn.send(&profile.failure(SaslFailure::TemporaryAuthFailure, Some(why)))
        .await?;
    *failures += 1;
    if *failures >= MAX_SASL_TRIES {
        return Err(ConnError::Closed);
    }
    Ok(())
}

/// Whether `ip`'s address is blocked for failed authentications.
fn auth_blocked(shared: &Shared, ip: std::net::IpAddr) -> bool {
    let mut l = shared.limiter.lock().unwrap_or_else(|p| p.into_inner());
    l.check(ip, Instant::now()).is_err()
}

/// Starts a SASL exchange; PLAIN (which hashes the password with PBKDF2
/// when it has an initial response) runs on a blocking thread.
/// `bindings`: the connection's channel-binding data (SCRAM-*-PLUS).
/// A step that looked up an account this node does not have is run once
/// more after [`settle_miss`].
pub(super) async fn start_sasl(
    shared: &Arc<Shared>,
    mech: Mechanism,
    initial: Option<Vec<u8>>,
    bindings: ChannelBindings,
) -> (SaslSession, Step) {
    let before = shared.cluster.applied_index();
    let (session, step, missed) = start_once(shared, mech, initial.clone(), bindings.clone()).await;
    if missed && settle_miss(shared, before).await {
        let (session, step, _) = start_once(shared, mech, initial, bindings).await;
        return (session, step);
    }
    (session, step)
}

/// [`start_sasl`] without the second look; also says whether the
/// lookup missed.
async fn start_once(
    shared: &Arc<Shared>,
    mech: Mechanism,
    initial: Option<Vec<u8>>,
    bindings: ChannelBindings,
) -> (SaslSession, Step, bool) {
    if mech != Mechanism::Plain || initial.is_none() {
        let store = Store::new(shared);
        let (session, step) =
            SaslSession::start_bound(mech, &shared.domain, initial.as_deref(), &store, bindings);
        return (session, step, store.missed());
    }
    let shared2 = shared.clone();
    let r = tokio::task::spawn_blocking(move || {
        let store = Store::new(&shared2);
        let (session, step) = SaslSession::start(mech, &shared2.domain, initial.as_deref(), &store);
        (session, step, store.missed())
    })
    .await;
    match r {
        Ok(x) => x,
        Err(_) => {
            let (session, step) =
                SaslSession::start(mech, &shared.domain, None, &Store::new(shared));
            (session, step, false)
        }
    }
}

/// Feeds a client response to the exchange in `sasl`; PLAIN derives the
/// password's key (PBKDF2) on a blocking thread, not an async worker.
/// Accounts are looked up on the first message of both mechanisms (PLAIN's
/// only one, SCRAM's client-first), so a response that missed is that
/// message: after [`settle_miss`] the exchange is started again with it as
/// the initial response, which is the same exchange.
pub(super) async fn continue_sasl(
    shared: &Arc<Shared>,
    sasl: &mut Option<SaslSession>,
    bytes: Vec<u8>,
    bindings: ChannelBindings,
) -> Step {
    let Some(mech) = sasl.as_ref().map(|s| s.mechanism()) else {
        return Step::Failure(SaslFailure::MalformedRequest);
    };
    let before = shared.cluster.applied_index();
    let (step, missed) = continue_once(shared, sasl, bytes.clone()).await;
    if missed && settle_miss(shared, before).await {
        let (session, step, _) = start_once(shared, mech, Some(bytes), bindings).await;
        *sasl = Some(session);
        return step;
    }
    step
}

/// [`continue_sasl`] without the second look.
async fn continue_once(
    shared: &Arc<Shared>,
    sasl: &mut Option<SaslSession>,
    bytes: Vec<u8>,
) -> (Step, bool) {
    let Some(mech) = sasl.as_ref().map(|s| s.mechanism()) else {
        return (Step::Failure(SaslFailure::MalformedRequest), false);
    };
    if mech != Mechanism::Plain {
        let store = Store::new(shared);
        let step = match sasl.as_mut() {
            Some(s) => s.step(&bytes, &store),
            None => Step::Failure(SaslFailure::MalformedRequest),
        };
        return (step, store.missed());
    }
    let shared2 = shared.clone();
    let mut moved = sasl.take();
    let r = tokio::task::spawn_blocking(move || {
        let store = Store::new(&shared2);
        let step = moved.as_mut().map(|s| s.step(&bytes, &store));
        let missed = store.missed();
        (moved, step, missed)
    })
    .await;
    match r {
        Ok((back, Some(step), missed)) => {
            *sasl = back;
            (step, missed)
        }
        _ => (Step::Failure(SaslFailure::TemporaryAuthFailure), false),
    }
}

/// An authenticated account, and what its mechanism sends with success.
pub(super) struct Authenticated {
    pub bare: String,
    pub additional: Vec<u8>,
}

/// Answers one SASL step. On success the account is returned: the
/// RFC 6120 profile's `<success/>` is sent here; SASL2's is the caller's
/// (it carries the results of the inline features).
pub(super) async fn sasl_step(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    ticket: &mut Ticket,
    sasl: &mut Option<SaslSession>,
    step: Step,
    failures: &mut u32,
    profile: Profile,
) -> Result<Option<Authenticated>, ConnError> {
    let ip = conn.peer.ip();
    match step {
        Step::Challenge(bytes) => {
            conn.send(&profile.challenge(&bytes)).await?;
            Ok(None)
        }
        Step::Success {
            username,
            additional,
        } => {
            *sasl = None;
            let Some(bare) = account_jid(&username, &shared.domain) else {
                conn.send(&profile.failure(SaslFailure::NotAuthorized, None))
                    .await?;
                return Ok(None);
            };
            {
                let mut l = shared.limiter.lock().unwrap_or_else(|p| p.into_inner());
                l.record_success(&bare, ip, Instant::now());
            }
            // Authenticated: the connection leaves the pre-auth pool for a
            // session slot, if one is free (RFC 6120 §4.9.3.17).
            if let Err(why) = ticket.promote() {
                // Counted in the summarized refusal log line, not here.
                debug!(jid = %bare, reason = why.as_str(), "authenticated, but no session slot");
                return Err(StreamError::with_text(why.condition(), why.as_str()).into());
            }
            if profile == Profile::Legacy {
                let payload = if additional.is_empty() {
                    String::new()
                } else {
                    base64::engine::general_purpose::STANDARD.encode(&additional)
                };
                conn.send(&format!(
                    "<success xmlns='{}'>{payload}</success>",
                    ns::SASL
                ))
                .await?;
            }
            shared
                .router
                .metrics()
                .auth(crate::metrics::AuthOutcome::Success)
                .inc();
            info!(jid = %bare, sasl2 = profile == Profile::Sasl2, "authenticated");
            tracing::Span::current().record("jid", bare.as_str());
            Ok(Some(Authenticated { bare, additional }))
        }
        Step::Failure(f) => {
            let account = sasl
                .as_ref()
                .and_then(|s| s.authcid())
                .and_then(|u| account_jid(u, &shared.domain));
            *sasl = None;
            *failures += 1;
            shared
                .router
                .metrics()
                .auth(crate::metrics::AuthOutcome::Failure)
                .inc();
            let failure = {
                let mut l = shared.limiter.lock().unwrap_or_else(|p| p.into_inner());
                l.record_failure(account.as_deref().unwrap_or(""), ip, Instant::now())
            };
            if let Some(b) = failure.blocked {
                // One line per block (at most one per address per
                // `auth_block_secs`), never per attempt.
                warn!(
                    address = %b.key,
                    block_secs = b.duration.as_secs(),
                    strike = b.strike,
                    "address blocked after repeated authentication failures"
                );
                // Every node blocks it: a guesser gets one node's
                // allowance, not one per node (see `auth_limit`).
                shared.router.mesh().broadcast_auth_block(b.key, b.duration);
            }
            // Slow down guessing: the failure is answered after a delay
            // that grows with the address's recent failures.
            tokio::time::sleep(failure.delay).await;
            conn.send(&profile.failure(f, None)).await?;
            if *failures >= MAX_SASL_TRIES {
                return Err(ConnError::Closed);
            }
            Ok(None)
        }
    }
}
