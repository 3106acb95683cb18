//! The `muc` and `muc-sweep` scenarios: XEP-0045 group-chat fan-out
//! against any server (Starling, Prosody, ejabberd).
//!
//! `--occupants N` users log in round robin over the `--addr`s (3 nodes:
//! 34/33/33). Occupant 0 creates a fresh room on the MUC service (XEP-0045
//! §10.1.2: it enters, gets status 201, and unlocks the room as an instant
//! room with an empty submitted form, §10.1.2 "Creating an Instant Room"),
//! then the others enter at once, and each waits for its own presence with
//! status 110 (§7.2.3): only then is the room full and traffic starts.
//! One room and one set of sessions serve every rate of a sweep.
//!
//! Traffic is open loop, as in `traffic.rs`: message `j` is due at
//! `start + j / rate`, sent by sender `j % K` (the first `--senders K`
//! occupants, so spread over the nodes too), and its body carries the run,
//! `j` and that intended time. Every occupant records what it gets, so for
//! each message the bench knows the first and the last arrival among the
//! *other* N-1 occupants (the sender's own echo, XEP-0045 §7.4's
//! reflection, is timed apart), and how many of the N copies (echo
//! included) arrived. A message whose N copies are not all in when the
//! drain period (`--drain-secs`) after the last send ends has lost copies:
//! they are counted and reported, never dropped from the figures. Latency
//! of the last occupant is over messages that reached everyone; the lost
//! ones are in `copies_lost` instead.
//!
//! With `--server-pid`, the servers' CPU time over each run (from
//! /proc/PID/stat) is reported beside the generator's own, so a figure
//! says which side ran out of CPU.
//!
//! Here: the options, the figures, the room's setup and each rate's run
//! and tally; [`occupant`] is one occupant's reader and writer, [`table`]
//! the tables.
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use starling::xmpp::ns;

use crate::{client, histogram, opts, user, BenchArgs, RunResult, Scenario};

mod occupant;
mod table;

use occupant::{read_loop, write_loop, Ctl, Out, Run};
pub(crate) use table::print_table;
pub use table::table;

/// Options of the `muc` and `muc-sweep` scenarios.
#[derive(Debug, Clone, Args)]
pub struct MucArgs {
    /// Occupants of the room (`muc`, `muc-sweep`), logged in round robin
    /// over the addresses.
    #[arg(long, default_value_t = 100)]
    pub occupants: usize,
    /// Occupants that send groupchat messages: the first K (so spread over
    /// the addresses as well). The offered `--rate` is their sum.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// The MUC service. Default: conference.<domain>.
    #[arg(long)]
    pub muc_service: Option<String>,
    /// Seconds to wait after the last send for every copy; what is still
    /// missing then is lost.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
}

/// The fan-out figures of one `muc` run (a `RunResult`'s `fanout`). Its
/// `p50_ms`..`max_ms` are the last occupant's (= `last_*` here).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FanOut {
    pub occupants: u64,
    pub senders: u64,
    /// Addresses (nodes) the occupants were spread over.
    pub nodes: u64,
    /// Messages due in the measured window (after the warm-up).
    pub messages: u64,
    /// Of those, the ones every occupant received (echo included).
    pub complete: u64,
    /// Copies expected of every message sent, warm-up included
    /// (messages sent x occupants), and how many arrived.
    pub copies_expected: u64,
    pub copies_received: u64,
    /// Copies that had not arrived at the end of the drain period.
    pub copies_lost: u64,
    /// Copies an occupant received twice (not counted as received).
    pub duplicates: u64,
    /// Copies received per second in the measured window (echo included).
    pub deliveries_per_s: f64,
    /// Messages per second of the measured window that reached everyone.
    pub messages_per_s: f64,
    /// From the intended send time to the first other occupant's receipt.
    pub first_p50_ms: f64,
    pub first_p90_ms: f64,
    pub first_p99_ms: f64,
    pub first_max_ms: f64,
    /// ... to the last of the other N-1 occupants (complete messages).
    pub last_p50_ms: f64,
    pub last_p90_ms: f64,
    pub last_p99_ms: f64,
    pub last_max_ms: f64,
    /// ... to the sender's own echo (§7.4 reflection).
    pub echo_p50_ms: f64,
    pub echo_p99_ms: f64,
    /// CPU seconds of the server processes (`--server-pid`) and of the
    /// load generator over the run, and the run's wall time: CPU/wall is
    /// the cores each used.
    pub server_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub wall_s: f64,
    /// Seconds from the first login to the last occupant's status 110.
    pub join_s: f64,
    /// The first error stanza an occupant received, if any.
    pub first_error: String,
}

/// The room and its occupants' tasks.
struct Room {
    jid: String,
    outs: Vec<UnboundedSender<Out>>,
    ctl: UnboundedReceiver<Ctl>,
    current: Arc<RwLock<Option<Arc<Run>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    join_s: f64,
}

/// Waits for a control event, at most `secs`.
async fn next_ctl(rx: &mut UnboundedReceiver<Ctl>, secs: u64, what: &str) -> anyhow::Result<Ctl> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .map_err(|_| anyhow!("timed out waiting for {what}"))?
        .ok_or_else(|| anyhow!("every occupant's stream ended while waiting for {what}"))
}

/// Logs the occupants in, creates the room and fills it.
async fn setup(args: &BenchArgs) -> anyhow::Result<Room> {
    let n = args.muc.occupants.max(1);
    let service = args
        .muc
        .muc_service
        .clone()
        .unwrap_or_else(|| format!("conference.{}", args.domain));
    let jid = format!("bench{:08x}@{service}", rand::random::<u32>());
    let started = Instant::now();
    // Logins, `concurrency` at a time, kept in occupant order.
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let o = Arc::new(opts(args));
    let mut logins = Vec::with_capacity(n);
    for i in 0..n {
        let (sem, o) = (sem.clone(), o.clone());
        let addr = args.addrs[i % args.addrs.len()];
        let (name, pw) = (user(args, i), args.password.clone());
        logins.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            client::connect(addr, &name, &pw, &o).await
        }));
    }
    let (ctl_tx, ctl) = unbounded_channel();
    let current = Arc::new(RwLock::new(None));
    let mut outs = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(2 * n);
    for (i, l) in logins.into_iter().enumerate() {
        let c = l.await?.with_context(|| format!("login of occupant {i}"))?;
        let (_, r, w) = c.split();
        let (tx, rx) = unbounded_channel();
        let self_jid = format!("{jid}/{}", user(args, i));
        tasks.push(tokio::spawn(write_loop(
            w,
            rx,
            jid.clone(),
            args.body_bytes,
        )));
        tasks.push(tokio::spawn(read_loop(
            i,
            r,
            tx.clone(),
            ctl_tx.clone(),
            self_jid,
            current.clone(),
        )));
        outs.push(tx);
    }
    drop(ctl_tx);
    let mut room = Room {
        jid,
        outs,
        ctl,
        current,
        tasks,
        join_s: 0.0,
    };
    let enter = |i: usize| {
        Out::Raw(format!(
            "<presence to='{}/{}'><x xmlns='{}'/></presence>",
            room.jid,
            user(args, i),
            ns::MUC
        ))
    };
    // §10.1.2: the owner enters (the room is made, locked) and accepts the
    // default configuration (an instant room).
    let _ = room.outs[0].send(enter(0));
    match next_ctl(&mut room.ctl, 30, "the owner's own presence").await? {
        Ctl::Joined(0) => {}
        Ctl::JoinFailed(_, e) => bail!("the owner could not create {}: {e}", room.jid),
        _ => bail!("unexpected answer while creating {}", room.jid),
    }
    let _ = room.outs[0].send(Out::Raw(format!(
        "<iq type='set' id='mb-cfg' to='{}'><query xmlns='{}'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
        room.jid,
        ns::MUC_OWNER
    )));
    loop {
        match next_ctl(&mut room.ctl, 30, "the instant room's configuration").await? {
            Ctl::Iq { id, ok, el } if id == "mb-cfg" => {
                if !ok {
                    bail!("configuring {} failed: {el}", room.jid);
                }
                break;
            }
            _ => {}
        }
    }
    for i in 1..n {
        let _ = room.outs[i].send(enter(i));
    }
    let mut joined = 1;
    while joined < n {
        match next_ctl(&mut room.ctl, 60, "the occupants' own presence (110)").await? {
            Ctl::Joined(_) => joined += 1,
            Ctl::JoinFailed(i, e) => bail!("occupant {i} could not enter {}: {e}", room.jid),
            Ctl::Iq { .. } => {}
        }
    }
    room.join_s = started.elapsed().as_secs_f64();
    eprintln!(
        "{}: {n} occupants in {} over {} address(es) after {:.1} s",
        args.label,
        room.jid,
        args.addrs.len(),
        room.join_s
    );
    // Let the last presence broadcasts settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(room)
}

/// utime + stime of `pid` (`None`: this process), in seconds.
fn cpu_s(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15 (proc(5)); ticks of 1/100 s.
    let rest: Vec<&str> = s
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let t = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) + t(12)) as f64 / 100.0
}

fn servers_cpu_s(args: &BenchArgs) -> f64 {
    args.server_pids.iter().map(|p| cpu_s(Some(*p))).sum()
}

/// One offered rate through the filled room.
async fn run_rate(args: &BenchArgs, room: &Room, id: u64, rate: u64) -> anyhow::Result<RunResult> {
    let secs = (args.warmup + args.duration) as f64;
    let total = (secs * rate as f64).round() as usize;
    let run = Arc::new(Run::new(id, rate, total, args));
    *room.current.write().unwrap_or_else(|p| p.into_inner()) = Some(run.clone());
    let (cpu0, bench0, wall0) = (servers_cpu_s(args), cpu_s(None), Instant::now());
    // One thread keeps the schedule with std's sleep (see traffic.rs).
    let scheduler = {
        let (run, outs) = (run.clone(), room.outs.clone());
        std::thread::spawn(move || {
            for j in 0..total {
                let due = run.base + Duration::from_nanos(run.due_ns(j));
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let _ = outs[j % run.senders].send(Out::Msg {
                    run: run.clone(),
                    j,
                });
            }
        })
    };
    let progress = {
        let (run, label) = (run.clone(), args.label.clone());
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let r = run.received.load(Ordering::Relaxed);
                eprint!(
                    "\r{label}: {rate} msg/s offered, {:>8} sent, {:>9} copies received, {:>7} copies/s   ",
                    run.sent_n.load(Ordering::Relaxed),
                    r,
                    r - last
                );
                last = r;
            }
        })
    };
    while !scheduler.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = scheduler.join();
    // The drain: every copy of every message sent, or the time is up.
    let n = run.occupants as u64;
    let drain_end = Instant::now() + Duration::from_secs(args.muc.drain_secs);
    while Instant::now() < drain_end {
        let sent = run.sent_n.load(Ordering::Relaxed);
        if sent == total as u64 && run.received.load(Ordering::Relaxed) >= sent * n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.abort();
    eprintln!();
    let wall = wall0.elapsed().as_secs_f64();
    let fan = tally(args, &run, total);
    let mut f = fan.0;
    f.server_cpu_s = servers_cpu_s(args) - cpu0;
    f.bench_cpu_s = cpu_s(None) - bench0;
    f.wall_s = wall;
    f.join_s = room.join_s;
    let mut r = fan.1;
    r.label = args.label.clone();
    r.offered_rate = rate;
    r.fanout = Some(f);
    Ok(r)
}

/// The figures of a finished run.
fn tally(args: &BenchArgs, run: &Run, total: usize) -> (FanOut, RunResult) {
    let n = run.occupants as u64;
    let (mut first, mut last, mut echo) = (histogram(), histogram(), histogram());
    let mut f = FanOut {
        occupants: n,
        senders: run.senders as u64,
        nodes: args.addrs.len() as u64,
        ..Default::default()
    };
    let mut measured_copies = 0u64;
    let (mut sent, mut unsent) = (0u64, 0u64);
    let us = |t: u64, d: u64| (t.saturating_sub(d) / 1000).max(1);
    for j in 0..total {
        if !run.sent[j].load(Ordering::Relaxed) {
            unsent += 1;
            continue;
        }
        sent += 1;
        let got = u64::from(run.count[j].load(Ordering::Relaxed));
        f.copies_received += got;
        f.copies_lost += n.saturating_sub(got);
        let due = run.due_ns(j);
        if due < run.measure_from_ns {
            continue;
        }
        f.messages += 1;
        measured_copies += got;
        if got < n {
            continue;
        }
        f.complete += 1;
        if n > 1 {
            let _ = first.record(us(run.first[j].load(Ordering::Relaxed), due));
            let _ = last.record(us(run.last[j].load(Ordering::Relaxed), due));
        }
        let _ = echo.record(us(run.echo[j].load(Ordering::Relaxed), due));
    }
    f.copies_expected = sent * n;
    f.duplicates = run.duplicates.load(Ordering::Relaxed);
    let d = args.duration.max(1) as f64;
    f.deliveries_per_s = measured_copies as f64 / d;
    f.messages_per_s = f.complete as f64 / d;
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(p) as f64 / 1000.0
        }
    };
    let mx = |h: &Histogram<u64>| {
        if h.is_empty() {
            0.0
        } else {
            h.max() as f64 / 1000.0
        }
    };
    (
        f.first_p50_ms,
        f.first_p90_ms,
        f.first_p99_ms,
        f.first_max_ms,
    ) = (q(&first, 0.5), q(&first, 0.9), q(&first, 0.99), mx(&first));
    (f.last_p50_ms, f.last_p90_ms, f.last_p99_ms, f.last_max_ms) =
        (q(&last, 0.5), q(&last, 0.9), q(&last, 0.99), mx(&last));
    (f.echo_p50_ms, f.echo_p99_ms) = (q(&echo, 0.5), q(&echo, 0.99));
    f.first_error = run
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default();
    let mut r = RunResult {
        scenario: "muc".into(),
        duration_s: args.duration as f64,
        sent,
        received: f.copies_received,
        lost: f.copies_lost,
        errors: run.errors.load(Ordering::Relaxed) + unsent,
        throughput: f.deliveries_per_s,
        rate_result: f.messages_per_s,
        ..Default::default()
    };
    crate::fill_percentiles(&mut r, &last);
    if unsent > 0 {
        r.note = format!("{unsent} of {total} messages never written (generator)");
    }
    (f, r)
}

/// Saturation's criterion: nothing lost or refused, every message to
/// every occupant within the bound, and the offered rate carried.
fn carried(r: &RunResult, f: &FanOut, rate: u64, bound_ms: f64) -> bool {
    r.errors == 0
        && f.copies_lost == 0
        && f.duplicates == 0
        && f.complete == f.messages
        && f.last_p99_ms <= bound_ms
        && f.messages_per_s >= 0.95 * rate as f64
}

/// Runs `muc` (one rate) or `muc-sweep` (the rates until one is past
/// saturation, then a `muc-saturation` row).
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<Vec<RunResult>> {
    if args.muc.occupants < 2 {
        bail!("--occupants must be at least 2");
    }
    let room = setup(args).await?;
    let rates = if args.scenario == Scenario::MucSweep {
        args.rates.clone()
    } else {
        vec![args.rate]
    };
    let mut results = Vec::new();
    let mut saturation = None;
    for (i, &rate) in rates.iter().enumerate() {
        let mut r = run_rate(args, &room, i as u64 + 1, rate).await?;
        let f = r.fanout.clone().unwrap_or_default();
        let ok = carried(&r, &f, rate, args.p99_bound_ms);
        eprintln!(
            "{}: {rate} msg/s offered -> {:.0} msg/s to all {} ({:.0} copies/s), first p99 {:.2} ms, last p99 {:.2} ms, {} copies lost, {} errors{}",
            args.label,
            f.messages_per_s,
            f.occupants,
            f.deliveries_per_s,
            f.first_p99_ms,
            f.last_p99_ms,
            f.copies_lost,
            r.errors,
            if args.scenario == Scenario::MucSweep && !ok { "  (past saturation)" } else { "" }
        );
        if args.scenario == Scenario::MucSweep {
            r.note = if r.note.is_empty() {
                "sweep".into()
            } else {
                format!("sweep; {}", r.note)
            };
        }
        results.push(r);
        if args.scenario == Scenario::MucSweep {
            if ok {
                saturation = Some(rate);
            } else {
                break;
            }
        }
    }
    if args.scenario == Scenario::MucSweep {
        let sat = saturation.unwrap_or(0);
        let at = results
            .iter()
            .find(|r| r.offered_rate == sat)
            .and_then(|r| r.fanout.clone());
        results.push(RunResult {
            label: args.label.clone(),
            scenario: "muc-saturation".into(),
            offered_rate: sat,
            rate_result: sat as f64,
            throughput: at.as_ref().map_or(0.0, |f| f.deliveries_per_s),
            note: format!(
                "highest offered rate with the last occupant's p99 <= {} ms, nothing lost",
                args.p99_bound_ms
            ),
            fanout: at,
            ..Default::default()
        });
    }
    // Ending the streams empties the room (a temporary one goes with its
    // last occupant). The servers close their side in turn; what is still
    // open after 10 s is dropped.
    let Room { outs, tasks, .. } = room;
    for o in &outs {
        let _ = o.send(Out::Close);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for t in tasks {
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            break;
        }
    }
    Ok(results)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let mut argv = vec!["bench", "--addr", "127.0.0.1:1", "--addr", "127.0.0.1:2"];
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::parse_from(argv).args
    }

    /// A lost copy, a duplicate and a message never written each show in
    /// the figures, and only messages that reached everyone are timed.
    #[test]
    fn tally_reports_loss_duplicates_and_unsent() {
        let a = args(&[
            "--occupants",
            "3",
            "--senders",
            "1",
            "--warmup",
            "0",
            "--duration",
            "1",
        ]);
        let run = Run::new(1, 4, 4, &a);
        for j in 0..3 {
            run.sent[j].store(true, Ordering::Relaxed);
        }
        let mut seen: Vec<Vec<u64>> = vec![Vec::new(); 3];
        // Message 0: everyone (occupant 0 sent it: its echo).
        for (me, s) in seen.iter_mut().enumerate() {
            run.record(me, 0, s);
        }
        // Message 1: occupant 2 never gets it.
        run.record(0, 1, &mut seen[0]);
        run.record(1, 1, &mut seen[1]);
        // Message 2: everyone, occupant 1 twice.
        for (me, s) in seen.iter_mut().enumerate() {
            run.record(me, 2, s);
        }
        run.record(1, 2, &mut seen[1]);
        // Message 3 was never written.
        let (f, r) = tally(&a, &run, 4);
        assert_eq!(f.copies_expected, 9);
        assert_eq!(f.copies_received, 8);
        assert_eq!(f.copies_lost, 1);
        assert_eq!(r.lost, 1);
        assert_eq!(f.duplicates, 1);
        assert_eq!((f.messages, f.complete), (3, 2));
        assert_eq!(r.errors, 1, "the unwritten message is an error");
        assert_eq!(f.nodes, 2);
        assert!(!carried(&r, &f, 4, 1000.0));
        assert!(f.last_p50_ms > 0.0 && f.echo_p50_ms > 0.0);
    }

    #[test]
    fn proc_stat_parses_for_this_process() {
        // Spend a little CPU so the figure cannot stay at zero.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_s(None) > 0.0);
    }
}
