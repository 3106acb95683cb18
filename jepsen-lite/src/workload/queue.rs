//! The queue workload: sender/receiver pairs spread over the nodes, with
//! XEP-0198 on both sides. Every message has a unique id, carried as its
//! `id` attribute and its body.
//!
//! A sender's message is `ok` once the server's `<a h>` (or `<resumed h>`)
//! counts it, `fail` when an error stanza comes back for it first, and
//! unknown when the stream died before either: then the sender tries to
//! resume on any node, and the server's `h` settles what it can. After a
//! failed resumption the sender does not send the unknown messages again
//! (that would be a new message with a new stanza id); they stay unknown.
//!
//! Receivers log in and out, drop TCP without closing, resume on the same or
//! another node, log in afresh, read slowly for a while; some stay offline
//! until the end. In the drain stage every receiver comes back (resuming if
//! it can), reads until quiet, closes, and logs in once more to collect what
//! went to offline storage meanwhile.
//!
//! Size: over 600 lines because the sender and the receiver loops share
//! their bookkeeping of in-flight ids; what is generic lives in `workload`.
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use super::{bare, connect_auth, login, nap, Ctx, Stage, STEP};
use crate::xmpp::{escape, message_facts, Conn, Element, XmppError, NS_SM};
use jepsen_lite::history::Entry;

/// Shape of the queue workload.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub pairs: usize,
    /// Messages per second per sender.
    pub rate: f64,
    /// Most unacknowledged messages a sender keeps in flight.
    pub window: usize,
    /// No ack for this long with messages in flight: the stream is dead.
    pub ack_timeout: Duration,
    /// Receivers that stay offline until the drain.
    pub offline_receivers: usize,
    /// Bytes of padding in each message of the `bulk` sender (0: none).
    pub bulk_bytes: usize,
}

pub fn sender_name(i: usize) -> String {
    format!("qs{i}")
}
pub fn receiver_name(i: usize) -> String {
    format!("qr{i}")
}

/// The users the workload needs.
pub fn users(opts: &QueueOptions) -> Vec<String> {
    let mut u = Vec::new();
    for i in 0..opts.pairs {
        u.push(sender_name(i));
        u.push(receiver_name(i));
    }
    u
}

/// One message in flight.
struct Pending {
    /// Its XEP-0198 number on the current stream.
    num: u32,
    id: String,
    xml: String,
}

/// A sender's stream-management state, kept across streams.
struct SenderSm {
    id: Option<String>,
    node: u64,
    /// Stanzas received on the stream (our `h`).
    inbound: u32,
    /// Stanzas sent on the stream.
    outbound: u32,
    pending: VecDeque<Pending>,
}

pub async fn sender(ctx: Ctx, i: usize, opts: QueueOptions) {
    let me = sender_name(i);
    let to = bare(&receiver_name(i));
    let from = bare(&me);
    let mut rng = ctx.rng(&me);
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(0.01));
    let mut seq = 0u64;
    let mut session = 0u64;
    let mut failed: HashSet<String> = HashSet::new();
    let mut sm = SenderSm {
        id: None,
        node: 0,
        inbound: 0,
        outbound: 0,
        pending: VecDeque::new(),
    };
    let mut finish_deadline: Option<Instant> = None;
    loop {
        if ctx.stage() >= Stage::Finish {
            let d =
                *finish_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
            if sm.pending.is_empty() || Instant::now() >= d {
                give_up(&ctx, &mut sm, "run ended before the outcome was known");
                return;
            }
        }
        // Connect: resume the old stream if there is one, else log in.
        let (node, _) = ctx.random_node(&mut rng);
        let mut conn = match reconnect(&ctx, &me, node, &mut sm).await {
            Ok(c) => c,
            Err(e) => {
                let _ = e;
                nap(&mut rng, 200, 800).await;
                continue;
            }
        };
        session += 1;
        let why = run_sender_stream(
            &ctx,
            &mut conn,
            &mut sm,
            &mut failed,
            &mut seq,
            session,
            SendSpec {
                me: &me,
                from: &from,
                to: &to,
                interval,
                opts: &opts,
            },
            &mut rng,
            &mut finish_deadline,
        )
        .await;
        match why {
            StreamEnd::Done => {
                conn.close().await;
                return;
            }
            StreamEnd::Lost(_reason) => {
                drop(conn);
                nap(&mut rng, 100, 600).await;
            }
        }
    }
}

/// Everything still pending becomes unknown.
fn give_up(ctx: &Ctx, sm: &mut SenderSm, reason: &str) {
    for p in sm.pending.drain(..) {
        ctx.rec.record(Entry::SendInfo {
            t_us: ctx.rec.now(),
            id: p.id,
            reason: reason.to_string(),
        });
    }
}

/// Resumes the previous stream on `node` (XEP-0198 §5) or logs in afresh.
async fn reconnect(ctx: &Ctx, me: &str, node: u64, sm: &mut SenderSm) -> Result<Conn, XmppError> {
    if let Some(previd) = sm.id.clone() {
        let mut conn = connect_auth(ctx, node, me).await?;
        match conn.resume(&previd, sm.inbound, STEP).await? {
            Some(h) => {
                // The server handled our first `h` stanzas, but an error it
                // owes us for one of them is retransmitted only now: those
                // stay pending until the next `<a/>`, which the server sends
                // after whatever it retransmits.
                sm.outbound = h;
                sm.node = node;
                // XEP-0198 §5: send again what the server did not handle,
                // renumbered; all of it stays tracked if a write fails.
                let mut again = Vec::new();
                for p in sm.pending.iter_mut() {
                    if p.num > h {
                        sm.outbound = sm.outbound.wrapping_add(1);
                        p.num = sm.outbound;
                        again.push(p.xml.clone());
                    }
                }
                for xml in again {
                    conn.send(&xml).await?;
                }
                conn.send(&format!("<r xmlns='{NS_SM}'/>")).await?;
                return Ok(conn);
            }
            None => {
                // Not resumable: what was in flight stays unknown.
                sm.id = None;
                give_up(ctx, sm, "stream lost and not resumable");
                drop(conn);
            }
        }
    } else if !sm.pending.is_empty() {
        give_up(ctx, sm, "stream lost without resumption");
    }
    let (conn, id) = login(ctx, node, me, "send").await?;
    sm.id = id;
    sm.node = node;
    sm.inbound = 0;
    sm.outbound = 0;
    Ok(conn)
}

/// The server handled our first `h` stanzas: those messages are ok.
fn settle(ctx: &Ctx, sm: &mut SenderSm, h: u32, failed: &HashSet<String>) {
    while let Some(p) = sm.pending.front() {
        if p.num > h {
            break;
        }
        if let Some(p) = sm.pending.pop_front() {
            if !failed.contains(&p.id) {
                ctx.rec.record(Entry::SendOk {
                    t_us: ctx.rec.now(),
                    id: p.id,
                });
            }
        }
    }
}

enum StreamEnd {
    Done,
    Lost(String),
}

struct SendSpec<'a> {
    me: &'a str,
    from: &'a str,
    to: &'a str,
    interval: Duration,
    opts: &'a QueueOptions,
}

#[allow(clippy::too_many_arguments)]
async fn run_sender_stream(
    ctx: &Ctx,
    conn: &mut Conn,
    sm: &mut SenderSm,
    failed: &mut HashSet<String>,
    seq: &mut u64,
    session: u64,
    spec: SendSpec<'_>,
    rng: &mut StdRng,
    finish_deadline: &mut Option<Instant>,
) -> StreamEnd {
    let mut next_send = Instant::now();
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let padding = if spec.opts.bulk_bytes > 0 {
        "x".repeat(spec.opts.bulk_bytes)
    } else {
        String::new()
    };
    loop {
        let stage = ctx.stage();
        let may_send = stage == Stage::Faults && sm.pending.len() < spec.opts.window;
        tokio::select! {
            _ = tokio::time::sleep_until(next_send), if may_send => {
                *seq += 1;
                let id = format!("{}-{}-{}", ctx.run_id, spec.me, seq);
                let pad = if padding.is_empty() {
                    String::new()
                } else {
                    format!("<pad xmlns='urn:jepsen-lite:pad'>{padding}</pad>")
                };
                let xml = format!(
                    "<message type='chat' to='{}' id='{}'><body>{}</body>{pad}</message>",
                    escape(spec.to), escape(&id), escape(&id)
                );
                if sm.pending.is_empty() {
                    last_progress = Instant::now();
                }
                ctx.rec.record(Entry::Send {
                    t_us: ctx.rec.now(),
                    process: spec.me.to_string(),
                    id: id.clone(),
                    from: spec.from.to_string(),
                    to: spec.to.to_string(),
                    node: conn.node,
                    session,
                    seq: *seq,
                });
                sm.outbound = sm.outbound.wrapping_add(1);
                sm.pending.push_back(Pending { num: sm.outbound, id, xml: xml.clone() });
                let jitter = rng.gen_range(0.5..1.5);
                next_send += spec.interval.mul_f64(jitter);
                if next_send < Instant::now() - Duration::from_secs(1) {
                    next_send = Instant::now();
                }
                if let Err(e) = conn.send(&format!("{xml}<r xmlns='{NS_SM}'/>")).await {
                    return StreamEnd::Lost(e.to_string());
                }
            }
            r = conn.next(Duration::from_secs(3600)) => {
                let el = match r {
                    Ok(el) => el,
                    Err(e) => return StreamEnd::Lost(e.to_string()),
                };
                match handle_sender_incoming(ctx, conn, sm, failed, &el).await {
                    Ok(progress) => if progress { last_progress = Instant::now(); },
                    Err(e) => return StreamEnd::Lost(e.to_string()),
                }
            }
            _ = tick.tick() => {
                if !sm.pending.is_empty() && last_progress.elapsed() > spec.opts.ack_timeout {
                    return StreamEnd::Lost(format!("no ack for {:?}", spec.opts.ack_timeout));
                }
                if stage >= Stage::Finish {
                    let d = *finish_deadline
                        .get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
                    if sm.pending.is_empty() {
                        return StreamEnd::Done;
                    }
                    if Instant::now() >= d {
                        give_up(ctx, sm, "run ended before the outcome was known");
                        return StreamEnd::Done;
                    }
                    if conn.send(&format!("<r xmlns='{NS_SM}'/>")).await.is_err() {
                        return StreamEnd::Lost("write failed".into());
                    }
                }
            }
        }
    }
}

/// Handles one element from the server; true when an ack made progress.
async fn handle_sender_incoming(
    ctx: &Ctx,
    conn: &mut Conn,
    sm: &mut SenderSm,
    failed: &mut HashSet<String>,
    el: &Element,
) -> Result<bool, XmppError> {
    match el.name.as_str() {
        "a" if el.ns() == NS_SM => {
            let h = el
                .attr("h")
                .and_then(|h| h.parse::<u32>().ok())
                .ok_or_else(|| XmppError::Unexpected("<a/> without h".into()))?;
            let before = sm.pending.len();
            settle(ctx, sm, h, failed);
            Ok(sm.pending.len() < before)
        }
        "r" if el.ns() == NS_SM => {
            conn.ack(sm.inbound).await?;
            Ok(false)
        }
        "message" | "presence" | "iq" => {
            sm.inbound = sm.inbound.wrapping_add(1);
            if el.name == "message" && el.attr("type") == Some("error") {
                if let Some(id) = el.attr("id") {
                    let condition = el.error_condition();
                    let t = ctx.rec.now();
                    ctx.rec.record(Entry::Bounce {
                        t_us: t,
                        id: id.to_string(),
                        condition: condition.clone(),
                    });
                    if sm.pending.iter().any(|p| p.id == id) && failed.insert(id.to_string()) {
                        ctx.rec.record(Entry::SendFail {
                            t_us: t,
                            id: id.to_string(),
                            condition,
                        });
                    }
                }
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// A receiver that heard nothing for this long probes its stream...
const SILENCE_PROBE: Duration = Duration::from_secs(4);
/// ...and gives it up when the probe is not answered within this.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(4);

/// How a receiver behaves until the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Comes and goes, resumes, reads slowly at times.
    Active,
    /// Stays offline until the drain.
    Offline,
}

struct ReceiverSm {
    id: Option<String>,
    inbound: u32,
}

pub async fn receiver(ctx: Ctx, i: usize, opts: QueueOptions) {
    let me = receiver_name(i);
    let my_bare = bare(&me);
    let mut rng = ctx.rng(&me);
    let mode = if i < opts.offline_receivers {
        Mode::Offline
    } else {
        Mode::Active
    };
    let mut sm = ReceiverSm {
        id: None,
        inbound: 0,
    };
    let mut stage_rx = ctx.stage.clone();
    if mode == Mode::Active {
        while ctx.stage() < Stage::Drain {
            let (node, _) = ctx.random_node(&mut rng);
            let mut conn = match receiver_connect(&ctx, &me, node, &mut sm).await {
                Ok(c) => c,
                Err(_) => {
                    nap(&mut rng, 200, 800).await;
                    continue;
                }
            };
            // One "visit": read for a while, then leave in some way.
            let stay = Duration::from_millis(rng.gen_range(2_000..10_000));
            if rng.gen_bool(0.25) {
                conn.read_delay_ms
                    .store(rng.gen_range(20..120), Ordering::Relaxed);
            }
            let end = Instant::now() + stay;
            // Liveness, as a phone app does it: after a silence, ask for an
            // ack (XEP-0198 §4); no answer in time means the node is gone.
            let mut last_rx = Instant::now();
            let mut probe: Option<Instant> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let lost = loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => break false,
                    _ = stage_rx.changed() => if ctx.stage() >= Stage::Drain { break false; },
                    _ = tick.tick() => {
                        if let Some(p) = probe {
                            if p.elapsed() > SILENCE_TIMEOUT {
                                break true;
                            }
                        } else if last_rx.elapsed() > SILENCE_PROBE {
                            if conn.send(&format!("<r xmlns='{NS_SM}'/>")).await.is_err() {
                                break true;
                            }
                            probe = Some(Instant::now());
                        }
                    }
                    r = conn.next(Duration::from_secs(3600)) => match r {
                        Ok(el) => {
                            last_rx = Instant::now();
                            probe = None;
                            if handle_receiver_incoming(&ctx, &mut conn, &mut sm, &me, &my_bare, &el).await.is_err() { break true; }
                        }
                        Err(_) => break true,
                    },
                }
            };
            if lost {
                // The stream died under us: come back at once elsewhere.
                continue;
            }
            if ctx.stage() >= Stage::Drain {
                drop(conn);
                break;
            }
            match rng.gen_range(0..4) {
                0 => {
                    // A clean logout: ack what we have, close.
                    let _ = conn.ack(sm.inbound).await;
                    conn.close().await;
                    sm.id = None;
                    nap(&mut rng, 500, 4_000).await;
                }
                1 => {
                    // The network dropped us: no close; resume later.
                    drop(conn);
                    nap(&mut rng, 300, 3_000).await;
                }
                2 => {
                    // Dropped, and the app lost its resumption state.
                    drop(conn);
                    sm.id = None;
                    nap(&mut rng, 300, 2_000).await;
                }
                _ => {
                    // Stay, but keep reading (a new visit on the same stream
                    // would need a reconnect; instead resume elsewhere).
                    drop(conn);
                }
            }
        }
    } else {
        while ctx.stage() < Stage::Drain {
            if stage_rx.changed().await.is_err() {
                break;
            }
        }
    }
    drain(&ctx, &me, &my_bare, &mut sm, &mut rng).await;
}

async fn receiver_connect(
    ctx: &Ctx,
    me: &str,
    node: u64,
    sm: &mut ReceiverSm,
) -> Result<Conn, XmppError> {
    let (mut conn, id) = match sm.id.clone() {
        Some(previd) => {
            let mut conn = connect_auth(ctx, node, me).await?;
            if conn.resume(&previd, sm.inbound, STEP).await?.is_some() {
                return Ok(conn);
            }
            // XEP-0198 §5: after <failed/> the stream stays open; bind a
            // new session on it (as Gajim and xmpp.js do).
            conn.bind("phone", STEP).await?;
            let id = conn.enable_sm(STEP).await?;
            (conn, id)
        }
        None => login(ctx, node, me, "phone").await?,
    };
    sm.id = id;
    sm.inbound = 0;
    // RFC 6121 §4.2: initial presence; offline messages follow it.
    conn.send("<presence/>").await?;
    Ok(conn)
}

async fn handle_receiver_incoming(
    ctx: &Ctx,
    conn: &mut Conn,
    sm: &mut ReceiverSm,
    me: &str,
    my_bare: &str,
    el: &Element,
) -> Result<bool, XmppError> {
    match el.name.as_str() {
        "r" if el.ns() == NS_SM => {
            conn.ack(sm.inbound).await?;
            Ok(false)
        }
        "message" | "presence" | "iq" => {
            sm.inbound = sm.inbound.wrapping_add(1);
            if el.name == "message" && el.attr("type") != Some("error") {
                if let Some((id, stanza_id, delayed)) = message_facts(el, my_bare) {
                    let from = el
                        .attr("from")
                        .map(|f| f.split('/').next().unwrap_or(f).to_string())
                        .unwrap_or_default();
                    ctx.rec.record(Entry::Recv {
                        t_us: ctx.rec.now(),
                        process: me.to_string(),
                        id,
                        from,
                        to: my_bare.to_string(),
                        stanza_id,
                        node: conn.node,
                        delayed,
                    });
                    // XEP-0198 §4: an ack may be sent at any time; acking
                    // each message at once means a copy the server sends
                    // again was either in flight or its ack was lost.
                    conn.ack(sm.inbound).await?;
                    return Ok(true);
                }
            }
            if el.name == "iq" && matches!(el.attr("type"), Some("get" | "set")) {
                // RFC 6120 §8.2.3: answer every request (we support none).
                let id = el.attr("id").unwrap_or_default();
                let to = el.attr("from").unwrap_or_default();
                conn.send(&format!(
                    "<iq type='error' id='{}' to='{}'><error type='cancel'>\
                     <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                    escape(id),
                    escape(to)
                ))
                .await?;
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// The drain: come back (resuming if possible), read until quiet, close;
/// then fresh logins, each collecting what went to offline storage
/// meanwhile, until one brings nothing new (or the drain's deadline).
async fn drain(ctx: &Ctx, me: &str, my_bare: &str, sm: &mut ReceiverSm, rng: &mut StdRng) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    while Instant::now() < deadline {
        let quiet = Duration::from_secs(if round == 0 { 5 } else { 3 });
        if round > 0 {
            sm.id = None;
        }
        // Keep trying nodes until one takes us (the cluster is healed).
        let mut conn = None;
        while conn.is_none() && Instant::now() < deadline {
            let (node, _) = ctx.random_node(rng);
            match receiver_connect(ctx, me, node, sm).await {
                Ok(c) => conn = Some(c),
                Err(_) => nap(rng, 200, 600).await,
            }
        }
        let Some(mut c) = conn else {
            break;
        };
        let mut got = 0u64;
        let mut clean = true;
        let mut last = Instant::now();
        while last.elapsed() < quiet && Instant::now() < deadline {
            let left = quiet.saturating_sub(last.elapsed());
            match c.next(left).await {
                Ok(el) => match handle_receiver_incoming(ctx, &mut c, sm, me, my_bare, &el).await {
                    Ok(true) => {
                        got += 1;
                        last = Instant::now();
                    }
                    Ok(false) => {}
                    Err(_) => {
                        clean = false;
                        break;
                    }
                },
                Err(XmppError::Timeout(_)) => break,
                Err(_) => {
                    clean = false;
                    break;
                }
            }
        }
        let _ = c.ack(sm.inbound).await;
        c.close().await;
        sm.id = None;
        round += 1;
        if clean && got == 0 && round >= 2 {
            // Done only when storage agrees: a session the server ends
            // late (a replaced or detached one) may move what it held to
            // the offline queue after our last login; a user who logs in
            // again later gets it, so the drain does too.
            let (node, _) = ctx.random_node(rng);
            match ctx.admin.queues(node).await {
                Ok(qs) if qs.iter().any(|q| q.jid == my_bare && q.depth > 0) => {
                    nap(rng, 500, 1_500).await;
                }
                Ok(_) => return,
                Err(_) => nap(rng, 200, 600).await,
            }
        }
    }
}
