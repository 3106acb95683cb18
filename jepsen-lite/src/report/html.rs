//! The HTML page: the verdict first, then the summary, the anomalies with
//! the nemesis events around each, the plots and the nemesis log.
//!
//! Size: over 600 lines of straight-line HTML writing, one section after
//! the other in page order; splitting it would not make any part simpler.
use std::fmt::Write;

use super::{
    dup_same_sid, escape, fault_windows, ms, node_list, percent, plot, secs1, secs3, verdict_label,
    yes_no,
};
use crate::history::Entry;
use crate::results::{FaultWindow, MsgRef, Results};

/// Rows shown per anomaly list.
const MAX_ROWS: usize = 200;
/// Order violations shown.
const MAX_ORDER_ROWS: usize = 20;
/// Nemesis events are shown this far around an anomaly, µs.
const AROUND_US: u64 = 5_000_000;
/// Nemesis events shown per anomaly.
const MAX_EVENTS: usize = 12;

/// The page and its two plots.
pub(super) struct Page {
    pub html: String,
    pub latency_svg: String,
    pub throughput_svg: String,
}

const CSS: &str = "
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
.banner { font-size: 2.4em; font-weight: bold; color: #fff; padding: 0.4em 0.6em; border-radius: 6px; }
.pass { background: #2e7d32; }
.fail { background: #c62828; }
.skip { background: #f9a825; color: #000; }
.warn-banner { background: #fdd835; color: #000; border: 3px solid #f57f17; font-size: 1.3em;
  font-weight: bold; padding: 0.5em; margin-top: 0.6em; border-radius: 6px; }
.run { font-size: 1.05em; }
pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.3em 0 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.summary { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
.summary > div { min-width: 14em; }
.bad { color: #c62828; font-weight: bold; }
.more, .none { color: #666; font-style: italic; }
ul.failures li { color: #c62828; }
ul.warnings li { color: #8d6e00; }
.ev { white-space: nowrap; font-size: 0.9em; }
.ops { margin: 0; padding: 0.2em; background: none; font-size: 0.9em; }
svg { display: block; margin: 0.5em 0 1em 0; max-width: 100%; height: auto; }
";

/// A Nemesis entry, flattened.
struct Event<'a> {
    t_us: u64,
    fault: u64,
    start: bool,
    kind: &'a str,
    nodes: &'a [u64],
    detail: &'a str,
}

fn events(history: &[Entry]) -> Vec<Event<'_>> {
    let mut out: Vec<Event> = history
        .iter()
        .filter_map(|e| match e {
            Entry::Nemesis {
                t_us,
                fault,
                start,
                kind,
                nodes,
                detail,
            } => Some(Event {
                t_us: *t_us,
                fault: *fault,
                start: *start,
                kind,
                nodes,
                detail,
            }),
            _ => None,
        })
        .collect();
    // Stable: events at one instant keep the history's order.
    out.sort_by_key(|e| e.t_us);
    out
}

/// What the anomaly tables need to place an anomaly among the faults.
struct Context<'a> {
    events: Vec<Event<'a>>,
    windows: Vec<FaultWindow>,
}

impl Context<'_> {
    /// The nemesis events within ±5 s of `from_us..=to_us`, as `12.3s kill
    /// n2` (a start) or `14.0s end kill n2`, and the faults active at any
    /// point of it, as one HTML cell's content.
    fn around(&self, from_us: u64, to_us: u64) -> String {
        let (from_us, to_us) = (from_us.min(to_us), from_us.max(to_us));
        let lo = from_us.saturating_sub(AROUND_US);
        let hi = to_us.saturating_add(AROUND_US);
        let first = self.events.partition_point(|e| e.t_us < lo);
        let near: Vec<&Event> = self.events[first..]
            .iter()
            .take_while(|e| e.t_us <= hi)
            .collect();
        let mut parts: Vec<String> = Vec::new();
        let active: Vec<String> = self
            .windows
            .iter()
            .filter(|w| w.start_us <= to_us && from_us <= w.end_us)
            .map(|w| format!("{} {}", w.kind, node_list(&w.nodes)))
            .collect();
        if !active.is_empty() {
            parts.push(format!("<b>during: {}</b>", escape(&active.join("; "))));
        }
        for e in near.iter().take(MAX_EVENTS) {
            parts.push(format!(
                "<span class=\"ev\">{}</span>",
                escape(&event_text(e))
            ));
        }
        if near.len() > MAX_EVENTS {
            parts.push(format!("… {} more", near.len() - MAX_EVENTS));
        }
        if parts.is_empty() {
            "<span class=\"none\">none</span>".to_string()
        } else {
            parts.join("<br>")
        }
    }
}

/// `12.3s kill n2`, `14.0s end kill n2`.
fn event_text(e: &Event) -> String {
    format!(
        "{}s {}{} {}",
        secs1(e.t_us),
        if e.start { "" } else { "end " },
        e.kind,
        node_list(e.nodes)
    )
}

fn td(s: &str) -> String {
    format!("<td>{}</td>", escape(s))
}

fn td_num(v: impl std::fmt::Display) -> String {
    format!("<td class=\"num\">{v}</td>")
}

fn th_row(cols: &[&str]) -> String {
    let mut s = String::from("<tr>");
    for c in cols {
        let _ = write!(s, "<th>{}</th>", escape(c));
    }
    s.push_str("</tr>\n");
    s
}

/// A key/value table for the summary.
fn kv_table(title: &str, rows: &[(&str, String, bool)]) -> String {
    let mut s = format!("<div><h3>{}</h3><table>\n", escape(title));
    for (k, v, bad) in rows {
        let class = if *bad {
            " class=\"num bad\""
        } else {
            " class=\"num\""
        };
        let _ = writeln!(
            s,
            "<tr><th>{}</th><td{class}>{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    s.push_str("</table></div>\n");
    s
}

/// A list of anomalies: a heading with the count, the first `cap` rows,
/// and a line for the rest.
fn anomaly_section<T>(
    out: &mut String,
    title: &str,
    items: &[T],
    cap: usize,
    header: &[&str],
    row: impl Fn(&T) -> String,
) {
    let _ = writeln!(out, "<h3>{}: {}</h3>", escape(title), items.len());
    if items.is_empty() {
        out.push_str("<p class=\"none\">none</p>\n");
        return;
    }
    out.push_str("<table>\n");
    out.push_str(&th_row(header));
    for it in items.iter().take(cap) {
        let _ = writeln!(out, "<tr>{}</tr>", row(it));
    }
    out.push_str("</table>\n");
    if items.len() > cap {
        let _ = writeln!(
            out,
            "<p class=\"more\">... and {} more (see results.json)</p>",
            items.len() - cap
        );
    }
}

const MSG_HEADER: [&str; 7] = [
    "id",
    "from",
    "to",
    "node",
    "sent (s)",
    "anomaly at (s)",
    "nemesis events around it",
];

fn msg_cells(m: &MsgRef, ctx: &Context) -> String {
    format!(
        "{}{}{}{}{}{}<td>{}</td>",
        td(&m.id),
        td(&m.from),
        td(&m.to),
        td(&format!("n{}", m.node)),
        td_num(secs3(m.sent_us)),
        td_num(secs3(m.at_us)),
        ctx.around(m.at_us, m.at_us)
    )
}

/// Builds the page and its plots.
pub(super) fn build(r: &Results, history: &[Entry]) -> Page {
    let windows = fault_windows(history);
    let x_max = plot::x_max_s(&r.latency.series, history, &windows);
    let phases = plot::phases(history);
    let latency_svg = plot::latency_svg(&r.latency, x_max, &windows, &phases);
    let throughput_svg = plot::throughput_svg(&r.latency.series, x_max, &windows, &phases);
    let ctx = Context {
        events: events(history),
        windows,
    };

    let label = verdict_label(r);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>jepsen-lite {label}: {} nodes, {}, seed {}</title>\n<style>{CSS}</style>\n\
         </head>\n<body>\n<h1>jepsen-lite: Starling cluster test</h1>\n",
        r.run.nodes,
        escape(&r.run.nemesis),
        r.run.seed
    );

    // ---- the verdict ----------------------------------------------------
    let (class, text) = match label {
        "PASS" => ("pass", "PASS".to_string()),
        "FAIL" => ("fail", "FAIL".to_string()),
        other => ("skip", format!("{other} (not a pass)")),
    };
    let _ = writeln!(
        h,
        "<div class=\"banner {class}\" id=\"verdict\">{}</div>",
        escape(&text)
    );
    if r.run.partitions_skipped {
        h.push_str(
            "<div class=\"warn-banner\">⚠ PARTITIONS SKIPPED: the schedule needed network \
             partitions but network namespaces were unavailable, so only kills and pauses ran. \
             This run does not count as a pass.</div>\n",
        );
    }
    let _ = writeln!(
        h,
        "<p class=\"run\"><b>{}</b> nodes · nemesis <b>{}</b> · seed <b>{}</b> · \
         <b>{}</b> s of faults · net <b>{}</b> · started {}</p>",
        r.run.nodes,
        escape(&r.run.nemesis),
        r.run.seed,
        r.run.time_s,
        escape(&r.run.net),
        escape(&r.run.started)
    );
    let _ = writeln!(
        h,
        "<p>Reproduce with:</p>\n<pre><code>{}</code></pre>",
        escape(&r.run.command)
    );
    for (title, class, items) in [
        ("Failures", "failures", &r.verdict.failures),
        ("Warnings", "warnings", &r.verdict.warnings),
    ] {
        let _ = writeln!(h, "<h3>{title}: {}</h3>", items.len());
        if items.is_empty() {
            h.push_str("<p class=\"none\">none</p>\n");
        } else {
            let _ = writeln!(h, "<ul class=\"{class}\">");
            for f in items {
                let _ = writeln!(h, "<li>{}</li>", escape(f));
            }
            h.push_str("</ul>\n");
        }
    }

    // ---- summary --------------------------------------------------------
    h.push_str("<h2>Summary</h2>\n<div class=\"summary\">\n");
    let q = &r.queue;
    let n = |v: usize| v.to_string();
    h.push_str(&kv_table(
        "Queue",
        &[
            ("sent", q.sent.to_string(), false),
            ("ok", q.ok.to_string(), false),
            ("fail", q.fail.to_string(), false),
            ("unknown", q.unknown.to_string(), false),
            ("received (distinct)", q.received.to_string(), false),
            ("lost", n(q.lost.len()), !q.lost.is_empty()),
            (
                "unexpected",
                n(q.unexpected.len()),
                !q.unexpected.is_empty(),
            ),
            (
                "duplicated",
                format!(
                    "{} ({} kept their stanza-id)",
                    q.duplicated.len(),
                    dup_same_sid(r)
                ),
                q.duplicated.len() > dup_same_sid(r),
            ),
            (
                "recovered (unknown, received)",
                q.recovered.to_string(),
                false,
            ),
            ("unknown, never received", q.unknown_lost.to_string(), false),
            (
                "acked then bounced",
                n(q.acked_then_bounced.len()),
                !q.acked_then_bounced.is_empty(),
            ),
            (
                "failed but delivered",
                n(q.failed_but_delivered.len()),
                !q.failed_but_delivered.is_empty(),
            ),
            (
                "order violations",
                n(q.order_violations.len()),
                !q.order_violations.is_empty(),
            ),
            (
                "offline queues left undrained",
                q.undrained
                    .iter()
                    .map(|(j, d)| format!("{j}: {d}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                !q.undrained.is_empty(),
            ),
            ("duplicate rate", percent(q.duplicate_rate, 2), false),
        ],
    ));
    let g = &r.register;
    h.push_str(&kv_table(
        "Register (account creation)",
        &[
            ("ops", g.ops.to_string(), false),
            ("created", g.created.to_string(), false),
            ("exists", g.exists.to_string(), false),
            ("reads", g.reads.to_string(), false),
            ("fail", g.fail.to_string(), false),
            ("unknown", g.unknown.to_string(), false),
            ("keys", g.keys.to_string(), false),
            (
                "linearizable",
                yes_no(g.linearizable).to_string(),
                !g.linearizable,
            ),
        ],
    ));
    let ro = &r.roster;
    h.push_str(&kv_table(
        "Roster",
        &[
            ("users", ro.users.to_string(), false),
            ("pairs", ro.pairs.to_string(), false),
            ("unread rosters", n(ro.unread.len()), !ro.unread.is_empty()),
            (
                "disagreements",
                n(ro.disagreements.len()),
                !ro.disagreements.is_empty(),
            ),
        ],
    ));
    let a = &r.availability;
    h.push_str(&kv_table(
        "Availability (sends ok)",
        &[
            (
                "in faults",
                if a.sends_in_faults == 0 {
                    "no sends during faults".to_string()
                } else {
                    format!("{} of {}", percent(a.ok_in_faults, 1), a.sends_in_faults)
                },
                false,
            ),
            (
                "outside faults",
                format!("{} of {}", percent(a.ok_outside, 1), a.sends_outside),
                false,
            ),
        ],
    ));
    let l = &r.latency;
    h.push_str(&kv_table(
        "Delivery latency",
        &[
            ("samples", l.samples.to_string(), false),
            ("p50", ms(l.p50_ms), false),
            ("p90", ms(l.p90_ms), false),
            ("p99", ms(l.p99_ms), false),
            ("max", ms(l.max_ms), false),
        ],
    ));
    let c = &r.convergence;
    let mut conv = kv_table(
        "Convergence",
        &[
            ("converged", yes_no(c.converged).to_string(), !c.converged),
            ("waited", format!("{} ms", c.waited_ms), false),
        ],
    );
    // The members' table goes inside the convergence box.
    conv.truncate(conv.len() - "</div>\n".len());
    if !c.members.is_empty() {
        conv.push_str("<table>\n");
        conv.push_str(&th_row(&["id", "role", "reachable", "applied", "digest"]));
        for m in &c.members {
            let digest: String = m.state_digest.chars().take(12).collect();
            let _ = writeln!(
                conv,
                "<tr>{}{}{}{}{}</tr>",
                td(&format!("n{}", m.id)),
                td(&m.role),
                td(yes_no(m.reachable)),
                td_num(m.applied_index),
                format_args!("<td><code>{}</code></td>", escape(&digest)),
            );
        }
        conv.push_str("</table>\n");
    }
    conv.push_str("</div>\n");
    h.push_str(&conv);
    h.push_str("</div>\n");

    // ---- anomalies ------------------------------------------------------
    h.push_str("<h2>Anomalies</h2>\n");
    for (title, list) in [
        ("Lost (acknowledged, never received)", &q.lost),
        ("Unexpected (received, never sent)", &q.unexpected),
    ] {
        anomaly_section(&mut h, title, list, MAX_ROWS, &MSG_HEADER, |m| {
            msg_cells(m, &ctx)
        });
    }
    let mut dup_header: Vec<&str> = MSG_HEADER[..6].to_vec();
    dup_header.extend(["copies", "same stanza-id", "stanza-ids", MSG_HEADER[6]]);
    anomaly_section(
        &mut h,
        "Duplicated (received more than once)",
        &q.duplicated,
        MAX_ROWS,
        &dup_header,
        |d| {
            let m = &d.msg;
            let sids: Vec<&str> = d
                .stanza_ids
                .iter()
                .map(|s| s.as_deref().unwrap_or("-"))
                .collect();
            format!(
                "{}{}{}{}{}{}{}{}{}<td>{}</td>",
                td(&m.id),
                td(&m.from),
                td(&m.to),
                td(&format!("n{}", m.node)),
                td_num(secs3(m.sent_us)),
                td_num(secs3(m.at_us)),
                td_num(d.copies),
                td(yes_no(d.same_stanza_id)),
                td(&sids.join(", ")),
                ctx.around(m.at_us, m.at_us)
            )
        },
    );
    for (title, list) in [
        ("Acknowledged, then bounced", &q.acked_then_bounced),
        ("Failed, but delivered", &q.failed_but_delivered),
    ] {
        anomaly_section(&mut h, title, list, MAX_ROWS, &MSG_HEADER, |m| {
            msg_cells(m, &ctx)
        });
    }
    anomaly_section(
        &mut h,
        "Register violations (no linearization)",
        &g.violations,
        MAX_ROWS,
        &[
            "key",
            "first (s)",
            "last (s)",
            "operations",
            "nemesis events around it",
        ],
        |v| {
            format!(
                "{}{}{}<td><pre class=\"ops\">{}</pre></td><td>{}</td>",
                td(&v.key),
                td_num(secs3(v.first_us)),
                td_num(secs3(v.last_us)),
                escape(&v.ops.join("\n")),
                ctx.around(v.first_us, v.last_us)
            )
        },
    );
    anomaly_section(
        &mut h,
        "Roster disagreements",
        &ro.disagreements,
        MAX_ROWS,
        &["a", "b", "a has b as", "b has a as"],
        |d| format!("{}{}{}{}", td(&d.a), td(&d.b), td(&d.a_has), td(&d.b_has)),
    );
    if !ro.unread.is_empty() {
        let _ = writeln!(
            h,
            "<p>Rosters that could not be read: {}</p>",
            escape(&ro.unread.join(", "))
        );
    }
    anomaly_section(
        &mut h,
        "Order violations (sent earlier, received later)",
        &q.order_violations,
        MAX_ORDER_ROWS,
        &[
            "sender (from)",
            "session",
            "to",
            "node",
            "earlier id",
            "earlier sent/received (s)",
            "later id",
            "later sent/received (s)",
            "nemesis events around it",
        ],
        |o| {
            // One value, or `earlier / later` when the two differ.
            let both = |a: String, b: String| if a == b { a } else { format!("{a} / {b}") };
            format!(
                "{}{}{}{}{}{}{}{}<td>{}</td>",
                td(&o.sender),
                td_num(o.session),
                td(&both(o.earlier.to.clone(), o.later.to.clone())),
                td(&both(
                    format!("n{}", o.earlier.node),
                    format!("n{}", o.later.node)
                )),
                td(&o.earlier.id),
                td_num(format!(
                    "{} / {}",
                    secs3(o.earlier.sent_us),
                    secs3(o.earlier.at_us)
                )),
                td(&o.later.id),
                td_num(format!(
                    "{} / {}",
                    secs3(o.later.sent_us),
                    secs3(o.later.at_us)
                )),
                ctx.around(o.earlier.at_us, o.later.at_us)
            )
        },
    );

    // ---- plots ----------------------------------------------------------
    h.push_str("<h2>Plots</h2>\n");
    h.push_str(
        "<p>Fault windows shaded (kill red, pause orange, partition/cut blue, other grey); \
         dashed lines mark the heal and drain phases.</p>\n",
    );
    h.push_str(&latency_svg);
    h.push('\n');
    h.push_str(&throughput_svg);
    h.push('\n');

    // ---- nemesis log ----------------------------------------------------
    let _ = writeln!(h, "<h2>Nemesis log: {} events</h2>", ctx.events.len());
    if ctx.events.is_empty() {
        h.push_str("<p class=\"none\">no nemesis events</p>\n");
    } else {
        h.push_str("<table>\n");
        h.push_str(&th_row(&[
            "time (s)", "fault", "", "kind", "nodes", "detail",
        ]));
        for e in &ctx.events {
            let _ = writeln!(
                h,
                "<tr>{}{}{}{}{}{}</tr>",
                td_num(secs3(e.t_us)),
                td_num(e.fault),
                td(if e.start { "start" } else { "end" }),
                td(e.kind),
                td(&node_list(e.nodes)),
                td(e.detail)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body>\n</html>\n");

    Page {
        html: h,
        latency_svg,
        throughput_svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{sample_history, sample_results};

    #[test]
    fn page_has_verdict_anomaly_and_nearby_nemesis() {
        let r = sample_results();
        let hist = sample_history();
        let page = build(&r, &hist);
        let h = &page.html;
        // Verdict first.
        let verdict = h.find("id=\"verdict\">FAIL<").unwrap();
        assert!(verdict < h.find("<h2>Summary").unwrap());
        assert!(h.contains("1 acknowledged message lost"));
        assert!(h.contains("1 duplicate &lt;kept stanza-id&gt;"));
        assert!(
            h.contains("<code>jepsen-lite run --nodes 3 --nemesis kill --seed 42 &lt;x&gt;</code>")
        );
        assert!(!h.contains("PARTITIONS SKIPPED"));

        // The lost message's row names the kill around it, not the far partition.
        let row_start = h.find("<td>msg-lost-7</td>").unwrap();
        let row = &h[row_start..row_start + h[row_start..].find("</tr>").unwrap()];
        assert!(row.contains("12.500"), "{row}");
        assert!(row.contains("10.0s kill n2"), "{row}");
        assert!(row.contains("14.0s end kill n2"), "{row}");
        assert!(row.contains("during: kill n2"), "{row}");
        assert!(!row.contains("partition"), "{row}");

        // The register violation's window (11.0..11.3 s) gets the kill too.
        let row_start = h.find("<td>acct-3</td>").unwrap();
        let row = &h[row_start..row_start + h[row_start..].find("</tr>").unwrap()];
        assert!(
            row.contains("reg-2 create via admin on n1 -&gt; created"),
            "{row}"
        );
        assert!(row.contains("10.0s kill n2"), "{row}");

        // Order violations capped at 20.
        assert!(h.contains("<td>e19</td>"));
        assert!(!h.contains("<td>e20</td>"));
        assert!(h.contains("... and 5 more (see results.json)"));

        // Summary bits.
        assert!(h.contains("1 (1 kept their stanza-id)"));
        assert!(h.contains("1.04%"));
        assert!(h.contains("<code>abcdef012345</code>"));
        assert!(h.contains("80.0% of 30"));

        // Nemesis log, escaped.
        assert!(h.contains("kill &lt;detail&gt; &amp; more"));
        assert_eq!(h.matches("<td>start</td>").count(), 3);
        assert_eq!(h.matches("<td>end</td>").count(), 2);

        // Well-formed SVG, inline, with the three fault windows and two phases.
        assert_eq!(h.matches("<svg").count(), 2);
        assert_eq!(h.matches("<svg").count(), h.matches("</svg>").count());
        for svg in [&page.latency_svg, &page.throughput_svg] {
            assert_eq!(svg.matches("class=\"fault\"").count(), 3);
            assert_eq!(svg.matches("class=\"phase\"").count(), 2);
            assert!(svg.contains("kill n2"));
            assert!(svg.contains("partition n1,n3"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
        assert!(page.latency_svg.contains("p99"));
        assert!(page.throughput_svg.contains("received/s"));
        // Order matters: summary, anomalies, plots, nemesis log.
        let pos = |s: &str| h.find(s).unwrap();
        assert!(pos("<h2>Summary") < pos("<h2>Anomalies"));
        assert!(pos("<h2>Anomalies") < pos("<h2>Plots"));
        assert!(pos("<h2>Plots") < pos("<h2>Nemesis log"));
    }

    #[test]
    fn partitions_skipped_banner() {
        let mut r = sample_results();
        r.run.partitions_skipped = true;
        r.verdict.valid = true;
        r.verdict.failures.clear();
        let page = build(&r, &[]);
        assert!(page.html.contains("PARTITIONS SKIPPED"));
        assert!(page.html.contains("SKIPPED-PARTITIONS (not a pass)"));
    }

    #[test]
    fn empty_results_and_history_do_not_panic() {
        let mut r = sample_results();
        r.queue = Default::default();
        r.queue.duplicate_rate = f64::NAN;
        r.register = Default::default();
        r.roster = Default::default();
        r.convergence = Default::default();
        r.availability = Default::default();
        r.availability.ok_in_faults = f64::NAN;
        r.latency = Default::default();
        let page = build(&r, &[]);
        for svg in [&page.latency_svg, &page.throughput_svg] {
            assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
        assert!(!page.html.contains("NaN"));
        assert!(page.html.contains("no nemesis events"));
    }
}
