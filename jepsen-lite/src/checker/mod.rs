//! The checkers: pure functions of a history that fill `results.json`.
//!
//! [`check`] runs them all and builds the verdict; [`fault_windows`] pairs
//! the nemesis events. The checkers themselves live in:
//! - [`queue`]: Jepsen's total-queue (lost, unexpected, duplicated,
//!   recovered) plus acked-then-bounced, failed-but-delivered and order;
//! - [`linear`]: linearizability of account creation, per account;
//! - [`roster`]: RFC 6121 roster agreement between subscribed pairs;
//! - [`stats`]: availability in and out of faults, delivery latency.
//!
//! This file also owns the convergence result (the last `Convergence`
//! entry) and the verdict's wording.
use std::collections::HashMap;

use crate::history::Entry;
use crate::results::{
    ConvergenceResult, FaultWindow, MsgRef, QueueResult, RegisterResult, Results, RosterResult,
    RunInfo, Verdict,
};

#[cfg(test)]
mod fixture;
pub mod linear;
pub mod queue;
pub mod roster;
pub mod stats;

/// A duplicate rate (extra copies / distinct ids received) at or above this
/// fails the run even when every copy kept its stanza-id.
pub const DUPLICATE_RATE_LIMIT: f64 = 0.001;

/// How many ids a verdict line names before "and N more".
const IDS_NAMED: usize = 5;

/// Runs every checker over `history` and builds the verdict.
pub fn check(history: &[Entry], run: RunInfo) -> Results {
    let msgs = queue::index(history);
    let q = queue::check_queue(&msgs);
    let register = linear::check_register(history);
    let has_roster = roster::has_roster_entries(history);
    let roster = roster::check_roster(history);
    let convergence = last_convergence(history);
    let windows = fault_windows(history);
    let availability = stats::availability(&msgs, &windows);
    let latency = stats::latency(&msgs, history.iter().map(Entry::t_us).max());

    let mut q = q;
    q.result.undrained = undrained(history);
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    queue_verdict(&q, &mut failures, &mut warnings);
    if !q.result.undrained.is_empty() {
        let names: Vec<String> = q
            .result
            .undrained
            .iter()
            .map(|(j, d)| format!("{j} ({d})"))
            .collect();
        failures.push(format!(
            "{} offline queues still hold messages after every recipient drained: {}",
            names.len(),
            name_some(names.iter().map(String::as_str))
        ));
    }
    register_verdict(&register, &mut failures);
    match &convergence {
        None => failures.push("no convergence check recorded".to_string()),
        Some(c) if !c.converged => failures.push(convergence_line(c)),
        Some(_) => {}
    }
    if has_roster {
        roster_verdict(&roster, &mut failures);
    }
    if run.partitions_skipped {
        failures.push("partition schedule skipped: network namespaces unavailable".to_string());
    }
    Results {
        run,
        verdict: Verdict {
            valid: failures.is_empty(),
            failures,
            warnings,
        },
        queue: q.result,
        register,
        roster,
        convergence: convergence.unwrap_or_default(),
        availability,
        latency,
    }
}

/// Non-empty offline queues in the last `QueuesAfterDrain` entry.
fn undrained(history: &[Entry]) -> Vec<(String, u64)> {
    history
        .iter()
        .rev()
        .find_map(|e| match e {
            Entry::QueuesAfterDrain { queues, .. } => Some(
                queues
                    .iter()
                    .filter(|q| q.depth > 0)
                    .map(|q| (q.jid.clone(), q.depth))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// Every anomaly class a run's verdict fails on, by name, for callers that
/// must tell them apart (`--tolerate` in CI while a known bug is open):
/// `lost`, `undrained`, `unexpected`, `acked-then-bounced`, `failed-but-delivered`,
/// `duplicate-without-stanza-id`, `duplicate-rate`, `nonlinearizable`,
/// `not-converged`, `roster`, `partitions-skipped`, and `node-crash` /
/// `not-ready` for the runner's own failure lines.
pub fn failure_classes(r: &Results) -> Vec<&'static str> {
    if r.verdict.valid {
        return Vec::new();
    }
    let q = &r.queue;
    let mut c = Vec::new();
    let mut add = |cond: bool, name: &'static str| {
        if cond {
            c.push(name);
        }
    };
    add(!q.lost.is_empty(), "lost");
    add(!q.undrained.is_empty(), "undrained");
    add(!q.unexpected.is_empty(), "unexpected");
    add(!q.acked_then_bounced.is_empty(), "acked-then-bounced");
    add(!q.failed_but_delivered.is_empty(), "failed-but-delivered");
    add(
        q.duplicated.iter().any(|d| !d.same_stanza_id),
        "duplicate-without-stanza-id",
    );
    add(q.duplicate_rate >= DUPLICATE_RATE_LIMIT, "duplicate-rate");
    add(!r.register.linearizable, "nonlinearizable");
    add(
        r.verdict
            .failures
            .iter()
            .any(|f| f.starts_with("cluster did not converge") || f.starts_with("no convergence")),
        "not-converged",
    );
    add(
        !r.roster.disagreements.is_empty() || !r.roster.unread.is_empty(),
        "roster",
    );
    add(r.run.partitions_skipped, "partitions-skipped");
    add(
        r.verdict
            .failures
            .iter()
            .any(|f| f.contains("exited on its own")),
        "node-crash",
    );
    add(
        r.verdict
            .failures
            .iter()
            .any(|f| f.starts_with("cluster not ready")),
        "not-ready",
    );
    if c.is_empty() && !r.verdict.valid {
        c.push("other");
    }
    c
}

/// The fault windows of `history`: each `Nemesis` start paired with the
/// end of the same `fault` id (wherever the end was recorded: concurrent
/// writers may interleave). A fault never ended lasts until the last
/// entry's time; an end without a start is ignored; a repeated start or
/// end of one id counts once (the first). In start order.
pub fn fault_windows(history: &[Entry]) -> Vec<FaultWindow> {
    let end_of_run = history.iter().map(Entry::t_us).max().unwrap_or(0);
    let mut windows: Vec<FaultWindow> = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut ends: HashMap<u64, u64> = HashMap::new();
    for e in history {
        let Entry::Nemesis {
            t_us,
            fault,
            start,
            kind,
            nodes,
            ..
        } = e
        else {
            continue;
        };
        if !*start {
            ends.entry(*fault).or_insert(*t_us);
        } else if !seen.contains_key(fault) {
            seen.insert(*fault, windows.len());
            windows.push(FaultWindow {
                fault: *fault,
                kind: kind.clone(),
                nodes: nodes.clone(),
                start_us: *t_us,
                end_us: end_of_run,
            });
        }
    }
    for w in &mut windows {
        if let Some(end) = ends.get(&w.fault) {
            w.end_us = (*end).max(w.start_us);
        }
    }
    windows.sort_by_key(|w| w.start_us);
    windows
}

/// The last `Convergence` entry, if any.
fn last_convergence(history: &[Entry]) -> Option<ConvergenceResult> {
    history.iter().rev().find_map(|e| match e {
        Entry::Convergence {
            converged,
            waited_ms,
            members,
            ..
        } => Some(ConvergenceResult {
            converged: *converged,
            waited_ms: *waited_ms,
            members: members.clone(),
        }),
        _ => None,
    })
}

/// `a, b, c, d, e and 3 more`.
fn name_some<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut s = ids
        .iter()
        .take(IDS_NAMED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > IDS_NAMED {
        s.push_str(&format!(" and {} more", ids.len() - IDS_NAMED));
    }
    s
}

fn msg_line(what: &str, list: &[MsgRef]) -> Option<String> {
    (!list.is_empty()).then(|| {
        format!(
            "{} {what}: {}",
            list.len(),
            name_some(list.iter().map(|m| m.id.as_str()))
        )
    })
}

fn queue_verdict(q: &queue::QueueCheck, failures: &mut Vec<String>, warnings: &mut Vec<String>) {
    let r: &QueueResult = &q.result;
    failures.extend(
        [
            msg_line("lost (acknowledged, never received)", &r.lost),
            msg_line("unexpected (received, never sent)", &r.unexpected),
            msg_line(
                "acknowledged then bounced (an error stanza after the ack)",
                &r.acked_then_bounced,
            ),
            msg_line(
                "failed but delivered (an error before any ack, yet received)",
                &r.failed_but_delivered,
            ),
        ]
        .into_iter()
        .flatten(),
    );
    let bad_ids: Vec<&str> = r
        .duplicated
        .iter()
        .filter(|d| !d.same_stanza_id)
        .map(|d| d.msg.id.as_str())
        .collect();
    if !bad_ids.is_empty() {
        failures.push(format!(
            "{} duplicated without one stanza-id on every copy: {}",
            bad_ids.len(),
            name_some(bad_ids)
        ));
    }
    let extra: u64 = r
        .duplicated
        .iter()
        .map(|d| d.copies.saturating_sub(1))
        .sum();
    let dup_ids = || name_some(r.duplicated.iter().map(|d| d.msg.id.as_str()));
    if r.duplicate_rate >= DUPLICATE_RATE_LIMIT {
        failures.push(format!(
            "duplicate rate {:.3}% >= {:.1}%: {extra} extra copies over {} ids received ({})",
            r.duplicate_rate * 100.0,
            DUPLICATE_RATE_LIMIT * 100.0,
            r.received,
            dup_ids()
        ));
    } else if !r.duplicated.is_empty() {
        warnings.push(format!(
            "{} duplicated ({extra} extra copies, rate {:.3}% < {:.1}%): {}",
            r.duplicated.len(),
            r.duplicate_rate * 100.0,
            DUPLICATE_RATE_LIMIT * 100.0,
            dup_ids()
        ));
    }
    if q.order_violations_total > 0 {
        warnings.push(format!(
            "{} order violations (first copies out of send order within a stream, {} listed): {}",
            q.order_violations_total,
            r.order_violations.len(),
            name_some(r.order_violations.iter().map(|v| v.later.id.as_str()))
        ));
    }
    if r.unknown_lost > 0 {
        warnings.push(format!(
            "{} sends of unknown outcome never received",
            r.unknown_lost
        ));
    }
}

fn register_verdict(r: &RegisterResult, failures: &mut Vec<String>) {
    if r.linearizable {
        return;
    }
    let gave_up = r
        .violations
        .iter()
        .filter(|v| {
            v.ops
                .last()
                .is_some_and(|l| l.starts_with("search gave up"))
        })
        .count();
    let note = if gave_up > 0 {
        format!(" (search gave up on {gave_up})")
    } else {
        String::new()
    };
    failures.push(format!(
        "register not linearizable: {} of {} accounts have no linearization{note}: {}",
        r.violations.len(),
        r.keys,
        name_some(r.violations.iter().map(|v| v.key.as_str()))
    ));
}

fn convergence_line(c: &ConvergenceResult) -> String {
    let members: Vec<String> = c
        .members
        .iter()
        .map(|m| {
            if m.reachable {
                format!(
                    "n{} {} index {} digest {}",
                    m.id, m.role, m.applied_index, m.state_digest
                )
            } else {
                format!("n{} unreachable", m.id)
            }
        })
        .collect();
    format!(
        "cluster did not converge within {} ms: {}",
        c.waited_ms,
        members.join("; ")
    )
}

fn roster_verdict(r: &RosterResult, failures: &mut Vec<String>) {
    if !r.disagreements.is_empty() {
        let pairs: Vec<String> = r
            .disagreements
            .iter()
            .map(|d| format!("{} has {} / {} has {}", d.a, d.a_has, d.b, d.b_has))
            .collect();
        failures.push(format!(
            "{} of {} roster pairs disagree: {}",
            r.disagreements.len(),
            r.pairs,
            name_some(pairs.iter().map(String::as_str))
        ));
    }
    if !r.unread.is_empty() {
        failures.push(format!(
            "{} final rosters could not be read: {}",
            r.unread.len(),
            name_some(r.unread.iter().map(String::as_str))
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;
    use crate::history::{RegF, RegOutcome};

    fn run_info() -> RunInfo {
        RunInfo {
            nodes: 3,
            nemesis: "kill".into(),
            seed: 1,
            time_s: 10,
            net: "netns".into(),
            partitions_skipped: false,
            command: "jepsen-lite test".into(),
            started: "2024-01-01T00:00:00Z".into(),
        }
    }

    /// A clean run: messages, a register history, rosters that agree, a
    /// kill and restart, and a converged cluster.
    fn clean() -> Vec<Entry> {
        let mut h = vec![nemesis(3, 1, true)];
        h.extend(clean_messages(0, 20));
        h.extend(reg(0, 10, 1, RegF::Create, "acct", RegOutcome::Created));
        h.extend(reg(20, 30, 2, RegF::Read, "acct", RegOutcome::Read(true)));
        h.push(roster_send("alice", "bob"));
        h.push(roster_final("alice", &[("bob", "to", false)]));
        h.push(roster_final("bob", &[("alice", "from", false)]));
        h.push(nemesis(8, 1, false));
        h.push(convergence(200, true));
        h
    }

    #[test]
    fn failure_classes_name_each_failure() {
        let r = check(&[], run_info());
        assert_eq!(failure_classes(&r), vec!["not-converged"]);
        let mut info = run_info();
        info.partitions_skipped = true;
        let r = check(&[], info);
        assert_eq!(
            failure_classes(&r),
            vec!["not-converged", "partitions-skipped"]
        );
        let r = check(&clean(), run_info());
        assert!(failure_classes(&r).is_empty());
        let mut h = clean();
        h.push(Entry::QueuesAfterDrain {
            t_us: 1,
            node: 1,
            queues: vec![
                crate::history::QueueDepth {
                    jid: "a@x".into(),
                    depth: 0,
                },
                crate::history::QueueDepth {
                    jid: "b@x".into(),
                    depth: 3,
                },
            ],
        });
        let r = check(&h, run_info());
        assert_eq!(failure_classes(&r), vec!["undrained"]);
        assert_eq!(r.queue.undrained, vec![("b@x".to_string(), 3)]);
    }

    fn verdict(h: &[Entry]) -> Verdict {
        check(h, run_info()).verdict
    }

    fn fails_with(h: &[Entry], needle: &str) {
        let v = verdict(h);
        assert!(!v.valid, "expected a failure: {v:?}");
        assert!(
            v.failures.iter().any(|f| f.contains(needle)),
            "no failure mentions {needle:?}: {v:?}"
        );
    }

    #[test]
    fn clean_history_is_valid() {
        let r = check(&clean(), run_info());
        assert!(r.verdict.valid, "{:?}", r.verdict);
        assert!(r.verdict.warnings.is_empty(), "{:?}", r.verdict);
        assert_eq!(r.queue.sent, 20);
        assert!(r.register.linearizable);
        assert_eq!(r.roster.pairs, 1);
        assert!(r.convergence.converged);
        assert_eq!(r.convergence.waited_ms, 12);
        assert_eq!(r.latency.samples, 20);
        assert_eq!(r.availability.sends_in_faults, 6, "sent at 3..=8 ms");
    }

    #[test]
    fn lost_fails() {
        let mut h = clean();
        h.extend([send(50, "gone"), ok(51, "gone")]);
        fails_with(&h, "1 lost");
        fails_with(&h, "gone");
    }

    #[test]
    fn unexpected_fails() {
        let mut h = clean();
        h.push(recv(50, "ghost"));
        fails_with(&h, "1 unexpected");
    }

    #[test]
    fn acked_then_bounced_fails() {
        let mut h = clean();
        h.push(bounce(60, "m4"));
        fails_with(
            &h,
            "1 acknowledged then bounced (an error stanza after the ack): m4",
        );
    }

    #[test]
    fn failed_but_delivered_fails() {
        let mut h = clean();
        h.extend([send(50, "f"), fail(51, "f"), recv(52, "f")]);
        fails_with(&h, "failed but delivered");
    }

    #[test]
    fn recovered_is_not_an_anomaly() {
        let mut h = clean();
        h.extend([send(50, "u"), info(51, "u"), recv(52, "u")]);
        let r = check(&h, run_info());
        assert!(r.verdict.valid, "{:?}", r.verdict);
        assert_eq!(r.queue.recovered, 1);
    }

    #[test]
    fn unknown_never_received_warns() {
        let mut h = clean();
        h.extend([send(50, "u"), info(51, "u")]);
        let v = verdict(&h);
        assert!(v.valid);
        assert!(v.warnings.iter().any(|w| w.contains("1 sends of unknown")));
    }

    #[test]
    fn bounced_before_ack_is_valid() {
        let mut h = clean();
        h.extend([send(50, "b"), bounce(51, "b"), fail(51, "b")]);
        let r = check(&h, run_info());
        assert!(r.verdict.valid, "{:?}", r.verdict);
        assert_eq!(r.queue.fail, 1);
    }

    #[test]
    fn duplicate_within_rate_only_warns() {
        let mut h = clean();
        h.extend(clean_messages(1000, 2000).into_iter().map(|e| match e {
            // Rename to keep ids apart from clean()'s m0..m19.
            Entry::Send { .. } | Entry::SendOk { .. } | Entry::Recv { .. } => rename(e),
            other => other,
        }));
        h.push(recv(5000, "x5"));
        let r = check(&h, run_info());
        assert_eq!(r.queue.received, 2020);
        assert!(r.queue.duplicate_rate < DUPLICATE_RATE_LIMIT);
        assert!(r.verdict.valid, "{:?}", r.verdict);
        assert!(r
            .verdict
            .warnings
            .iter()
            .any(|w| w.contains("1 duplicated")));
        // Three extra copies among 2020: 0.149% fails.
        h.push(recv(5001, "x6"));
        h.push(recv(5002, "x7"));
        fails_with(&h, "duplicate rate 0.149%");
    }

    fn rename(e: Entry) -> Entry {
        match e {
            Entry::Send {
                t_us,
                process,
                id,
                from,
                to,
                node,
                session,
                seq,
            } => Entry::Send {
                t_us,
                process: format!("{process}-x"),
                id: id.replacen('m', "x", 1),
                from,
                to,
                node,
                session,
                seq,
            },
            Entry::SendOk { t_us, id } => Entry::SendOk {
                t_us,
                id: id.replacen('m', "x", 1),
            },
            Entry::Recv {
                t_us,
                process,
                id,
                from,
                to,
                stanza_id,
                node,
                delayed,
            } => Entry::Recv {
                t_us,
                process,
                id: id.replacen('m', "x", 1),
                from,
                to,
                stanza_id: stanza_id.map(|s| s.replacen("sid-m", "sid-x", 1)),
                node,
                delayed,
            },
            other => other,
        }
    }

    #[test]
    fn duplicate_above_rate_fails_even_with_same_stanza_id() {
        let mut h = clean();
        h.push(recv(90, "m3")); // 1 extra among 20: 5%
        let v = verdict(&h);
        assert!(!v.valid);
        assert_eq!(v.failures.len(), 1, "{v:?}");
        assert!(v.failures[0].starts_with("duplicate rate 5.000%"), "{v:?}");
    }

    #[test]
    fn duplicate_with_different_stanza_ids_fails() {
        let mut h = clean();
        h.push(recv_sid(90, "m3", Some("another")));
        fails_with(&h, "1 duplicated without one stanza-id on every copy: m3");
    }

    #[test]
    fn order_violation_only_warns() {
        let mut h = clean();
        h.extend([
            send_s(50, "o1", "q-9", 0, 0),
            send_s(51, "o2", "q-9", 0, 1),
            ok(52, "o1"),
            ok(52, "o2"),
            recv(60, "o2"),
            recv(61, "o1"),
        ]);
        let v = verdict(&h);
        assert!(v.valid, "{v:?}");
        assert!(
            v.warnings
                .iter()
                .any(|w| w.starts_with("1 order violations")),
            "{v:?}"
        );
    }

    #[test]
    fn register_violation_fails() {
        let mut h = clean();
        h.extend(reg(40, 50, 3, RegF::Read, "acct", RegOutcome::Read(false)));
        fails_with(&h, "register not linearizable: 1 of 1 accounts");
    }

    #[test]
    fn convergence_missing_fails() {
        let mut h = clean();
        h.retain(|e| !matches!(e, Entry::Convergence { .. }));
        let v = verdict(&h);
        assert_eq!(
            v.failures,
            vec!["no convergence check recorded".to_string()]
        );
    }

    #[test]
    fn not_converged_fails_and_the_last_check_counts() {
        let mut h = clean();
        h.push(convergence(300, false));
        fails_with(
            &h,
            "did not converge within 12 ms: n1 leader index 7 digest abc",
        );
        let mut h = clean();
        h.insert(0, convergence(1, false));
        assert!(verdict(&h).valid, "an earlier failed poll is superseded");
    }

    #[test]
    fn roster_disagreement_and_unread_fail() {
        let mut h = clean();
        h.retain(|e| !matches!(e, Entry::RosterFinal { .. }));
        h.push(roster_final("alice", &[("bob", "to", false)]));
        h.push(roster_final("bob", &[("alice", "none", false)]));
        fails_with(&h, "1 of 1 roster pairs disagree");
        let mut h = clean();
        h.push(roster_send("carol", "alice"));
        fails_with(&h, "1 final rosters could not be read: carol@example.test");
    }

    #[test]
    fn no_roster_entries_no_roster_check() {
        let mut h = clean();
        h.retain(|e| !matches!(e, Entry::RosterFinal { .. } | Entry::RosterSend { .. }));
        assert!(verdict(&h).valid);
    }

    #[test]
    fn partitions_skipped_fails() {
        let mut info = run_info();
        info.partitions_skipped = true;
        let r = check(&clean(), info);
        assert_eq!(
            r.verdict.failures,
            vec!["partition schedule skipped: network namespaces unavailable".to_string()]
        );
        assert!(!r.verdict.valid);
    }

    #[test]
    fn fault_windows_pair_start_and_end() {
        let h = [
            nemesis(10, 1, true),
            nemesis(20, 2, true),
            nemesis(30, 1, false),
            nemesis(35, 3, false), // an end with no start
            nemesis(40, 4, false), // an end recorded before its start
            nemesis(39, 4, true),
            send(90, "x"),
        ];
        let w = fault_windows(&h);
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w[2].fault, w[2].start_us, w[2].end_us),
            (4, ms(39), ms(40))
        );
        assert_eq!(
            (w[0].fault, w[0].start_us, w[0].end_us),
            (1, ms(10), ms(30))
        );
        assert_eq!(
            (w[1].fault, w[1].start_us, w[1].end_us),
            (2, ms(20), ms(90))
        );
        assert_eq!(w[0].kind, "kill");
        assert_eq!(w[0].nodes, vec![2]);
        assert!(fault_windows(&[]).is_empty());
    }

    #[test]
    fn empty_history_fails_only_for_convergence() {
        let r = check(&[], run_info());
        assert_eq!(
            r.verdict.failures,
            vec!["no convergence check recorded".to_string()]
        );
        assert!(r.register.linearizable);
        assert_eq!(r.convergence, ConvergenceResult::default());
    }
}
