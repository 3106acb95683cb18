//! One occupant of the bench's room: its writer task (joins, pongs, the
//! groupchat messages the scheduler hands it), its reader task (its own
//! presence, iq answers, and every groupchat copy it receives, recorded in
//! the rate's [`Run`]), and the body format that ties a copy to its
//! message and intended send time.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use starling::xmpp::element::escape;
use starling::xmpp::{ns, Element};

use crate::{client, BenchArgs};

/// What an occupant's writer task is asked to send.
pub(super) enum Out {
    Raw(String),
    Msg {
        run: Arc<Run>,
        j: usize,
    },
    /// End the stream (the reader holds a sender too, for pongs, so the
    /// channel alone never closes).
    Close,
}

/// What the occupants' reader tasks tell the driver.
pub(super) enum Ctl {
    Joined(usize),
    JoinFailed(usize, String),
    Iq { id: String, ok: bool, el: String },
}

/// One rate's bookkeeping, shared by the scheduler, writers and readers.
pub(super) struct Run {
    pub(super) id: u64,
    pub(super) base: Instant,
    pub(super) step_ns: f64,
    pub(super) measure_from_ns: u64,
    pub(super) occupants: usize,
    pub(super) senders: usize,
    pub(super) sent: Vec<AtomicBool>,
    pub(super) sent_n: AtomicU64,
    pub(super) count: Vec<AtomicU32>,
    pub(super) first: Vec<AtomicU64>,
    pub(super) last: Vec<AtomicU64>,
    pub(super) echo: Vec<AtomicU64>,
    pub(super) received: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) first_error: Mutex<Option<String>>,
}

impl Run {
    pub(super) fn new(id: u64, rate: u64, total: usize, args: &BenchArgs) -> Self {
        let v64 = |x: u64| (0..total).map(|_| AtomicU64::new(x)).collect();
        Run {
            id,
            base: Instant::now() + Duration::from_millis(100),
            step_ns: 1e9 / rate.max(1) as f64,
            measure_from_ns: args.warmup * 1_000_000_000,
            occupants: args.muc.occupants,
            senders: args.muc.senders.clamp(1, args.muc.occupants),
            sent: (0..total).map(|_| AtomicBool::new(false)).collect(),
            sent_n: AtomicU64::new(0),
            count: (0..total).map(|_| AtomicU32::new(0)).collect(),
            first: v64(u64::MAX),
            last: v64(0),
            echo: v64(0),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    pub(super) fn due_ns(&self, j: usize) -> u64 {
        (j as f64 * self.step_ns) as u64
    }

    /// Occupant `me` received message `j`; `seen` is its bitmap of this
    /// run's messages (a second copy is a duplicate).
    pub(super) fn record(&self, me: usize, j: usize, seen: &mut Vec<u64>) {
        if j >= self.count.len() {
            return;
        }
        if seen.len() < self.count.len().div_ceil(64) {
            seen.resize(self.count.len().div_ceil(64), 0);
        }
        let (word, bit) = (j / 64, 1u64 << (j % 64));
        if seen[word] & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        seen[word] |= bit;
        let now = self.base.elapsed().as_nanos() as u64;
        if j % self.senders == me {
            self.echo[j].store(now, Ordering::Relaxed);
        } else {
            self.first[j].fetch_min(now, Ordering::Relaxed);
            self.last[j].fetch_max(now, Ordering::Relaxed);
        }
        self.count[j].fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, el: &Element) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(el.to_string().chars().take(300).collect());
        }
    }
}

/// `run:j:t_ns[:padding]` out of a body.
pub(super) fn parse_body(s: &str) -> Option<(u64, usize)> {
    let mut it = s.split(':');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub(super) fn body(run: u64, j: usize, t_ns: u64, bytes: usize) -> String {
    let mut b = format!("{run}:{j}:{t_ns}");
    if b.len() < bytes {
        b.push(':');
        b.extend(std::iter::repeat_n('x', bytes - b.len()));
    }
    b
}

pub(super) fn status_codes(el: &Element) -> Vec<String> {
    el.get_child("x", ns::MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads one occupant's stream until it ends.
pub(super) async fn read_loop(
    me: usize,
    mut r: client::Reader,
    out: UnboundedSender<Out>,
    ctl: UnboundedSender<Ctl>,
    self_jid: String,
    current: Arc<RwLock<Option<Arc<Run>>>>,
) {
    let mut seen: Vec<u64> = Vec::new();
    let mut seen_run = u64::MAX;
    while let Ok(Some(el)) = r.next().await {
        match el.name() {
            "message" => {
                let run = current
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .cloned();
                let Some(run) = run else { continue };
                if el.attr("type") == Some("error") {
                    run.error(&el);
                    continue;
                }
                if el.attr("type") != Some("groupchat") {
                    continue;
                }
                let Some(b) = el.get_child("body", ns::CLIENT) else {
                    continue;
                };
                if let Some((id, j)) = parse_body(&b.text()) {
                    if id == run.id {
                        if seen_run != id {
                            seen_run = id;
                            seen.clear();
                        }
                        run.record(me, j, &mut seen);
                    }
                }
            }
            "presence" if el.attr("from") == Some(self_jid.as_str()) => {
                if el.attr("type") == Some("error") {
                    let _ = ctl.send(Ctl::JoinFailed(me, el.to_string()));
                } else if status_codes(&el).iter().any(|c| c == "110") {
                    let _ = ctl.send(Ctl::Joined(me));
                }
            }
            "iq" => match el.attr("type") {
                // Answer server pings so no server drops an occupant.
                Some("get") => {
                    let id = escape(el.attr("id").unwrap_or_default());
                    let to = escape(el.attr("from").unwrap_or_default());
                    let _ = out.send(Out::Raw(format!("<iq type='result' id='{id}' to='{to}'/>")));
                }
                Some(t @ ("result" | "error")) => {
                    let _ = ctl.send(Ctl::Iq {
                        id: el.attr("id").unwrap_or_default().to_string(),
                        ok: t == "result",
                        el: el.to_string(),
                    });
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// Writes what an occupant is asked to send, until [`Out::Close`].
pub(super) async fn write_loop(
    mut w: WriteHalf<client::BoxIo>,
    mut rx: UnboundedReceiver<Out>,
    room: String,
    body_bytes: usize,
) {
    let mut buf = String::with_capacity(256 + body_bytes);
    while let Some(o) = rx.recv().await {
        buf.clear();
        let sent = match &o {
            Out::Close => break,
            Out::Raw(s) => {
                buf.push_str(s);
                None
            }
            Out::Msg { run, j } => {
                let b = body(run.id, *j, run.due_ns(*j), body_bytes);
                buf.push_str(&format!(
                    "<message to='{room}' type='groupchat' id='{}-{j}'><body>{b}</body></message>",
                    run.id
                ));
                Some((run, *j))
            }
        };
        if w.write_all(buf.as_bytes()).await.is_err() || w.flush().await.is_err() {
            return;
        }
        if let Some((run, j)) = sent {
            run.sent[j].store(true, Ordering::Relaxed);
            run.sent_n.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = w.write_all(b"</stream:stream>").await;
    let _ = w.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let b = body(3, 17, 123_456, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse_body(&b), Some((3, 17)));
        assert_eq!(parse_body("3:17:99"), Some((3, 17)));
        assert_eq!(parse_body("hello"), None);
    }
}
