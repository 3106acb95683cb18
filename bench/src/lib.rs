//! `starling-bench run`: an XMPP load generator for any server (Starling,
//! Prosody, ejabberd), and the raw relay baseline.
//!
//! Traffic is open loop, as in wrk2: each sender has a schedule (message k
//! is due at `start + k / rate`), and latency is measured from that intended
//! time to the recipient's receipt, so a server that stalls cannot hide the
//! stall by slowing the senders down (no coordinated omission). Every
//! message carries its pair and sequence number; what does not arrive is
//! counted as lost.
//!
//! Scenarios: `same-node`, `cross-node` (sender and recipient on different
//! addresses), `sweep` (a list of offered rates; the saturation throughput is
//! the highest whose p99 stays under `--p99-bound-ms` with nothing lost),
//! `login` (a login storm), `offline` (messages queued for offline users,
//! then delivered at login), `idle` (resident memory per idle session),
//! `muc` and `muc-sweep` (XEP-0045 group-chat fan-out, see [`muc`]).
#![forbid(unsafe_code)]

pub mod client;
pub mod mobile;
pub mod muc;
pub mod raw;
pub mod report;
mod sessions;
mod traffic;
pub mod ws;

pub use sessions::rss_kib;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use client::{ConnectOpts, Mech};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    SameNode,
    CrossNode,
    Sweep,
    Login,
    Offline,
    Idle,
    /// Group chat: one room, `--occupants` over the addresses, `--rate`
    /// messages/s from `--senders` (see `muc.rs`).
    Muc,
    /// `muc` at each of `--rates` until the last occupant's p99 passes
    /// `--p99-bound-ms` or a copy is lost.
    MucSweep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// An XMPP server.
    Xmpp,
    /// The raw relay (`starling-bench relay`).
    Raw,
}

/// How XMPP clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// RFC 6120 over TCP (`--addr`: the client port).
    Tcp,
    /// RFC 7395 XMPP over WebSocket, plain `ws://` (`--addr`: the HTTP
    /// port; `--ws-path`).
    Ws,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to run.
    #[arg(long, value_enum, default_value = "same-node")]
    pub scenario: Scenario,
    /// Server address(es); clients are spread round robin over them.
    #[arg(long = "addr", required = true)]
    pub addrs: Vec<SocketAddr>,
    #[arg(long, value_enum, default_value = "xmpp")]
    pub target: Target,
    /// XMPP clients over TCP or over WebSocket (then `--addr` is each
    /// node's HTTP listener).
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    /// The WebSocket endpoint's path, for `--transport ws`.
    #[arg(long, default_value = "/xmpp-websocket")]
    pub ws_path: String,
    /// Label of this server in the results (e.g. "starling-1", "prosody").
    #[arg(long, default_value = "server")]
    pub label: String,
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// STARTTLS (done anyway when the server requires it).
    #[arg(long)]
    pub tls: bool,
    #[arg(long, value_enum, default_value = "plain")]
    pub mech: Mech,
    /// Register the users in-band (XEP-0077) first; existing ones are fine.
    #[arg(long)]
    pub register: bool,
    /// User names are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "bench")]
    pub user_prefix: String,
    #[arg(long, default_value = "bench-password")]
    pub password: String,
    /// Sender/recipient pairs for message scenarios.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Offered load, messages per second (all pairs together).
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Offered rates for `sweep`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,20000,40000"
    )]
    pub rates: Vec<u64>,
    /// Seconds of measured traffic per run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Saturation criterion for `sweep`: p99 at most this.
    #[arg(long, default_value_t = 10.0)]
    pub p99_bound_ms: f64,
    /// Logins for `login`, sessions for `idle`, recipients for `offline`.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Concurrent logins.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Messages queued per offline recipient (`offline`).
    #[arg(long, default_value_t = 100)]
    pub per_user: usize,
    /// Server process ids, for `idle` (resident memory from /proc).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Print results as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also append the JSON results to this file.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub muc: muc::MucArgs,
}

/// One measured run.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RunResult {
    pub label: String,
    pub scenario: String,
    pub offered_rate: u64,
    pub duration_s: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub errors: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// For `login`: logins per second; for `offline`: messages per second
    /// delivered at login; for `idle`: KiB of RSS per session.
    pub rate_result: f64,
    pub note: String,
    /// For `muc`: the fan-out figures (first/last occupant, copies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<muc::FanOut>,
}

/// Microseconds, up to 100 s, 3 significant digits. These constant bounds
/// are valid, so construction cannot fail (checked by a test).
fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant histogram bounds are valid")
}

fn fill_percentiles(r: &mut RunResult, h: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    if h.is_empty() {
        return;
    }
    r.p50_ms = ms(h.value_at_quantile(0.50));
    r.p90_ms = ms(h.value_at_quantile(0.90));
    r.p99_ms = ms(h.value_at_quantile(0.99));
    r.p999_ms = ms(h.value_at_quantile(0.999));
    r.max_ms = ms(h.max());
}

fn opts(args: &BenchArgs) -> ConnectOpts {
    ConnectOpts {
        domain: args.domain.clone(),
        tls: args.tls,
        mech: args.mech,
        register: false,
        timeout: Duration::from_secs(30),
        ws_path: (args.transport == Transport::Ws).then(|| args.ws_path.clone()),
    }
}

fn user(args: &BenchArgs, i: usize) -> String {
    format!("{}{}", args.user_prefix, i)
}

/// Logs users `0..n` in (round robin over the addresses), `concurrency` at
/// a time: that many worker tasks pull the next index. Each outcome comes
/// with how long its login took.
async fn connect_users(
    args: &BenchArgs,
    n: usize,
    o: ConnectOpts,
) -> anyhow::Result<Vec<(Duration, anyhow::Result<client::Client>)>> {
    let o = Arc::new(o);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (o, next, args) = (o.clone(), next.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return out;
                }
                let addr = args.addrs[i % args.addrs.len()];
                let t = Instant::now();
                let c = client::connect(addr, &user(&args, i), &args.password, &o).await;
                out.push((t.elapsed(), c));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await?);
    }
    Ok(all)
}

/// Closes the streams of `clients`.
async fn close_all(clients: Vec<client::Client>) {
    for c in clients {
        let (_, _, mut w) = c.split();
        let _ = w.write_all(b"</stream:stream>").await;
    }
}

/// Registers users `0..n` in-band, `concurrency` at a time.
async fn register_users(args: &BenchArgs, n: usize) -> anyhow::Result<()> {
    if !args.register || args.target == Target::Raw {
        return Ok(());
    }
    let started = Instant::now();
    let mut o = opts(args);
    o.register = true;
    let clients = connect_users(args, n, o)
        .await?
        .into_iter()
        .map(|(_, c)| c)
        .collect::<anyhow::Result<Vec<_>>>()?;
    close_all(clients).await;
    eprintln!(
        "registered {n} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_table(results: &[RunResult]) {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                r.scenario.clone(),
                r.offered_rate.to_string(),
                format!("{:.0}", r.throughput),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p90_ms),
                format!("{:.2}", r.p99_ms),
                format!("{:.2}", r.p999_ms),
                format!("{:.2}", r.max_ms),
                r.lost.to_string(),
                r.errors.to_string(),
                if r.rate_result > 0.0 {
                    format!("{:.1}", r.rate_result)
                } else {
                    String::new()
                },
                r.note.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        starling::ctl::table(
            &[
                "SERVER",
                "SCENARIO",
                "OFFERED/s",
                "DELIVERED/s",
                "P50ms",
                "P90ms",
                "P99ms",
                "P99.9ms",
                "MAXms",
                "LOST",
                "ERR",
                "RATE",
                "NOTE"
            ],
            &rows
        )
    );
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.target == Target::Raw
        && !matches!(
            args.scenario,
            Scenario::SameNode | Scenario::CrossNode | Scenario::Sweep
        )
    {
        bail!("the raw relay only carries message traffic (same-node, cross-node, sweep)");
    }
    if args.transport == Transport::Ws && (args.target == Target::Raw || args.tls) {
        bail!("--transport ws is plain ws:// to an XMPP server (no --tls, no raw relay)");
    }
    let needed = match args.scenario {
        Scenario::SameNode | Scenario::CrossNode | Scenario::Sweep => 2 * args.pairs.max(1),
        Scenario::Login | Scenario::Idle => args.users,
        Scenario::Offline => args.users + 1,
        Scenario::Muc | Scenario::MucSweep => args.muc.occupants,
    };
    register_users(&args, needed).await?;
    let mut results = Vec::new();
    match args.scenario {
        Scenario::SameNode => results.push(traffic::traffic(&args, args.rate, false).await?),
        Scenario::CrossNode => results.push(traffic::traffic(&args, args.rate, true).await?),
        Scenario::Sweep => {
            let mut saturation = None;
            for &rate in &args.rates {
                let mut r = traffic::traffic(
                    &args,
                    rate,
                    args.addrs.len() > 1 && args.target == Target::Xmpp,
                )
                .await?;
                r.note = "sweep".into();
                let ok = r.lost == 0
                    && r.errors == 0
                    && r.p99_ms <= args.p99_bound_ms
                    && r.throughput >= 0.95 * rate as f64;
                eprintln!(
                    "{}: {rate}/s offered -> {:.0}/s delivered, p99 {:.2} ms, lost {}{}",
                    args.label,
                    r.throughput,
                    r.p99_ms,
                    r.lost,
                    if ok { "" } else { "  (past saturation)" }
                );
                results.push(r);
                if ok {
                    saturation = Some(rate);
                } else {
                    break;
                }
            }
            let mut s = RunResult {
                label: args.label.clone(),
                scenario: "saturation".into(),
                rate_result: saturation.unwrap_or(0) as f64,
                note: format!(
                    "highest offered rate with p99 <= {} ms, nothing lost",
                    args.p99_bound_ms
                ),
                ..Default::default()
            };
            s.offered_rate = saturation.unwrap_or(0);
            results.push(s);
        }
        Scenario::Login => results.push(sessions::login_storm(&args).await?),
        Scenario::Offline => results.push(sessions::offline_drain(&args).await?),
        Scenario::Idle => results.push(sessions::idle_memory(&args).await?),
        Scenario::Muc | Scenario::MucSweep => results.extend(muc::run(&args).await?),
    }
    if args.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else if matches!(args.scenario, Scenario::Muc | Scenario::MucSweep) {
        muc::print_table(&results);
    } else {
        print_table(&results);
    }
    if let Some(path) = &args.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        for r in &results {
            writeln!(f, "{}", serde_json::to_string(r)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bounds_are_valid() {
        let mut h = histogram();
        assert_eq!(h.high(), 100_000_000);
        h.record(1234).expect("in range");
        assert_eq!(h.len(), 1);
    }
}
