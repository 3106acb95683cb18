//! Hand-made SVG line plots over the run's time axis, with the fault
//! windows shaded and the `heal`/`drain` phases as dashed lines.
//!
//! Every number written is finite: non-finite inputs are treated as zero
//! and every division is guarded, so the SVG never says `NaN` or `inf`.
use std::fmt::Write;

use super::{escape, node_list};
use crate::history::Entry;
use crate::results::{Bucket, FaultWindow, LatencyResult};

const W: f64 = 900.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 40.0;
/// Room above the highest value, so a flat line does not sit on the frame.
const HEADROOM: f64 = 1.05;

/// One line of a plot: `(t seconds, value)` points, split into segments
/// where there is no data.
pub(super) struct Series {
    pub name: &'static str,
    pub color: &'static str,
    /// Stroke width; a wide pale line stays visible under a narrow one.
    pub width: f64,
    pub segments: Vec<Vec<(f64, f64)>>,
}

/// What a plot shows, besides its lines.
pub(super) struct Frame<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    /// A note under the title (e.g. how the y axis is clipped).
    pub note: String,
    pub x_max_s: f64,
    pub y_max: f64,
    pub windows: &'a [FaultWindow],
    /// `(t seconds, name)` of the phases marked by dashed lines.
    pub phases: &'a [(f64, String)],
}

/// The colour of a fault kind's family: kill red, pause orange,
/// partition/cut blue, anything else grey. Also the family's name.
pub(super) fn fault_family(kind: &str) -> (&'static str, &'static str) {
    let k = kind.to_ascii_lowercase();
    if k.contains("kill") {
        ("kill", "#d62728")
    } else if k.contains("pause") {
        ("pause", "#ff7f0e")
    } else if k.contains("partition") || k.contains("cut") || k.contains("isolat") {
        ("partition", "#1f77b4")
    } else {
        ("other", "#7f7f7f")
    }
}

/// A number for an SVG attribute: one decimal, zero when not finite.
fn n(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "0".to_string()
    }
}

/// Zero when not finite or negative.
fn clean(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) dividing `range`
/// into about `target` parts.
pub(super) fn nice_step(range: f64, target: usize) -> f64 {
    if !(range.is_finite() && range > 0.0) || target == 0 {
        return 1.0;
    }
    let raw = range / target as f64;
    let mag = 10f64.powf(raw.log10().floor());
    if !(mag.is_finite() && mag > 0.0) {
        return 1.0;
    }
    let r = raw / mag;
    let m = if r <= 1.0 {
        1.0
    } else if r <= 2.0 {
        2.0
    } else if r <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// `v` rounded up to a nice tick; 1 when `v` is not a positive number.
pub(super) fn nice_ceil(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let s = nice_step(v, 5);
    let c = (v / s).ceil() * s;
    if c.is_finite() && c > 0.0 {
        c
    } else {
        1.0
    }
}

/// A tick label with as many decimals as the step needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 || !(step.is_finite() && step > 0.0) {
        0
    } else {
        ((-step.log10()).ceil() as usize).min(6)
    };
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "0".to_string()
    }
}

/// Ticks from 0 to `max` by a nice step (at most 100).
fn ticks(max: f64, target: usize) -> (f64, Vec<f64>) {
    let step = nice_step(max, target);
    let mut out = Vec::new();
    let mut i = 0u32;
    while out.len() < 100 {
        let t = f64::from(i) * step;
        if t > max * (1.0 + 1e-9) {
            break;
        }
        out.push(t);
        i += 1;
    }
    (step, out)
}

/// The end of the time axis, in seconds: the last second of the series,
/// the last entry of the history or the end of the last fault, whichever
/// is latest; at least 1.
pub(super) fn x_max_s(series: &[Bucket], history: &[Entry], windows: &[FaultWindow]) -> f64 {
    let from_series = series.iter().map(|b| b.t_s + 1).max().unwrap_or(0) as f64;
    let from_history = history.iter().map(Entry::t_us).max().unwrap_or(0) as f64 / 1e6;
    let from_windows = windows.iter().map(|w| w.end_us).max().unwrap_or(0) as f64 / 1e6;
    let m = from_series.max(from_history).max(from_windows);
    if m.is_finite() && m > 0.0 {
        m
    } else {
        1.0
    }
}

/// The phases shown as dashed lines: `heal` and `drain`.
pub(super) fn phases(history: &[Entry]) -> Vec<(f64, String)> {
    history
        .iter()
        .filter_map(|e| match e {
            Entry::Phase { t_us, name } if name == "heal" || name == "drain" => {
                Some((*t_us as f64 / 1e6, name.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Draws one plot.
pub(super) fn render(frame: &Frame, series: &[Series]) -> String {
    let x0 = LEFT;
    let x1 = W - RIGHT;
    let y0 = TOP;
    let y1 = H - BOTTOM;
    let x_max = if frame.x_max_s.is_finite() && frame.x_max_s > 0.0 {
        frame.x_max_s
    } else {
        1.0
    };
    let y_max = if frame.y_max.is_finite() && frame.y_max > 0.0 {
        frame.y_max
    } else {
        1.0
    };
    let sx = |t: f64| x0 + clean(t).min(x_max) / x_max * (x1 - x0);
    let sy = |v: f64| y1 - clean(v).min(y_max) / y_max * (y1 - y0);

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <title>{}</title>\n\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>\n",
        escape(frame.title)
    );
    let _ = writeln!(
        s,
        "<text x=\"{x0}\" y=\"16\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        escape(frame.title)
    );
    if !frame.note.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{x0}\" y=\"31\" fill=\"#555555\">{}</text>",
            escape(&frame.note)
        );
    }

    // Fault windows, under everything else.
    for (i, w) in frame.windows.iter().enumerate() {
        let (_, color) = fault_family(&w.kind);
        let a = sx(w.start_us as f64 / 1e6);
        let b = sx(w.end_us as f64 / 1e6).max(a + 1.0).min(x1);
        let label = format!("{} {}", w.kind, node_list(&w.nodes));
        let _ = writeln!(
            s,
            "<rect class=\"fault\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{color}\" \
             fill-opacity=\"0.15\"><title>{} {:.1}s..{:.1}s</title></rect>",
            n(a),
            n(y0),
            n((b - a).max(0.0)),
            n(y1 - y0),
            escape(&label),
            w.start_us as f64 / 1e6,
            w.end_us as f64 / 1e6,
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\" font-size=\"10\">{}</text>",
            n(a + 2.0),
            n(y0 + 10.0 + (i % 3) as f64 * 11.0),
            escape(&label)
        );
    }

    // Grid, ticks and labels.
    let (xstep, xticks) = ticks(x_max, 10);
    for t in xticks {
        let x = sx(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{y0}\" x2=\"{x}\" y2=\"{y1}\" stroke=\"#eeeeee\"/>\
             <line x1=\"{x}\" y1=\"{y1}\" x2=\"{x}\" y2=\"{}\" stroke=\"#000000\"/>\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            n(y1 + 4.0),
            n(y1 + 16.0),
            tick_label(t, xstep),
            x = n(x),
            y0 = n(y0),
            y1 = n(y1),
        );
    }
    let (ystep, yticks) = ticks(y_max, 5);
    for v in yticks {
        let y = sy(v);
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y}\" x2=\"{x1}\" y2=\"{y}\" stroke=\"#eeeeee\"/>\
             <line x1=\"{}\" y1=\"{y}\" x2=\"{x0}\" y2=\"{y}\" stroke=\"#000000\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            n(x0 - 4.0),
            n(x0 - 6.0),
            n(y + 4.0),
            tick_label(v, ystep),
            x0 = n(x0),
            x1 = n(x1),
            y = n(y),
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{x0}\" y1=\"{y1}\" x2=\"{x1}\" y2=\"{y1}\" stroke=\"#000000\"/>\
         <line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#000000\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">time (s)</text>\
         <text x=\"14\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {})\">{}</text>",
        n((x0 + x1) / 2.0),
        n(H - 6.0),
        n((y0 + y1) / 2.0),
        n((y0 + y1) / 2.0),
        escape(frame.y_label),
        x0 = n(x0),
        x1 = n(x1),
        y0 = n(y0),
        y1 = n(y1),
    );

    // Phases.
    for (t, name) in frame.phases {
        let x = n(sx(*t));
        let _ = writeln!(
            s,
            "<line class=\"phase\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#333333\" \
             stroke-dasharray=\"5 4\"/><text x=\"{x}\" y=\"{}\" dx=\"3\" fill=\"#333333\">{}</text>",
            n(y0),
            n(y1),
            n(y1 - 4.0),
            escape(name)
        );
    }

    // The lines.
    let mut any = false;
    for line in series {
        for seg in &line.segments {
            any = true;
            if let [(t, v)] = seg.as_slice() {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2\" fill=\"{}\"/>",
                    n(sx(*t)),
                    n(sy(*v)),
                    line.color
                );
                continue;
            }
            let points: Vec<String> = seg
                .iter()
                .map(|(t, v)| format!("{},{}", n(sx(*t)), n(sy(*v))))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" points=\"{}\"/>",
                line.color,
                n(line.width),
                points.join(" ")
            );
        }
    }
    if !any {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#999999\" font-size=\"14\">no data</text>",
            n((x0 + x1) / 2.0),
            n((y0 + y1) / 2.0)
        );
    }

    // Legend, right-aligned at the top: the lines, then the fault families
    // that occur.
    // (name, colour, the line's width or None for a fault swatch)
    let mut items: Vec<(String, &str, Option<f64>)> = series
        .iter()
        .map(|l| (l.name.to_string(), l.color, Some(l.width.max(2.0))))
        .collect();
    let mut families: Vec<(&str, &str)> = Vec::new();
    for w in frame.windows {
        let f = fault_family(&w.kind);
        if !families.contains(&f) {
            families.push(f);
        }
    }
    items.extend(families.iter().map(|(f, c)| (f.to_string(), *c, None)));
    let width = |name: &str| 26.0 + 6.5 * name.chars().count() as f64;
    let mut x = x1 - items.iter().map(|(name, _, _)| width(name)).sum::<f64>();
    for (name, color, line_width) in &items {
        if let Some(lw) = line_width {
            let _ = write!(
                s,
                "<line x1=\"{}\" y1=\"12\" x2=\"{}\" y2=\"12\" stroke=\"{color}\" stroke-width=\"{}\"/>",
                n(x),
                n(x + 16.0),
                n(*lw)
            );
        } else {
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"6\" width=\"16\" height=\"12\" fill=\"{color}\" fill-opacity=\"0.3\"/>",
                n(x)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"16\">{}</text>",
            n(x + 20.0),
            escape(name)
        );
        x += width(name);
    }
    s.push_str("</svg>");
    s
}

/// Points of one field of the series, split where a second is missing or
/// (when `needs_samples`) has no receipts (its latency is a placeholder 0).
fn segments(
    series: &[Bucket],
    value: fn(&Bucket) -> f64,
    needs_samples: bool,
) -> Vec<Vec<(f64, f64)>> {
    let mut sorted: Vec<&Bucket> = series.iter().collect();
    sorted.sort_by_key(|b| b.t_s);
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    let mut prev: Option<u64> = None;
    for b in sorted {
        let gap = prev.is_some_and(|p| b.t_s > p + 1);
        prev = Some(b.t_s);
        if gap || (needs_samples && b.received == 0) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if needs_samples && b.received == 0 {
                continue;
            }
        }
        cur.push((b.t_s as f64 + 0.5, clean(value(b))));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The delivery-latency plot: per-second p50 and p99, linear y up to the
/// largest per-second p99.
pub(super) fn latency_svg(
    lat: &LatencyResult,
    x_max_s: f64,
    windows: &[FaultWindow],
    phases: &[(f64, String)],
) -> String {
    let top = lat
        .series
        .iter()
        .filter(|b| b.received > 0)
        .map(|b| clean(b.p99_ms).max(clean(b.p50_ms)))
        .fold(0.0, f64::max);
    let y_max = nice_ceil(top * HEADROOM);
    let note = if top > 0.0 {
        format!("linear y, up to the largest per-second p99 ({top:.1} ms); seconds without receipts left out")
    } else {
        "no receipts".to_string()
    };
    let frame = Frame {
        title: "Delivery latency per second",
        y_label: "latency (ms)",
        note,
        x_max_s,
        y_max,
        windows,
        phases,
    };
    let series = [
        Series {
            name: "p50",
            color: "#2ca02c",
            width: 1.5,
            segments: segments(&lat.series, |b| b.p50_ms, true),
        },
        Series {
            name: "p99",
            color: "#9467bd",
            width: 1.5,
            segments: segments(&lat.series, |b| b.p99_ms, true),
        },
    ];
    render(&frame, &series)
}

/// The throughput plot: sends invoked, sends ok and first receipts, per
/// second.
pub(super) fn throughput_svg(
    series: &[Bucket],
    x_max_s: f64,
    windows: &[FaultWindow],
    phases: &[(f64, String)],
) -> String {
    let top = series
        .iter()
        .map(|b| b.sent.max(b.ok).max(b.received))
        .max()
        .unwrap_or(0) as f64;
    let frame = Frame {
        title: "Throughput per second",
        y_label: "messages/s",
        note: "sends invoked, sends acknowledged ok, first copies received".to_string(),
        x_max_s,
        y_max: nice_ceil(top * HEADROOM),
        windows,
        phases,
    };
    let lines = [
        Series {
            name: "sent/s",
            color: "#bbbbbb",
            width: 4.0,
            segments: segments(series, |b| b.sent as f64, false),
        },
        Series {
            name: "ok/s",
            color: "#2ca02c",
            width: 1.5,
            segments: segments(series, |b| b.ok as f64, false),
        },
        Series {
            name: "received/s",
            color: "#9467bd",
            width: 1.5,
            segments: segments(series, |b| b.received as f64, false),
        },
    ];
    render(&frame, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_clean(svg: &str) {
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
        assert!(!svg.contains("NaN"), "{svg}");
        assert!(!svg.contains("inf"), "{svg}");
    }

    #[test]
    fn empty_series_do_not_panic_or_emit_nan() {
        let lat = LatencyResult::default();
        let svg = latency_svg(&lat, x_max_s(&[], &[], &[]), &[], &[]);
        assert_clean(&svg);
        assert!(svg.contains("no data"));
        let svg = throughput_svg(&[], 0.0, &[], &[]);
        assert_clean(&svg);
    }

    #[test]
    fn non_finite_values_are_drawn_as_zero() {
        let lat = LatencyResult {
            p50_ms: f64::NAN,
            p99_ms: f64::INFINITY,
            series: vec![
                Bucket {
                    t_s: 0,
                    sent: 1,
                    ok: 1,
                    received: 1,
                    p50_ms: f64::NAN,
                    p99_ms: f64::INFINITY,
                },
                Bucket {
                    t_s: 1,
                    sent: 1,
                    ok: 1,
                    received: 1,
                    p50_ms: -3.0,
                    p99_ms: f64::NEG_INFINITY,
                },
            ],
            ..Default::default()
        };
        let w = FaultWindow {
            fault: 1,
            kind: "cut".to_string(),
            nodes: vec![1],
            start_us: 5_000_000,
            end_us: 1_000,
        };
        let svg = latency_svg(
            &lat,
            f64::NAN,
            std::slice::from_ref(&w),
            &[(f64::NAN, "heal".to_string())],
        );
        assert_clean(&svg);
        assert!(svg.contains("class=\"fault\""));
    }

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_step(100.0, 10), 10.0);
        assert_eq!(nice_step(30.0, 10), 5.0);
        assert_eq!(nice_step(0.0, 10), 1.0);
        assert_eq!(nice_ceil(313.0), 400.0);
        assert_eq!(nice_ceil(f64::NAN), 1.0);
        assert_eq!(nice_ceil(0.0), 1.0);
        let (_, t) = ticks(30.0, 10);
        assert_eq!(t.first(), Some(&0.0));
        assert_eq!(t.last(), Some(&30.0));
    }

    #[test]
    fn latency_segments_skip_seconds_without_receipts() {
        let b = |t_s, received| Bucket {
            t_s,
            sent: 1,
            ok: 1,
            received,
            p50_ms: 1.0,
            p99_ms: 2.0,
        };
        let series = vec![b(0, 1), b(1, 1), b(2, 0), b(3, 1), b(5, 1)];
        let segs = segments(&series, |b| b.p50_ms, true);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0].len(), 2);
        let segs = segments(&series, |b| b.sent as f64, false);
        assert_eq!(segs.len(), 2);
    }

    #[test]
    fn fault_families() {
        assert_eq!(fault_family("kill").1, "#d62728");
        assert_eq!(fault_family("pause").0, "pause");
        assert_eq!(fault_family("partition-halves").0, "partition");
        assert_eq!(fault_family("cut").0, "partition");
        assert_eq!(fault_family("clock-skew").0, "other");
    }
}
