//! The node's counters for `/metrics` (`src/http/metrics.rs` renders them
//! with the gauges it reads from state at scrape time) and the Prometheus
//! text exposition format (version 0.0.4) they are written in.
//!
//! Hot path: every counter is a plain `AtomicU64` in a field created at
//! start-up, one per label value (stanza kind, routing outcome, auth
//! outcome, transport), so counting is one relaxed add: no lock, no
//! allocation, no label lookup. What is state (sessions, queue depths, raft
//! indexes, mesh links) is not counted here but read when scraped.
//!
//! Written by hand rather than with `prometheus-client` or `metrics`: the
//! format is a few lines, we need no registry, and the output is exactly
//! what `promtool check metrics` (run by `tests/metrics.rs`) accepts.
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A stanza's kind, by its element name (RFC 6120 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
    /// Anything else a stream carries at top level (SM acks, CSI, ...).
    Other,
}

impl StanzaKind {
    pub const ALL: [StanzaKind; 4] = [Self::Message, Self::Presence, Self::Iq, Self::Other];

    pub fn of(name: &str) -> Self {
        match name {
            "message" => Self::Message,
            "presence" => Self::Presence,
            "iq" => Self::Iq,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Presence => "presence",
            Self::Iq => "iq",
            Self::Other => "other",
        }
    }
}

/// Per stanza kind.
#[derive(Debug, Default)]
pub struct ByKind([Counter; 4]);

impl ByKind {
    pub fn inc(&self, kind: StanzaKind) {
        self.0[kind as usize].inc();
    }
    pub fn get(&self, kind: StanzaKind) -> u64 {
        self.0[kind as usize].get()
    }
}

/// Where the router sent a stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOutcome {
    /// To a session on this node.
    Local,
    /// Over the mesh to another node's session.
    Mesh,
    /// Into the recipient's offline queue (no session took it).
    Offline,
    /// An error back to the sender.
    Bounced,
}

impl RouteOutcome {
    pub const ALL: [RouteOutcome; 4] = [Self::Local, Self::Mesh, Self::Offline, Self::Bounced];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Mesh => "mesh",
            Self::Offline => "offline",
            Self::Bounced => "bounced",
        }
    }
}

/// An authentication's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Success,
    /// Wrong credentials or a malformed exchange.
    Failure,
    /// Refused before any password was looked at: the address is blocked
    /// for failed attempts (`c2s/auth_limit.rs`).
    Throttled,
    /// Refused because this node is not caught up with the cluster.
    Unavailable,
}

impl AuthOutcome {
    pub const ALL: [AuthOutcome; 4] = [
        Self::Success,
        Self::Failure,
        Self::Throttled,
        Self::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
        }
    }
}

/// How a client connection came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Self::Tcp, Self::WebSocket];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
        }
    }
}

/// Connections of one transport: opened so far, and open now.
#[derive(Debug, Default)]
pub struct Connections {
    pub opened: Counter,
    open: AtomicU64,
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub struct OpenConnection<'a>(&'a AtomicU64);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    pub fn open(&self) -> OpenConnection<'_> {
        self.opened.inc();
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(&self.open)
    }
    pub fn open_now(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// Every counter of the node (one per node, shared through the router).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Stanzas read from clients.
    pub stanzas_in: ByKind,
    /// Stanzas written to clients.
    pub stanzas_out: ByKind,
    routed: [Counter; 4],
    auth: [Counter; 4],
    connections: [Connections; 2],
}

impl Metrics {
    pub fn routed(&self, outcome: RouteOutcome) -> &Counter {
        &self.routed[outcome as usize]
    }
    pub fn auth(&self, outcome: AuthOutcome) -> &Counter {
        &self.auth[outcome as usize]
    }
    pub fn connections(&self, transport: Transport) -> &Connections {
        &self.connections[transport as usize]
    }
}

/// A Prometheus text exposition (format 0.0.4) being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// The content type of [`Exposition`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// A histogram family from a snapshot.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        h: &starling_raft::latency::HistogramSnapshot,
    ) -> &mut Self {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (le, n) in &h.buckets {
            let le = number(*le);
            self.sample(&bucket, &[("le", &le)], *n as f64);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum_seconds);
        self.sample(&format!("{name}_count"), &[], h.count as f64)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value as Prometheus writes it.
fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines() {
        let mut e = Exposition::default();
        e.family("x_total", Kind::Counter, "Things.\nMore.").sample(
            "x_total",
            &[("a", "q\"\\\n")],
            3.0,
        );
        let h = starling_raft::latency::LatencyHistogram::default();
        h.observe(std::time::Duration::from_millis(2));
        e.histogram("lat_seconds", "Latency.", &h.snapshot());
        let out = e.finish();
        assert!(out.starts_with("# HELP x_total Things.\\nMore.\n# TYPE x_total counter\n"));
        assert!(out.contains("x_total{a=\"q\\\"\\\\\\n\"} 3\n"), "{out}");
        assert!(
            out.contains("lat_seconds_bucket{le=\"0.001\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("lat_seconds_bucket{le=\"0.0025\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 1\n"), "{out}");
        assert!(out.contains("lat_seconds_count 1\n"), "{out}");
    }

    #[test]
    fn counters_by_label() {
        let m = Metrics::default();
        m.stanzas_in.inc(StanzaKind::of("iq"));
        m.routed(RouteOutcome::Mesh).inc();
        {
            let _c = m.connections(Transport::WebSocket).open();
            assert_eq!(m.connections(Transport::WebSocket).open_now(), 1);
        }
        assert_eq!(m.connections(Transport::WebSocket).open_now(), 0);
        assert_eq!(m.connections(Transport::WebSocket).opened.get(), 1);
        assert_eq!(m.stanzas_in.get(StanzaKind::Iq), 1);
        assert_eq!(m.routed(RouteOutcome::Mesh).get(), 1);
        assert_eq!(m.routed(RouteOutcome::Local).get(), 0);
    }
}
