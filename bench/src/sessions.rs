//! The session scenarios: `login` (a login storm: logins per second and
//! their latency), `offline` (messages queued for offline users, then
//! delivered at login) and `idle` (the servers' resident memory per idle,
//! authenticated, available session, from /proc).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;

use crate::{
    client, close_all, connect_users, fill_percentiles, histogram, opts, user, BenchArgs, RunResult,
};

/// Logs `args.users` users in, `concurrency` at a time, and measures each
/// login (TCP connect to available presence sent).
pub(crate) async fn login_storm(args: &BenchArgs) -> anyhow::Result<RunResult> {
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
pub(crate) async fn offline_drain(args: &BenchArgs) -> anyhow::Result<RunResult> {
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
pub(crate) async fn idle_memory(args: &BenchArgs) -> anyhow::Result<RunResult> {
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
            match (args.transport, args.tls) {
                (crate::Transport::Ws, _) => "WebSocket, plaintext",
                (_, true) => "TLS",
                _ => "plaintext",
            }
        ),
        ..Default::default()
    })
}
