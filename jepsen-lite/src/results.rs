//! What a run found: `results.json`, written by the checkers and read by the
//! report and the matrix summary. Every anomaly names its message or
//! account and the time it happened, so the report can show the nemesis
//! events around it.
use serde::{Deserialize, Serialize};

/// How a run was set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub nodes: u64,
    /// The nemesis schedule's name (see `nemesis::Kind`).
    pub nemesis: String,
    pub seed: u64,
    /// Seconds of faults and traffic before healing.
    pub time_s: u64,
    /// `netns` (each node in its own network namespace) or `loopback`.
    pub net: String,
    /// The schedule needed partitions but namespaces were unavailable: only
    /// kills and pauses ran. Reported loudly; such a run is not a pass.
    pub partitions_skipped: bool,
    /// The command line that reproduces the run.
    pub command: String,
    /// Wall-clock start, RFC 3339 (UTC).
    pub started: String,
}

/// The whole result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub run: RunInfo,
    pub verdict: Verdict,
    pub queue: QueueResult,
    pub register: RegisterResult,
    pub roster: RosterResult,
    pub convergence: ConvergenceResult,
    pub availability: Availability,
    pub latency: LatencyResult,
}

/// Valid when no failure was found. `failures` says why not, one line
/// each; `warnings` are reported but do not fail the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub valid: bool,
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
}

/// A message named in an anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsgRef {
    pub id: String,
    pub from: String,
    pub to: String,
    /// When it was sent (the `Send` entry), µs since the run began.
    pub sent_us: u64,
    /// The node the sender was connected to.
    pub node: u64,
    /// When the anomaly showed (the ack, the bounce, the receipt...), µs.
    pub at_us: u64,
}

/// A message received more than once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    pub msg: MsgRef,
    pub copies: u64,
    /// Every copy carried the same XEP-0359 stanza-id.
    pub same_stanza_id: bool,
    pub stanza_ids: Vec<Option<String>>,
}

/// Two messages of one sender's stream that arrived out of the order they
/// were sent in (first copies only, both acknowledged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderViolation {
    pub sender: String,
    pub session: u64,
    /// Sent first, received second.
    pub earlier: MsgRef,
    /// Sent second, received first.
    pub later: MsgRef,
}

/// The total-queue checker (Jepsen's `total-queue`) plus XMPP's extras.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct QueueResult {
    /// `Send` entries.
    pub sent: u64,
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
    /// Distinct ids received.
    pub received: u64,
    /// Acknowledged, never received.
    pub lost: Vec<MsgRef>,
    /// Received, never sent.
    pub unexpected: Vec<MsgRef>,
    pub duplicated: Vec<Duplicate>,
    /// Unknown outcome, received: fine, counted.
    pub recovered: u64,
    /// Unknown outcome, never received: fine, counted.
    pub unknown_lost: u64,
    /// Acknowledged, then an error stanza came back for it.
    pub acked_then_bounced: Vec<MsgRef>,
    /// The sender was told it failed, yet it was delivered.
    pub failed_but_delivered: Vec<MsgRef>,
    pub order_violations: Vec<OrderViolation>,
    /// Offline queues not empty after every recipient drained and closed
    /// (messages stored but never taken out): (bare JID, depth).
    #[serde(default)]
    pub undrained: Vec<(String, u64)>,
    /// Extra copies / distinct ids received.
    pub duplicate_rate: f64,
}

/// One account whose history has no linearization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyViolation {
    pub key: String,
    /// The key's operations, one line each, in invocation order, e.g.
    /// `[12.345s..12.400s] reg-2 create via admin on n1 -> exists`.
    pub ops: Vec<String>,
    /// First time of the key's operations, µs (to place nemesis events).
    pub first_us: u64,
    pub last_us: u64,
}

/// The register (account creation) workload's linearizability check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RegisterResult {
    pub ops: u64,
    pub created: u64,
    pub exists: u64,
    pub reads: u64,
    pub fail: u64,
    pub unknown: u64,
    pub keys: u64,
    pub linearizable: bool,
    pub violations: Vec<KeyViolation>,
}

/// Two users whose rosters disagree about their subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RosterDisagreement {
    pub a: String,
    pub b: String,
    /// a's item for b, e.g. `to` or `none+ask` or `absent`.
    pub a_has: String,
    /// b's item for a.
    pub b_has: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RosterResult {
    pub users: u64,
    pub pairs: u64,
    /// Users whose final roster could not be read.
    pub unread: Vec<String>,
    pub disagreements: Vec<RosterDisagreement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ConvergenceResult {
    /// Every member answered with the same applied index and digest.
    pub converged: bool,
    pub waited_ms: u64,
    pub members: Vec<crate::history::MemberState>,
}

/// Fraction of sends whose outcome was `ok`, among those invoked inside
/// fault windows and outside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Availability {
    pub sends_in_faults: u64,
    pub ok_in_faults: f64,
    pub sends_outside: u64,
    pub ok_outside: f64,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub t_s: u64,
    /// Sends invoked in this second, and how many of them ended ok.
    pub sent: u64,
    pub ok: u64,
    /// First copies received in this second.
    pub received: u64,
    /// Delivery latency (receipt - send) of those, ms; 0 when none.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Delivery latency: first receipt minus send, over the whole run, for live
/// deliveries (copies from offline storage waited for their recipient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LatencyResult {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub series: Vec<Bucket>,
}

/// A fault window, from the history's `Nemesis` entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    pub fault: u64,
    pub kind: String,
    pub nodes: Vec<u64>,
    pub start_us: u64,
    /// End of the fault (heal/restart/resume), or the end of the run.
    pub end_us: u64,
}
