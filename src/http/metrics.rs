//! `/metrics`: the node in the Prometheus text format (0.0.4), for
//! Prometheus to scrape. Counters come from `crate::metrics` (atomics bumped
//! on the hot path); everything that is state is read here, at scrape time:
//! raft (term, leader, log/commit/apply indexes, snapshot, follower lag on
//! the leader, proposal latency), the replicated tables (sessions,
//! accounts, offline queues), the router and admission tables, the mesh
//! links, and the process (RSS, file descriptors, from `/proc`).
//!
//! Names follow the Prometheus conventions (`starling_` prefix, base units:
//! seconds and bytes, `_total` on counters); `tests/metrics.rs` runs
//! `promtool check metrics` on real output. `deploy/` has the Grafana
//! dashboard and the alert rules that use them.
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{ConnInfo, HttpState};
use crate::metrics::{
    AuthOutcome, Exposition, Kind, RouteOutcome, StanzaKind, Transport, CONTENT_TYPE,
};

/// The exposition, to a peer `[http] metrics_allow` lets in and with the
/// token when one is configured (`super::access`); 403/401 otherwise.
pub(super) async fn metrics(
    State(st): State<HttpState>,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(refused) = st.metrics_access.check(info.peer.ip(), authorization) {
        tracing::debug!(peer = %info.peer, ?refused, "/metrics refused");
        return refused.into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&st)).into_response()
}

/// The whole exposition.
fn render(st: &HttpState) -> String {
    let shared = &st.c2s;
    let m = shared.router.metrics();
    let mut e = Exposition::default();

    // Clients.
    e.family(
        "starling_c2s_connections",
        Kind::Gauge,
        "Client connections open, by transport (tcp includes direct TLS).",
    );
    for t in Transport::ALL {
        let n = m.connections(t).open_now();
        e.sample(
            "starling_c2s_connections",
            &[("transport", t.as_str())],
            n as f64,
        );
    }
    e.family(
        "starling_c2s_connections_opened_total",
        Kind::Counter,
        "Client connections accepted, by transport.",
    );
    for t in Transport::ALL {
        let n = m.connections(t).opened.get();
        e.sample(
            "starling_c2s_connections_opened_total",
            &[("transport", t.as_str())],
            n as f64,
        );
    }
    let (preauth, authenticated) = shared
        .admission
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .open();
    e.family(
        "starling_c2s_admitted_connections",
        Kind::Gauge,
        "Admitted client connections by state: before authentication (the pre-auth pool) or authenticated (session slots).",
    )
    .sample(
        "starling_c2s_admitted_connections",
        &[("state", "preauth")],
        preauth as f64,
    )
    .sample(
        "starling_c2s_admitted_connections",
        &[("state", "authenticated")],
        authenticated as f64,
    );
    e.single(
        "starling_c2s_sessions",
        Kind::Gauge,
        "Sessions bound on this node.",
        shared.router.local_sessions().len() as f64,
    );
    let resumable = shared
        .resumable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    e.single(
        "starling_c2s_resumable_sessions",
        Kind::Gauge,
        "XEP-0198 resumable sessions on this node (attached or detached).",
        resumable as f64,
    );
    for (name, help, by) in [
        (
            "starling_stanzas_received_total",
            "Top-level elements read from bound clients, by kind.",
            &m.stanzas_in,
        ),
        (
            "starling_stanzas_sent_total",
            "Stanzas written to bound clients, by kind.",
            &m.stanzas_out,
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for k in StanzaKind::ALL {
            e.sample(name, &[("kind", k.as_str())], by.get(k) as f64);
        }
    }
    e.family(
        "starling_routed_stanzas_total",
        Kind::Counter,
        "Stanzas routed, by outcome: a session here (local), a session on another node (mesh), an offline queue, or an error back to the sender (bounced).",
    );
    for o in RouteOutcome::ALL {
        e.sample(
            "starling_routed_stanzas_total",
            &[("outcome", o.as_str())],
            m.routed(o).get() as f64,
        );
    }
    e.family(
        "starling_auth_attempts_total",
        Kind::Counter,
        "SASL authentications by outcome (throttled: the address is blocked for failures; unavailable: this node is not caught up).",
    );
    for o in AuthOutcome::ALL {
        e.sample(
            "starling_auth_attempts_total",
            &[("outcome", o.as_str())],
            m.auth(o).get() as f64,
        );
    }

    // Mesh.
    let links = shared.router.mesh().link_report();
    e.family(
        "starling_mesh_link_up",
        Kind::Gauge,
        "1 if the mesh link to a peer is healthy (no recent failure, nothing unacknowledged for long).",
    );
    for (peer, up, _) in &links {
        let peer = peer.to_string();
        e.sample(
            "starling_mesh_link_up",
            &[("peer", &peer)],
            if *up { 1.0 } else { 0.0 },
        );
    }
    e.family(
        "starling_mesh_link_queued_envelopes",
        Kind::Gauge,
        "Envelopes waiting in the mesh link to a peer.",
    );
    for (peer, _, queued) in &links {
        let peer = peer.to_string();
        e.sample(
            "starling_mesh_link_queued_envelopes",
            &[("peer", &peer)],
            *queued as f64,
        );
    }

    // Raft and the replicated state.
    let r = shared.cluster.metrics_view();
    e.single(
        "starling_raft_term",
        Kind::Gauge,
        "The raft term this node is in.",
        r.term as f64,
    );
    e.single(
        "starling_raft_is_leader",
        Kind::Gauge,
        "1 if this node is the raft leader.",
        if r.is_leader { 1.0 } else { 0.0 },
    );
    e.single(
        "starling_raft_leader_known",
        Kind::Gauge,
        "1 if this node knows a raft leader.",
        if r.leader.is_some() { 1.0 } else { 0.0 },
    );
    e.single(
        "starling_raft_leader_id",
        Kind::Gauge,
        "The node id of the leader this node knows (0: none).",
        r.leader.unwrap_or(0) as f64,
    );
    e.single(
        "starling_raft_voters",
        Kind::Gauge,
        "Voters in the membership.",
        r.voters as f64,
    );
    e.single(
        "starling_raft_last_log_index",
        Kind::Gauge,
        "Index of the last raft log entry here.",
        r.last_log_index as f64,
    );
    e.single(
        "starling_raft_commit_index",
        Kind::Gauge,
        "The commit index: on a follower the leader's as last sent; on the leader what it applied.",
        r.commit_index as f64,
    );
    e.single(
        "starling_raft_applied_index",
        Kind::Gauge,
        "Index of the last entry applied here.",
        r.applied_index as f64,
    );
    e.single(
        "starling_raft_snapshot_index",
        Kind::Gauge,
        "Index of the last snapshot built or installed here.",
        r.snapshot_index as f64,
    );
    e.single(
        "starling_raft_snapshot_size_bytes",
        Kind::Gauge,
        "Size of the last snapshot built or installed by this process (0: none yet).",
        r.snapshot_bytes as f64,
    );
    e.family(
        "starling_raft_follower_matched_index",
        Kind::Gauge,
        "On the leader: each follower's highest log index known replicated.",
    );
    for (peer, idx) in &r.matched {
        let peer = peer.to_string();
        e.sample(
            "starling_raft_follower_matched_index",
            &[("peer", &peer)],
            *idx as f64,
        );
    }
    e.histogram(
        "starling_raft_proposal_duration_seconds",
        "Time from proposing a command to having it applied here (every outcome).",
        &shared.cluster.proposal_latency(),
    );
    e.single(
        "starling_accounts",
        Kind::Gauge,
        "Accounts in the replicated state.",
        r.users as f64,
    );
    e.single(
        "starling_cluster_sessions",
        Kind::Gauge,
        "Session bindings in the replicated state (every node's).",
        r.sessions as f64,
    );
    e.single(
        "starling_offline_messages",
        Kind::Gauge,
        "Messages waiting in offline queues (every account's).",
        r.queued as f64,
    );
    e.single(
        "starling_offline_messages_size_bytes",
        Kind::Gauge,
        "Bytes of the messages waiting in offline queues.",
        r.queued_bytes as f64,
    );

    // The process.
    if let Some(rss) = resident_bytes() {
        e.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    if let Some(fds) = open_fds() {
        e.single(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            fds as f64,
        );
    }
    if let Some(max) = max_fds() {
        e.single(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
    e.finish()
}

/// `VmRSS` of `/proc/self/status`, in bytes (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
