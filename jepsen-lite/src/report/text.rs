//! Plain-text output: the markdown matrix over many runs and the summary
//! printed at the end of a run.
use std::fmt::Write;

use super::{dup_same_sid, ms, percent, verdict_label, yes_no};
use crate::results::Results;

/// A markdown table cell: pipes escaped, line breaks flattened.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// `0`, or `3 (3 sid)`: duplicates and how many kept their stanza-id.
fn duplicated(r: &Results) -> String {
    let d = r.queue.duplicated.len();
    if d == 0 {
        "0".to_string()
    } else {
        format!("{d} ({} sid)", dup_same_sid(r))
    }
}

/// A markdown table of runs, one row per `(run directory name, results)`,
/// then a line totalling the runs and their verdicts.
pub fn matrix_table(rows: &[(String, Results)]) -> String {
    let mut s = String::new();
    s.push_str(
        "| run | nodes | nemesis | seed | ops | ok sends | lost | unexpected | duplicated \
         | recovered | failed-but-delivered | bounced-after-ack | linearizable | converged \
         | verdict | failing classes |\n",
    );
    s.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|\n");
    let (mut pass, mut fail, mut skipped) = (0usize, 0usize, 0usize);
    for (name, r) in rows {
        let verdict = verdict_label(r);
        match verdict {
            "PASS" => pass += 1,
            "FAIL" => fail += 1,
            _ => skipped += 1,
        }
        let verdict_cell = if verdict == "PASS" {
            verdict.to_string()
        } else {
            format!("**{verdict}**")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(name),
            r.run.nodes,
            cell(&r.run.nemesis),
            r.run.seed,
            r.queue.sent.saturating_add(r.register.ops),
            r.queue.ok,
            r.queue.lost.len(),
            r.queue.unexpected.len(),
            duplicated(r),
            r.queue.recovered,
            r.queue.failed_but_delivered.len(),
            r.queue.acked_then_bounced.len(),
            yes_no(r.register.linearizable),
            yes_no(r.convergence.converged),
            verdict_cell,
            crate::checker::failure_classes(r).join(", "),
        );
    }
    let _ = writeln!(
        s,
        "\n**{} runs: {pass} PASS, {fail} FAIL, {skipped} SKIPPED-PARTITIONS**",
        rows.len()
    );
    s
}

/// A few lines for the terminal at the end of a run: the verdict, the
/// counts and the failures.
pub fn text_summary(r: &Results) -> String {
    let q = &r.queue;
    let g = &r.register;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "verdict: {}  ({} nodes, nemesis {}, seed {}, {} s, net {})",
        verdict_label(r),
        r.run.nodes,
        r.run.nemesis,
        r.run.seed,
        r.run.time_s,
        r.run.net
    );
    if r.run.partitions_skipped {
        s.push_str("!!! PARTITIONS SKIPPED: network namespaces unavailable; only kills and pauses ran; not a pass\n");
    }
    let _ = writeln!(
        s,
        "queue: {} sent, {} ok, {} fail, {} unknown, {} received; {} lost, {} unexpected, \
         {} duplicated, {} recovered, {} acked-then-bounced, {} failed-but-delivered, \
         {} order violations, {} queues undrained",
        q.sent,
        q.ok,
        q.fail,
        q.unknown,
        q.received,
        q.lost.len(),
        q.unexpected.len(),
        duplicated(r),
        q.recovered,
        q.acked_then_bounced.len(),
        q.failed_but_delivered.len(),
        q.order_violations.len(),
        q.undrained.len()
    );
    let _ = writeln!(
        s,
        "register: {} ops on {} keys, linearizable {} ({} violations)",
        g.ops,
        g.keys,
        yes_no(g.linearizable),
        g.violations.len()
    );
    let _ = writeln!(
        s,
        "roster: {} users, {} pairs, {} disagreements; convergence: {} after {} ms",
        r.roster.users,
        r.roster.pairs,
        r.roster.disagreements.len(),
        if r.convergence.converged {
            "converged"
        } else {
            "NOT converged"
        },
        r.convergence.waited_ms
    );
    let _ = writeln!(
        s,
        "availability: {} ok in faults, {} outside; latency p50 {}, p99 {}, max {}",
        if r.availability.sends_in_faults == 0 {
            "n/a".to_string()
        } else {
            percent(r.availability.ok_in_faults, 1)
        },
        percent(r.availability.ok_outside, 1),
        ms(r.latency.p50_ms),
        ms(r.latency.p99_ms),
        ms(r.latency.max_ms)
    );
    for f in &r.verdict.failures {
        let _ = writeln!(s, "FAIL: {f}");
    }
    for w in &r.verdict.warnings {
        let _ = writeln!(s, "warn: {w}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_results;
    use crate::results::Verdict;

    #[test]
    fn matrix_has_header_rows_and_totals() {
        let failing = sample_results();
        let mut passing = sample_results();
        passing.verdict = Verdict {
            valid: true,
            failures: vec![],
            warnings: vec![],
        };
        let mut skipped = passing.clone();
        skipped.run.partitions_skipped = true;
        skipped.run.nemesis = "partition|odd".to_string();
        let rows = vec![
            ("run-a".to_string(), failing),
            ("run-b".to_string(), passing),
            ("run-c".to_string(), skipped),
        ];
        let t = matrix_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("| run | nodes | nemesis | seed | ops |"));
        assert!(lines[0].contains("| verdict |"));
        assert!(lines[1].starts_with("|---"));
        let cols = |l: &str| l.matches(" | ").count();
        let body: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("| run-"))
            .collect();
        assert_eq!(body.len(), 3);
        for l in &body {
            assert_eq!(cols(l), cols(lines[0]), "{l}");
        }
        assert!(body[0].contains("| **FAIL** | lost"), "{}", body[0]);
        // ops = 100 sends + 40 register ops; one duplicate kept its stanza-id.
        assert!(
            body[0].contains("| 140 | 95 | 1 | 0 | 1 (1 sid) | 2 | 0 | 0 | no | yes |"),
            "{}",
            body[0]
        );
        assert!(body[1].ends_with("| PASS |  |"), "{}", body[1]);
        assert!(
            body[2].contains("| **SKIPPED-PARTITIONS** | "),
            "{}",
            body[2]
        );
        assert!(body[2].contains("partition\\|odd"));
        assert!(t
            .trim_end()
            .ends_with("**3 runs: 1 PASS, 1 FAIL, 1 SKIPPED-PARTITIONS**"));
        assert!(matrix_table(&[]).contains("**0 runs: 0 PASS, 0 FAIL, 0 SKIPPED-PARTITIONS**"));
    }

    #[test]
    fn summary_has_verdict_counts_and_failures() {
        let s = text_summary(&sample_results());
        assert!(s.starts_with("verdict: FAIL"));
        assert!(s.contains("100 sent, 95 ok"));
        assert!(s.contains("1 lost"));
        assert!(s.contains("linearizable no (1 violations)"));
        assert!(s.contains("FAIL: 1 acknowledged message lost"));
        assert!(s.lines().count() <= 10);
    }
}
