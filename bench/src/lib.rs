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
//! then delivered at login), `idle` (resident memory per idle session).
#![forbid(unsafe_code)]

pub mod client;
pub mod raw;
pub mod report;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// An XMPP server.
    Xmpp,
    /// The raw relay (`starling-bench relay`).
    Raw,
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

enum Tx {
    Xmpp(tokio::io::WriteHalf<client::BoxIo>),
    Raw(tokio::net::tcp::OwnedWriteHalf),
}

enum Rx {
    Xmpp(Box<client::Reader>),
    Raw(tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>),
}

async fn open_pair_end(args: &BenchArgs, i: usize, addr: SocketAddr) -> anyhow::Result<(Tx, Rx)> {
    match args.target {
        Target::Xmpp => {
            let c = client::connect(addr, &user(args, i), &args.password, &opts(args)).await?;
            let (_, r, w) = c.split();
            Ok((Tx::Xmpp(w), Rx::Xmpp(Box::new(r))))
        }
        Target::Raw => {
            let c = raw::RawClient::connect(addr, &user(args, i)).await?;
            Ok((Tx::Raw(c.writer), Rx::Raw(c.reader)))
        }
    }
}

/// Parses `pair:k:t_ns` out of a payload.
fn parse_payload(s: &str) -> Option<(usize, u64, u64)> {
    let mut it = s.split(':');
    let pair = it.next()?.parse().ok()?;
    let k = it.next()?.parse().ok()?;
    let t = it.next()?.split('x').next()?.parse().ok()?;
    Some((pair, k, t))
}

struct Shared {
    base: Instant,
    measure_from_ns: u64,
    sent: AtomicU64,
    received: AtomicU64,
}

/// Runs message traffic at `rate` for warmup + duration seconds.
async fn traffic(args: &BenchArgs, rate: u64, cross: bool) -> anyhow::Result<RunResult> {
    let pairs = args.pairs.max(1);
    if cross && args.addrs.len() < 2 && args.target == Target::Xmpp {
        bail!("cross-node needs at least two --addr");
    }
    // Connect recipients first, then senders.
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for p in 0..pairs {
        let s_addr = args.addrs[p % args.addrs.len()];
        let r_addr = if cross {
            args.addrs[(p + 1) % args.addrs.len()]
        } else {
            s_addr
        };
        let (rtx, rrx) = open_pair_end(args, pairs + p, r_addr).await?;
        receivers.push((rtx, rrx));
        let (stx, srx) = open_pair_end(args, p, s_addr).await?;
        senders.push((stx, srx));
    }
    // Let initial presence settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = Duration::from_secs(args.warmup + args.duration);
    let shared = Arc::new(Shared {
        base: Instant::now() + Duration::from_millis(100),
        measure_from_ns: args.warmup * 1_000_000_000,
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let per_pair = (rate as f64 / pairs as f64).max(0.001);
    let interval = Duration::from_secs_f64(1.0 / per_pair);
    let count_per_pair = (total.as_secs_f64() * per_pair).round() as u64;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut recv_tasks = Vec::new();
    for (rtx, rrx) in receivers.into_iter() {
        let shared = shared.clone();
        recv_tasks.push(tokio::spawn(receive(rrx, rtx, shared, stop_rx.clone())));
    }
    // One thread keeps the schedule with std's sleep (tens of µs of
    // precision, where tokio's timer has 1 ms) and wakes each pair's sender
    // when its next message is due.
    let mut sender_readers = Vec::new();
    let mut ticks = Vec::new();
    let mut send_tasks = Vec::new();
    for (p, (tx, rx)) in senders.into_iter().enumerate() {
        // Keep the senders' read sides open (and drained) so the server
        // never sees a half-closed client.
        sender_readers.push(tokio::spawn(drain(rx)));
        let shared = shared.clone();
        let to = match args.target {
            Target::Xmpp => format!("{}@{}", user(args, pairs + p), args.domain),
            Target::Raw => user(args, pairs + p),
        };
        let (tick_tx, tick_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        ticks.push(tick_tx);
        let body = args.body_bytes;
        send_tasks.push(tokio::spawn(send(p, tx, to, shared, tick_rx, body)));
    }
    {
        let base = shared.base;
        let step = interval.div_f64(pairs as f64);
        let total_msgs = count_per_pair * pairs as u64;
        std::thread::spawn(move || {
            for j in 0..total_msgs {
                let due = base + step.mul_f64(j as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let p = (j % pairs as u64) as usize;
                let t_ns = (due - base).as_nanos() as u64;
                if ticks[p].send(t_ns).is_err() {
                    return;
                }
            }
        });
    }
    // Progress line.
    let progress = {
        let shared = shared.clone();
        let label = args.label.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let r = shared.received.load(Ordering::Relaxed);
                eprint!(
                    "\r{label}: {rate} msg/s offered, {:>8} sent, {:>8} received, {:>6} msg/s   ",
                    shared.sent.load(Ordering::Relaxed),
                    r,
                    r - last
                );
                last = r;
            }
        })
    };
    let mut errors = 0;
    for t in send_tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            errors += 1;
        }
    }
    // Grace period for stragglers.
    let grace = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(grace);
    let mut hist = histogram();
    let mut received_measured = 0u64;
    let mut pending = recv_tasks;
    loop {
        let all_in = shared.received.load(Ordering::Relaxed) >= shared.sent.load(Ordering::Relaxed);
        if all_in || grace.is_elapsed() {
            break;
        }
        tokio::select! {
            _ = &mut grace => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let _ = stop_tx.send(true);
    for t in pending.drain(..) {
        match t.await {
            Ok(Ok((h, n))) => {
                hist.add(&h).ok();
                received_measured += n;
            }
            _ => errors += 1,
        }
    }
    for t in sender_readers {
        t.abort();
    }
    progress.abort();
    eprintln!();
    let sent = shared.sent.load(Ordering::Relaxed);
    let received = shared.received.load(Ordering::Relaxed);
    let mut r = RunResult {
        label: args.label.clone(),
        scenario: if cross { "cross-node" } else { "same-node" }.into(),
        offered_rate: rate,
        duration_s: args.duration as f64,
        sent,
        received,
        lost: sent.saturating_sub(received),
        errors,
        throughput: received_measured as f64 / args.duration as f64,
        ..Default::default()
    };
    fill_percentiles(&mut r, &hist);
    Ok(r)
}

async fn send(
    pair: usize,
    mut tx: Tx,
    to: String,
    shared: Arc<Shared>,
    mut ticks: tokio::sync::mpsc::UnboundedReceiver<u64>,
    body_bytes: usize,
) -> anyhow::Result<()> {
    let mut k = 0u64;
    let mut buf = Vec::with_capacity(256 + body_bytes);
    while let Some(t_ns) = ticks.recv().await {
        let mut payload = format!("{pair}:{k}:{t_ns}");
        k += 1;
        if payload.len() < body_bytes {
            payload.push(':');
            while payload.len() < body_bytes {
                payload.push('x');
            }
        }
        buf.clear();
        match &mut tx {
            Tx::Xmpp(w) => {
                buf.extend_from_slice(
                    format!(
                        "<message to='{to}' type='chat' id='{k}'><body>{payload}</body></message>"
                    )
                    .as_bytes(),
                );
                w.write_all(&buf).await?;
                w.flush().await?;
            }
            Tx::Raw(w) => {
                w.write_all(&raw::RawClient::frame(&to, payload.as_bytes()))
                    .await?;
            }
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Reads and discards everything (a sender's inbound side).
async fn drain(rx: Rx) {
    match rx {
        Rx::Xmpp(mut r) => while let Ok(Some(_)) = r.next().await {},
        Rx::Raw(mut r) => while let Ok(Some(_)) = raw::RawClient::next(&mut r).await {},
    }
}

/// A recipient: records the latency of every message until told to stop.
async fn receive(
    rx: Rx,
    mut tx: Tx,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut h = histogram();
    let mut measured = 0u64;
    let mut record = |payload: &str, h: &mut Histogram<u64>| {
        if let Some((_, _, t_ns)) = parse_payload(payload) {
            let now = shared.base.elapsed().as_nanos() as u64;
            shared.received.fetch_add(1, Ordering::Relaxed);
            if t_ns >= shared.measure_from_ns {
                let _ = h.record((now.saturating_sub(t_ns) / 1000).max(1));
                measured += 1;
            }
        }
    };
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    match rx {
        Rx::Xmpp(mut r) => loop {
            let next = tokio::select! {
                n = r.next() => n,
                _ = &mut stopped => break,
            };
            let Some(el) = next? else { break };
            if el.name() == "message" {
                if let Some(b) = el.get_child("body", starling::xmpp::ns::CLIENT) {
                    record(&b.text(), &mut h);
                }
            } else if el.name() == "iq" && el.attr("type") == Some("get") {
                // Answer server pings so no server drops an idle recipient.
                if let Tx::Xmpp(w) = &mut tx {
                    let id = starling::xmpp::element::escape(el.attr("id").unwrap_or_default());
                    let _ = w
                        .write_all(format!("<iq type='result' id='{id}'/>").as_bytes())
                        .await;
                }
            }
        },
        Rx::Raw(mut r) => loop {
            let next = tokio::select! {
                n = raw::RawClient::next(&mut r) => n,
                _ = &mut stopped => break,
            };
            let Some(frame) = next? else { break };
            record(&String::from_utf8_lossy(&frame), &mut h);
        },
    }
    Ok((h, measured))
}

/// Logs `args.users` users in, `concurrency` at a time, and measures each
/// login (TCP connect to available presence sent).
async fn login_storm(args: &BenchArgs) -> anyhow::Result<RunResult> {
    let n = args.users;
    let started = Instant::now();
    let outcomes = connect_users(args, n, opts(args)).await?;
    let mut hist = histogram();
    let mut errors = 0;
    let mut clients = Vec::new();
    for (took, c) in outcomes {
        match c {
            Ok(c) => {
                let _ = hist.record((took.as_micros() as u64).max(1));
                clients.push(c);
            }
            Err(e) => {
                if errors == 0 {
                    eprintln!("login failed: {e:#}");
                }
                errors += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = clients.len() as u64;
    close_all(clients).await;
    let mut r = RunResult {
        label: args.label.clone(),
        scenario: "login".into(),
        duration_s: secs,
        sent: n as u64,
        received: ok,
        errors,
        rate_result: ok as f64 / secs,
        note: format!("{:?}, {} concurrent", args.mech, args.concurrency),
        ..Default::default()
    };
    fill_percentiles(&mut r, &hist);
    Ok(r)
}

/// `per_user` messages to each of `users` offline recipients, then the
/// recipients log in: time until every queued message arrived.
async fn offline_drain(args: &BenchArgs) -> anyhow::Result<RunResult> {
    let recipients = args.users;
    let per_user = args.per_user;
    let sender_idx = recipients; // user N sends, users 0..N receive
    let addr0 = args.addrs[0];
    let sender =
        client::connect(addr0, &user(args, sender_idx), &args.password, &opts(args)).await?;
    let (_, mut sr, mut sw) = sender.split();
    let base = Instant::now();
    let mut batch = String::new();
    for k in 0..per_user {
        for u in 0..recipients {
            let t_ns = base.elapsed().as_nanos();
            batch.push_str(&format!(
                "<message to='{}@{}' type='chat' id='o{k}'><body>{u}:{k}:{t_ns}</body></message>",
                user(args, u),
                args.domain
            ));
            if batch.len() > 32 * 1024 {
                sw.write_all(batch.as_bytes()).await?;
                batch.clear();
            }
        }
    }
    // A ping round trip: the server handled everything before it.
    batch.push_str("<iq type='get' id='drain-ping'><ping xmlns='urn:xmpp:ping'/></iq>");
    sw.write_all(batch.as_bytes()).await?;
    sw.flush().await?;
    loop {
        match sr.next().await? {
            Some(el) if el.attr("id") == Some("drain-ping") => break,
            Some(_) => {}
            None => bail!("the server closed the sender's stream"),
        }
    }
    let queued_in = base.elapsed();
    // Give servers that store asynchronously a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = (recipients * per_user) as u64;
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for u in 0..recipients {
        let args = args.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let addr = args.addrs[u % args.addrs.len()];
            let t = Instant::now();
            let c = client::connect(addr, &user(&args, u), &args.password, &opts(&args)).await?;
            let (_, mut r, _w) = c.split();
            let mut got = 0;
            while got < per_user {
                let el = tokio::time::timeout(Duration::from_secs(30), r.next()).await??;
                let Some(el) = el else { break };
                if el.name() == "message" && el.has_child("body", starling::xmpp::ns::CLIENT) {
                    got += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok((got, t.elapsed()))
        }));
    }
    let mut hist = histogram();
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Ok((_, d)) => {
                let _ = hist.record((d.as_micros() as u64).max(1));
            }
            Err(e) => {
                eprintln!("offline recipient failed: {e:#}");
                errors += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    let mut r = RunResult {
        label: args.label.clone(),
        scenario: "offline".into(),
        duration_s: secs,
        sent: total,
        received: got,
        lost: total.saturating_sub(got),
        errors,
        rate_result: got as f64 / secs,
        note: format!(
            "{recipients} recipients x {per_user} queued (queued in {:.2} s); latency = login to last message",
            queued_in.as_secs_f64()
        ),
        ..Default::default()
    };
    fill_percentiles(&mut r, &hist);
    Ok(r)
}

/// Resident memory of a process, KiB (from /proc/PID/status).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn total_rss(pids: &[u32]) -> anyhow::Result<u64> {
    // A server may be several processes (a cluster; ejabberd's beam + epmd).
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// Logs `users` sessions in and keeps them idle; RSS growth per session.
async fn idle_memory(args: &BenchArgs) -> anyhow::Result<RunResult> {
    if args.server_pids.is_empty() {
        bail!("--scenario idle needs --server-pid (the server's process id)");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = total_rss(&args.server_pids)?;
    let sessions = connect_users(args, args.users, opts(args))
        .await?
        .into_iter()
        .map(|(_, c)| c)
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Let the server settle (allocator, GC) with every session idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = total_rss(&args.server_pids)?;
    let n = sessions.len() as u64;
    let per = (after.saturating_sub(before)) as f64 / n.max(1) as f64;
    close_all(sessions).await;
    Ok(RunResult {
        label: args.label.clone(),
        scenario: "idle".into(),
        sent: n,
        received: n,
        rate_result: per,
        note: format!(
            "RSS {before} KiB -> {after} KiB for {n} sessions ({})",
            if args.tls { "TLS" } else { "plaintext" }
        ),
        ..Default::default()
    })
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
    let needed = match args.scenario {
        Scenario::SameNode | Scenario::CrossNode | Scenario::Sweep => 2 * args.pairs.max(1),
        Scenario::Login | Scenario::Idle => args.users,
        Scenario::Offline => args.users + 1,
    };
    register_users(&args, needed).await?;
    let mut results = Vec::new();
    match args.scenario {
        Scenario::SameNode => results.push(traffic(&args, args.rate, false).await?),
        Scenario::CrossNode => results.push(traffic(&args, args.rate, true).await?),
        Scenario::Sweep => {
            let mut saturation = None;
            for &rate in &args.rates {
                let mut r = traffic(
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
        Scenario::Login => results.push(login_storm(&args).await?),
        Scenario::Offline => results.push(offline_drain(&args).await?),
        Scenario::Idle => results.push(idle_memory(&args).await?),
    }
    if args.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
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

    #[test]
    fn payloads_round_trip() {
        assert_eq!(parse_payload("3:17:123456:xxxx"), Some((3, 17, 123456)));
        assert_eq!(parse_payload("3:17:99"), Some((3, 17, 99)));
        assert_eq!(parse_payload("garbage"), None);
    }
}
