//! Availability (how many sends ended ok, inside fault windows and outside
//! them) and delivery latency (first receipt minus send: percentiles over
//! the run and a per-second series), from the queue checker's message
//! index.
use crate::checker::queue::Msg;
use crate::results::{Availability, Bucket, FaultWindow, LatencyResult};

/// Whether a send invoked at `t_us` falls in a fault window (ends included).
fn in_faults(windows: &[FaultWindow], t_us: u64) -> bool {
    windows
        .iter()
        .any(|w| w.start_us <= t_us && t_us <= w.end_us)
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Sends invoked inside any fault window vs outside, and the fraction of
/// each whose outcome was ok.
pub fn availability(msgs: &[Msg], windows: &[FaultWindow]) -> Availability {
    let (mut inside, mut ok_inside, mut outside, mut ok_outside) = (0u64, 0u64, 0u64, 0u64);
    for m in msgs {
        let Some(s) = &m.send else { continue };
        let ok = u64::from(m.is_ok());
        if in_faults(windows, s.t_us) {
            inside += 1;
            ok_inside += ok;
        } else {
            outside += 1;
            ok_outside += ok;
        }
    }
    Availability {
        sends_in_faults: inside,
        ok_in_faults: ratio(ok_inside, inside),
        sends_outside: outside,
        ok_outside: ratio(ok_outside, outside),
    }
}

/// The nearest-rank `p`-th percentile of ascending `sorted`; 0 when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn latency_ms(send_us: u64, recv_us: u64) -> f64 {
    recv_us.saturating_sub(send_us) as f64 / 1000.0
}

/// Delivery latency of live deliveries (first copy without an XEP-0203
/// delay) over the run, and one bucket per second from 0 to the
/// second of `end_us` (the last entry's time). A bucket counts the sends
/// invoked in it (and how many of them ended ok) and the first copies
/// received in it, with the latency percentiles of those that were sent.
pub fn latency(msgs: &[Msg], end_us: Option<u64>) -> LatencyResult {
    let mut all = Vec::new();
    let seconds = end_us.map_or(0, |t| t / 1_000_000 + 1) as usize;
    let mut buckets: Vec<(u64, u64, u64, Vec<f64>)> = vec![(0, 0, 0, Vec::new()); seconds];
    let sec = |t: u64| (t / 1_000_000) as usize;
    for m in msgs {
        if let Some(s) = &m.send {
            if let Some(b) = buckets.get_mut(sec(s.t_us)) {
                b.0 += 1;
                b.1 += u64::from(m.is_ok());
            }
        }
        let Some(first) = m.first_recv_us() else {
            continue;
        };
        // Live deliveries only: a copy from offline storage waited for its
        // recipient to come back, which is not the server's latency.
        let live = m.recvs.first().is_some_and(|r| !r.delayed);
        let lat = m
            .send
            .as_ref()
            .filter(|_| live)
            .map(|s| latency_ms(s.t_us, first));
        if let Some(l) = lat {
            all.push(l);
        }
        if let Some(b) = buckets.get_mut(sec(first)) {
            b.2 += 1;
            if let Some(l) = lat {
                b.3.push(l);
            }
        }
    }
    let all = sorted(all);
    let series = buckets
        .into_iter()
        .enumerate()
        .map(|(t, (sent, ok, received, lats))| {
            let lats = sorted(lats);
            Bucket {
                t_s: t as u64,
                sent,
                ok,
                received,
                p50_ms: percentile(&lats, 50.0),
                p99_ms: percentile(&lats, 99.0),
            }
        })
        .collect();
    LatencyResult {
        samples: all.len() as u64,
        p50_ms: percentile(&all, 50.0),
        p90_ms: percentile(&all, 90.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: all.last().copied().unwrap_or(0.0),
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::fixture::*;
    use crate::checker::queue::index;
    use crate::history::Entry;

    fn window(start_ms: u64, end_ms: u64) -> FaultWindow {
        FaultWindow {
            fault: 1,
            kind: "kill".into(),
            nodes: vec![2],
            start_us: ms(start_ms),
            end_us: ms(end_ms),
        }
    }

    #[test]
    fn availability_splits_by_fault_window() {
        let h = [
            send(1, "a"),
            ok(2, "a"),
            send(3, "b"),
            fail(4, "b"),
            send(10, "c"), // in the window, ok
            ok(11, "c"),
            send(12, "d"), // in the window, unknown
            send(20, "e"), // the window's end is inside
            info(21, "e"),
            ok(7, "ghost"), // no send: not counted
        ];
        let a = availability(&index(&h), &[window(10, 20)]);
        assert_eq!((a.sends_outside, a.sends_in_faults), (2, 3));
        assert!((a.ok_outside - 0.5).abs() < 1e-12);
        assert!((a.ok_in_faults - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn availability_without_sends_is_zero() {
        let a = availability(&[], &[window(0, 10)]);
        assert_eq!(a, Availability::default());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn latency_over_first_copies_with_series() {
        let h: Vec<Entry> = vec![
            send(100, "a"),
            ok(101, "a"),
            recv(110, "a"),  // 10 ms
            recv(2500, "a"), // a later copy: ignored
            send(200, "b"),
            ok(201, "b"),
            recv(230, "b"), // 30 ms
            send(1500, "c"),
            fail(1501, "c"),
            recv(1520, "c"),     // 20 ms, in second 1
            send(1600, "d"),     // never received
            recv(1700, "ghost"), // unexpected: counted received, no latency
        ];
        let msgs = index(&h);
        let l = latency(&msgs, h.iter().map(Entry::t_us).max());
        assert_eq!(l.samples, 3);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (20.0, 30.0, 30.0, 30.0)
        );
        assert_eq!(l.series.len(), 3, "seconds 0, 1 and 2");
        let s0 = &l.series[0];
        assert_eq!((s0.t_s, s0.sent, s0.ok, s0.received), (0, 2, 2, 2));
        assert_eq!((s0.p50_ms, s0.p99_ms), (10.0, 30.0));
        let s1 = &l.series[1];
        assert_eq!((s1.sent, s1.ok, s1.received), (2, 0, 2));
        assert_eq!((s1.p50_ms, s1.p99_ms), (20.0, 20.0));
        let s2 = &l.series[2];
        assert_eq!((s2.sent, s2.received, s2.p50_ms), (0, 0, 0.0));
    }

    #[test]
    fn offline_copies_count_as_received_but_not_in_latency() {
        let mut late = recv(60_000, "b");
        if let Entry::Recv { delayed, .. } = &mut late {
            *delayed = true;
        }
        let h: Vec<Entry> = vec![
            send(100, "a"),
            ok(101, "a"),
            recv(110, "a"),
            send(200, "b"),
            ok(201, "b"),
            late,
        ];
        let msgs = index(&h);
        let l = latency(&msgs, h.iter().map(Entry::t_us).max());
        assert_eq!(l.samples, 1);
        assert_eq!(l.max_ms, 10.0);
        assert_eq!(l.series[60].received, 1);
        assert_eq!(l.series[60].p99_ms, 0.0);
    }

    #[test]
    fn latency_of_empty_history() {
        let l = latency(&[], None);
        assert_eq!(l, LatencyResult::default());
    }
}
