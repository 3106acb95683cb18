//! The report of a run: `report.html` (self-contained: inline CSS, inline
//! SVG plots, also written as `latency.svg` and `throughput.svg`), the
//! markdown matrix table over many runs, and the short terminal summary.
//!
//! Everything here is a pure function of a [`Results`] and the run's
//! history, except [`write_report`], which writes the files.
//!
//! # Layout
//! - `html`: the HTML page (verdict, summary, anomalies, plots, nemesis log).
//! - `plot`: the hand-made SVG line plots with fault windows shaded.
//! - `text`: [`matrix_table`] and [`text_summary`].
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::history::Entry;
use crate::results::{FaultWindow, Results};

mod html;
mod plot;
mod text;

pub use text::{matrix_table, text_summary};

/// Writes `dir/report.html`, `dir/latency.svg` and `dir/throughput.svg`
/// (creating `dir` if needed) and returns the HTML file's path.
pub fn write_report(dir: &Path, results: &Results, history: &[Entry]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let page = html::build(results, history);
    let svg_file = |svg: &str| format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{svg}\n");
    for (name, svg) in [
        ("latency.svg", &page.latency_svg),
        ("throughput.svg", &page.throughput_svg),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, svg_file(svg))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let path = dir.join("report.html");
    std::fs::write(&path, &page.html).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Escapes text for HTML and XML (SVG), in element content and in quoted
/// attribute values alike.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The run's verdict as one word: `FAIL` when the verdict is invalid for a
/// reason other than skipped partitions, `SKIPPED-PARTITIONS` when the
/// schedule's partitions could not run (such a run is not a pass), else
/// `PASS`.
pub fn verdict_label(r: &Results) -> &'static str {
    let real_failure = !r.verdict.valid
        && (!r.run.partitions_skipped
            || r.verdict
                .failures
                .iter()
                .any(|f| !f.to_ascii_lowercase().contains("partition")));
    if real_failure {
        "FAIL"
    } else if r.run.partitions_skipped {
        "SKIPPED-PARTITIONS"
    } else if r.verdict.valid {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The fault windows of a history: the checker's, so the report and the
/// availability figures can never disagree.
pub(crate) fn fault_windows(history: &[Entry]) -> Vec<FaultWindow> {
    crate::checker::fault_windows(history)
}

/// Seconds with three decimals, from microseconds.
fn secs3(us: u64) -> String {
    format!("{:.3}", us as f64 / 1e6)
}

/// Seconds with one decimal, from microseconds.
fn secs1(us: u64) -> String {
    format!("{:.1}", us as f64 / 1e6)
}

/// `n1,n3`, or `-` for none.
fn node_list(nodes: &[u64]) -> String {
    if nodes.is_empty() {
        return "-".to_string();
    }
    nodes
        .iter()
        .map(|n| format!("n{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `yes` / `no`.
fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A fraction as a percentage, `n/a` when it is not a number.
fn percent(frac: f64, decimals: usize) -> String {
    if frac.is_finite() {
        format!("{:.*}%", decimals, frac * 100.0)
    } else {
        "n/a".to_string()
    }
}

/// Milliseconds for display, `n/a` when not a number.
fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1} ms")
    } else {
        "n/a".to_string()
    }
}

/// How many duplicates kept one stanza-id over all their copies.
fn dup_same_sid(r: &Results) -> usize {
    r.queue
        .duplicated
        .iter()
        .filter(|d| d.same_stanza_id)
        .count()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::history::MemberState;
    use crate::results::*;

    /// A hand-made, failing run: one lost message at 12.5 s during a kill
    /// of n2 (10 s..14 s), one duplicate, one register violation.
    pub(crate) fn sample_results() -> Results {
        let m = |id: &str, sent: u64, at: u64| MsgRef {
            id: id.to_string(),
            from: "u1@example.org".to_string(),
            to: "u2@example.org".to_string(),
            sent_us: sent,
            node: 2,
            at_us: at,
        };
        Results {
            run: RunInfo {
                nodes: 3,
                nemesis: "kill".to_string(),
                seed: 42,
                time_s: 30,
                net: "loopback".to_string(),
                partitions_skipped: false,
                command: "jepsen-lite run --nodes 3 --nemesis kill --seed 42 <x>".to_string(),
                started: "2025-01-01T00:00:00Z".to_string(),
            },
            verdict: Verdict {
                valid: false,
                failures: vec!["1 acknowledged message lost".to_string()],
                warnings: vec!["1 duplicate <kept stanza-id>".to_string()],
            },
            queue: QueueResult {
                sent: 100,
                ok: 95,
                fail: 2,
                unknown: 3,
                received: 96,
                lost: vec![m("msg-lost-7", 12_400_000, 12_500_000)],
                unexpected: vec![],
                duplicated: vec![Duplicate {
                    msg: m("msg-dup-9", 3_000_000, 3_100_000),
                    copies: 2,
                    same_stanza_id: true,
                    stanza_ids: vec![Some("s1".to_string()), Some("s1".to_string())],
                }],
                recovered: 2,
                unknown_lost: 1,
                undrained: vec![],
                acked_then_bounced: vec![],
                failed_but_delivered: vec![],
                order_violations: (0..25)
                    .map(|i| OrderViolation {
                        sender: "u1@example.org".to_string(),
                        session: 1,
                        earlier: m(&format!("e{i}"), 1_000, 2_000),
                        later: m(&format!("l{i}"), 1_500, 1_800),
                    })
                    .collect(),
                duplicate_rate: 0.0104,
            },
            register: RegisterResult {
                ops: 40,
                created: 10,
                exists: 5,
                reads: 20,
                fail: 3,
                unknown: 2,
                keys: 10,
                linearizable: false,
                violations: vec![KeyViolation {
                    key: "acct-3".to_string(),
                    ops: vec![
                        "[11.000s..11.100s] reg-2 create via admin on n1 -> created".to_string(),
                        "[11.200s..11.300s] reg-3 read via admin on n3 -> false".to_string(),
                    ],
                    first_us: 11_000_000,
                    last_us: 11_300_000,
                }],
            },
            roster: RosterResult {
                users: 4,
                pairs: 6,
                unread: vec![],
                disagreements: vec![RosterDisagreement {
                    a: "u1".to_string(),
                    b: "u3".to_string(),
                    a_has: "to".to_string(),
                    b_has: "absent".to_string(),
                }],
            },
            convergence: ConvergenceResult {
                converged: true,
                waited_ms: 1200,
                members: (1..=3)
                    .map(|id| MemberState {
                        id,
                        reachable: true,
                        role: if id == 1 { "leader" } else { "follower" }.to_string(),
                        applied_index: 77,
                        state_digest: "abcdef0123456789abcdef".to_string(),
                    })
                    .collect(),
            },
            availability: Availability {
                sends_in_faults: 30,
                ok_in_faults: 0.8,
                sends_outside: 70,
                ok_outside: 1.0,
            },
            latency: LatencyResult {
                samples: 96,
                p50_ms: 4.0,
                p90_ms: 9.0,
                p99_ms: 250.0,
                max_ms: 900.0,
                series: (0..30)
                    .map(|t| Bucket {
                        t_s: t,
                        sent: 4,
                        ok: if (10..14).contains(&t) { 2 } else { 4 },
                        received: if t == 12 { 0 } else { 3 },
                        p50_ms: if t == 12 { 0.0 } else { 4.0 + t as f64 },
                        p99_ms: if t == 12 { 0.0 } else { 20.0 + 10.0 * t as f64 },
                    })
                    .collect(),
            },
        }
    }

    /// Phases, a kill of n2 at 10 s..14 s, a pause never ended, and a
    /// partition far away from the lost message.
    pub(crate) fn sample_history() -> Vec<Entry> {
        let nem = |t_us, fault, start, kind: &str, nodes: Vec<u64>| Entry::Nemesis {
            t_us,
            fault,
            start,
            kind: kind.to_string(),
            nodes,
            detail: format!("{kind} <detail> & more"),
        };
        vec![
            Entry::Phase {
                t_us: 0,
                name: "setup".to_string(),
            },
            nem(10_000_000, 1, true, "kill", vec![2]),
            nem(14_000_000, 1, false, "kill", vec![2]),
            nem(20_000_000, 2, true, "partition", vec![1, 3]),
            nem(22_000_000, 2, false, "partition", vec![1, 3]),
            nem(24_000_000, 3, true, "pause", vec![3]),
            Entry::Phase {
                t_us: 25_000_000,
                name: "heal".to_string(),
            },
            Entry::Phase {
                t_us: 27_000_000,
                name: "drain".to_string(),
            },
            Entry::Phase {
                t_us: 30_000_000,
                name: "done".to_string(),
            },
        ]
    }

    #[test]
    fn escape_escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
        assert_eq!(escape(""), "");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn fault_windows_pair_and_close_at_end() {
        let w = fault_windows(&sample_history());
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w[0].kind.as_str(), w[0].start_us, w[0].end_us),
            ("kill", 10_000_000, 14_000_000)
        );
        assert_eq!(w[1].nodes, vec![1, 3]);
        // The pause never ended: it lasts to the last entry.
        assert_eq!((w[2].kind.as_str(), w[2].end_us), ("pause", 30_000_000));
        assert!(fault_windows(&[]).is_empty());
    }

    #[test]
    fn verdict_labels() {
        let mut r = sample_results();
        assert_eq!(verdict_label(&r), "FAIL");
        r.verdict = Verdict {
            valid: true,
            failures: vec![],
            warnings: vec![],
        };
        assert_eq!(verdict_label(&r), "PASS");
        r.run.partitions_skipped = true;
        assert_eq!(verdict_label(&r), "SKIPPED-PARTITIONS");
        r.verdict.valid = false;
        r.verdict.failures = vec!["partitions skipped: no network namespaces".to_string()];
        assert_eq!(verdict_label(&r), "SKIPPED-PARTITIONS");
        r.verdict.failures.push("2 messages lost".to_string());
        assert_eq!(verdict_label(&r), "FAIL");
    }

    #[test]
    fn write_report_writes_the_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let out = dir.path().join("run-1");
        let path = write_report(&out, &sample_results(), &sample_history()).unwrap();
        assert_eq!(path, out.join("report.html"));
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("FAIL"));
        assert!(html.contains("msg-lost-7"));
        // The kill of n2 at 10 s is within 5 s of the loss at 12.5 s.
        assert!(html.contains("10.0s kill n2"));
        for name in ["latency.svg", "throughput.svg"] {
            let svg = std::fs::read_to_string(out.join(name)).unwrap();
            assert!(svg.starts_with("<?xml"));
            assert_eq!(svg.matches("<svg").count(), 1);
            assert_eq!(svg.matches("</svg>").count(), 1);
            assert!(svg.contains("class=\"fault\""));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }
}
