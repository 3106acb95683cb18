//! Message traffic, the `same-node`, `cross-node` and `sweep` scenarios:
//! one sender and one recipient per pair, over XMPP or the raw relay. Open
//! loop (see the crate's doc): each sender keeps its schedule on its own,
//! latency runs from a message's intended send time to its receipt, and a
//! message that never arrives is counted as lost.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;

use crate::{client, fill_percentiles, histogram, opts, raw, user, BenchArgs, RunResult, Target};

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
pub(crate) async fn traffic(args: &BenchArgs, rate: u64, cross: bool) -> anyhow::Result<RunResult> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        assert_eq!(parse_payload("3:17:123456:xxxx"), Some((3, 17, 123456)));
        assert_eq!(parse_payload("3:17:99"), Some((3, 17, 99)));
        assert_eq!(parse_payload("garbage"), None);
    }
}
