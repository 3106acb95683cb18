//! Linearizability of the register (account creation) workload:
//! `RegInvoke`/`RegDone`, checked per account (P-compositionality: each key
//! is an independent object) against a set-once flag.
//!
//! The model per key is `exists: bool`, initially false:
//! - `create -> created` requires `!exists` and sets it;
//! - `create -> exists` requires `exists`;
//! - `read -> b` requires `exists == b`;
//! - a `fail` outcome did not happen and is dropped;
//! - an unknown outcome (or no `RegDone` at all) may have happened at any
//!   point after its invocation, or never: a `create` becomes an optional
//!   op with an open-ended window that sets `exists`; a `read` is dropped.
//!
//! The search is Wing & Gong's, with Lowe's memoization of
//! (linearized set, state) and a step cap: a key whose search gives up is
//! reported as a violation, never as linearizable.
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Entry, RegF, RegOutcome, Via};
use crate::results::{KeyViolation, RegisterResult};

/// Search steps allowed per key before giving up.
pub const MAX_STEPS_PER_KEY: u64 = 2_000_000;

/// One register operation as the history tells it.
#[derive(Debug, Clone)]
struct Op {
    process: String,
    f: RegF,
    via: Via,
    node: u64,
    inv_us: u64,
    /// The first `RegDone` for it.
    done: Option<(u64, RegOutcome)>,
}

/// What an op does to the model, for the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// `create -> created`.
    Created,
    /// `create -> exists`.
    Exists,
    /// `read -> b`.
    Read(bool),
    /// A create with unknown outcome: sets `exists` (a no-op if set).
    MaybeCreate,
    /// An outcome that does not fit the operation (e.g. a read answering
    /// `created`): no state allows it.
    Impossible,
}

impl Effect {
    /// The state after the op from `s`, or `None` if the model forbids it.
    fn step(self, s: bool) -> Option<bool> {
        match self {
            Effect::Created => (!s).then_some(true),
            Effect::Exists => s.then_some(true),
            Effect::Read(b) => (s == b).then_some(s),
            Effect::MaybeCreate => Some(true),
            Effect::Impossible => None,
        }
    }
}

/// An op as the search sees it: its window and effect.
#[derive(Debug, Clone, Copy)]
struct SOp {
    inv: u64,
    /// `u64::MAX` for an optional (unknown) op.
    done: u64,
    effect: Effect,
    required: bool,
}

/// How a key's search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    Linearizable,
    Violation,
    GaveUp(u64),
}

/// A set of op indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn with(&self, i: usize) -> Bits {
        let mut b = self.clone();
        b.0[i / 64] |= 1 << (i % 64);
        b
    }
}

/// Searches for a linearization of `ops` (sorted by invocation) that
/// includes every required op; optional ops may be left out.
fn search(ops: &[SOp], max_steps: u64) -> Search {
    let required = ops.iter().filter(|o| o.required).count();
    let mut visited: HashSet<(Bits, bool)> = HashSet::new();
    // (linearized set, state, how many required ops it holds)
    let mut stack = vec![(Bits::new(ops.len()), false, 0usize)];
    let mut steps = 0u64;
    while let Some((bits, s, done_required)) = stack.pop() {
        if done_required == required {
            return Search::Linearizable;
        }
        if visited.contains(&(bits.clone(), s)) {
            continue;
        }
        steps += 1;
        if steps > max_steps {
            return Search::GaveUp(max_steps);
        }
        // An op can go next only if no pending op had returned before it
        // was invoked; optional ops never return, so never constrain.
        let horizon = ops
            .iter()
            .enumerate()
            .filter(|(i, o)| o.required && !bits.has(*i))
            .map(|(_, o)| o.done)
            .min()
            .unwrap_or(u64::MAX);
        let mut next = Vec::new();
        let mut forced = None;
        for (i, o) in ops.iter().enumerate() {
            if o.inv > horizon {
                break;
            }
            if bits.has(i) {
                continue;
            }
            // An optional create once the flag is set changes nothing: it
            // is never needed.
            if o.effect == Effect::MaybeCreate && s {
                continue;
            }
            let Some(s2) = o.effect.step(s) else {
                continue;
            };
            if o.required && s2 == s {
                // A required op that leaves the state alone and may go now
                // can go first in some linearization if any exists: moving
                // it to the front breaks no real-time order (nothing pending
                // returned before its invocation) and no other op's
                // precondition (the state is unchanged).
                forced = Some((i, s2));
                break;
            }
            next.push((i, s2));
        }
        if let Some(f) = forced {
            next = vec![f];
        }
        for (i, s2) in next {
            let nb = bits.with(i);
            let nr = done_required + usize::from(ops[i].required);
            stack.push((nb, s2, nr));
        }
        visited.insert((bits, s));
    }
    Search::Violation
}

fn secs(us: u64) -> String {
    format!("{}.{:03}s", us / 1_000_000, (us / 1000) % 1000)
}

fn op_line(o: &Op) -> String {
    let f = match o.f {
        RegF::Create => "create",
        RegF::Read => "read",
    };
    let via = match o.via {
        Via::Xmpp => "xmpp",
        Via::Admin => "admin",
    };
    let (end, result) = match &o.done {
        None => ("?".to_string(), "unknown (no completion)".to_string()),
        Some((_, RegOutcome::Unknown(why))) => ("?".to_string(), format!("unknown ({why})")),
        Some((t, out)) => (
            secs(*t),
            match out {
                RegOutcome::Created => "created".to_string(),
                RegOutcome::Exists => "exists".to_string(),
                RegOutcome::Read(b) => b.to_string(),
                RegOutcome::Fail(why) => format!("fail ({why})"),
                RegOutcome::Unknown(why) => format!("unknown ({why})"),
            },
        ),
    };
    format!(
        "[{}..{end}] {} {f} via {via} on n{} -> {result}",
        secs(o.inv_us),
        o.process,
        o.node
    )
}

/// The search's view of an op, or `None` if it is dropped.
fn to_search(o: &Op) -> Option<SOp> {
    let (effect, done) = match (&o.done, o.f) {
        (Some((_, RegOutcome::Fail(_))), _) => return None,
        (None | Some((_, RegOutcome::Unknown(_))), RegF::Read) => return None,
        (None | Some((_, RegOutcome::Unknown(_))), RegF::Create) => (Effect::MaybeCreate, u64::MAX),
        (Some((t, out)), f) => (
            match (f, out) {
                (RegF::Create, RegOutcome::Created) => Effect::Created,
                (RegF::Create, RegOutcome::Exists) => Effect::Exists,
                (RegF::Read, RegOutcome::Read(b)) => Effect::Read(*b),
                _ => Effect::Impossible,
            },
            (*t).max(o.inv_us),
        ),
    };
    Some(SOp {
        inv: o.inv_us,
        done,
        effect,
        required: done != u64::MAX,
    })
}

/// Checks one key's ops (in invocation order).
fn check_key(key: &str, ops: &[Op], max_steps: u64) -> Option<KeyViolation> {
    let sops: Vec<SOp> = ops.iter().filter_map(to_search).collect();
    let outcome = search(&sops, max_steps);
    if outcome == Search::Linearizable {
        return None;
    }
    let mut lines: Vec<String> = ops.iter().map(op_line).collect();
    if let Search::GaveUp(n) = outcome {
        lines.push(format!("search gave up after {n} steps"));
    }
    let first_us = ops.iter().map(|o| o.inv_us).min().unwrap_or(0);
    let last_us = ops
        .iter()
        .map(|o| {
            o.done
                .as_ref()
                .map_or(o.inv_us, |(t, _)| (*t).max(o.inv_us))
        })
        .max()
        .unwrap_or(0);
    Some(KeyViolation {
        key: key.to_string(),
        ops: lines,
        first_us,
        last_us,
    })
}

/// Checks the register workload of `history`.
pub fn check_register(history: &[Entry]) -> RegisterResult {
    check_register_with(history, MAX_STEPS_PER_KEY)
}

fn check_register_with(history: &[Entry], max_steps: u64) -> RegisterResult {
    // op id -> (key, op); keys kept in name order for a stable report.
    let mut ops: HashMap<u64, (String, Op)> = HashMap::new();
    let mut order: Vec<u64> = Vec::new();
    for e in history {
        match e {
            Entry::RegInvoke {
                t_us,
                op,
                process,
                f,
                key,
                via,
                node,
            } => {
                if ops.contains_key(op) {
                    continue;
                }
                order.push(*op);
                ops.insert(
                    *op,
                    (
                        key.clone(),
                        Op {
                            process: process.clone(),
                            f: *f,
                            via: *via,
                            node: *node,
                            inv_us: *t_us,
                            done: None,
                        },
                    ),
                );
            }
            Entry::RegDone { t_us, op, outcome } => {
                if let Some((_, o)) = ops.get_mut(op) {
                    if o.done.is_none() {
                        o.done = Some((*t_us, outcome.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    let mut r = RegisterResult::default();
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for id in order {
        let Some((key, o)) = ops.remove(&id) else {
            continue;
        };
        r.ops += 1;
        match (&o.done, o.f) {
            (None | Some((_, RegOutcome::Unknown(_))), _) => r.unknown += 1,
            (Some((_, RegOutcome::Fail(_))), _) => r.fail += 1,
            (Some((_, RegOutcome::Created)), _) => r.created += 1,
            (Some((_, RegOutcome::Exists)), _) => r.exists += 1,
            (Some((_, RegOutcome::Read(_))), _) => r.reads += 1,
        }
        by_key.entry(key).or_default().push(o);
    }
    r.keys = by_key.len() as u64;
    for (key, mut key_ops) in by_key {
        key_ops.sort_by_key(|o| o.inv_us);
        if let Some(v) = check_key(&key, &key_ops, max_steps) {
            r.violations.push(v);
        }
    }
    r.linearizable = r.violations.is_empty();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::fixture::*;
    use RegF::{Create, Read};
    use RegOutcome::{Created, Exists};

    fn check(h: &[Entry]) -> RegisterResult {
        check_register(h)
    }

    fn valid(h: &[Entry]) -> bool {
        check(h).linearizable
    }

    #[test]
    fn sequential_create_then_exists_is_fine() {
        let h = [
            reg(0, 10, 1, Create, "k", Created),
            reg(20, 30, 2, Create, "k", Exists),
            reg(40, 50, 3, Read, "k", RegOutcome::Read(true)),
        ]
        .concat();
        let r = check(&h);
        assert!(r.linearizable, "{r:?}");
        assert_eq!(
            (r.ops, r.created, r.exists, r.reads, r.keys),
            (3, 1, 1, 1, 1)
        );
    }

    #[test]
    fn two_concurrent_creates_both_created_is_a_violation() {
        let h = [
            reg(0, 10, 1, Create, "k", Created),
            reg(5, 15, 2, Create, "k", Created),
        ]
        .concat();
        let r = check(&h);
        assert!(!r.linearizable);
        assert_eq!(r.violations.len(), 1);
        let v = &r.violations[0];
        assert_eq!(v.key, "k");
        assert_eq!(v.ops.len(), 2);
        assert_eq!(
            v.ops[0],
            "[0.000s..0.010s] reg-1 create via admin on n1 -> created"
        );
        assert_eq!((v.first_us, v.last_us), (0, ms(15)));
    }

    #[test]
    fn stale_read_after_created_is_a_violation() {
        let h = [
            reg(0, 10, 1, Create, "k", Created),
            reg(20, 30, 2, Read, "k", RegOutcome::Read(false)),
        ]
        .concat();
        assert!(!valid(&h));
    }

    #[test]
    fn read_overlapping_create_may_see_either() {
        for b in [false, true] {
            let h = [
                reg(0, 10, 1, Create, "k", Created),
                reg(5, 30, 2, Read, "k", RegOutcome::Read(b)),
            ]
            .concat();
            assert!(valid(&h), "read {b}");
        }
    }

    #[test]
    fn read_true_before_any_create_is_a_violation() {
        let h = [
            reg(0, 10, 1, Read, "k", RegOutcome::Read(true)),
            reg(20, 30, 2, Create, "k", Created),
        ]
        .concat();
        assert!(!valid(&h));
        // Nor with no create at all.
        assert!(!valid(&reg(0, 10, 1, Read, "k", RegOutcome::Read(true))));
    }

    #[test]
    fn exists_without_any_create_is_a_violation() {
        assert!(!valid(&reg(0, 10, 1, Create, "k", Exists)));
    }

    #[test]
    fn unknown_create_then_read_true_is_fine() {
        let h = [
            reg(0, 10, 1, Create, "k", unknown("timeout")),
            reg(20, 30, 2, Read, "k", RegOutcome::Read(true)),
        ]
        .concat();
        let r = check(&h);
        assert!(r.linearizable);
        assert_eq!(r.unknown, 1);
    }

    #[test]
    fn unknown_create_may_take_effect_late() {
        let mut h = vec![reg_invoke(0, 1, Create, "k")]; // no RegDone at all
        h.extend(reg(20, 30, 2, Read, "k", RegOutcome::Read(false)));
        h.extend(reg(40, 50, 3, Read, "k", RegOutcome::Read(true)));
        h.extend(reg(60, 70, 4, Create, "k", Exists));
        assert!(valid(&h));
    }

    #[test]
    fn unknown_create_may_never_happen() {
        let h = [
            reg(0, 10, 1, Create, "k", unknown("timeout")),
            reg(20, 30, 2, Read, "k", RegOutcome::Read(false)),
            reg(40, 50, 3, Create, "k", Created),
        ]
        .concat();
        assert!(valid(&h));
    }

    #[test]
    fn unknown_create_cannot_act_before_its_invocation() {
        let h = [
            reg(0, 10, 1, Read, "k", RegOutcome::Read(true)),
            reg(20, 30, 2, Create, "k", unknown("timeout")),
        ]
        .concat();
        assert!(!valid(&h));
    }

    #[test]
    fn read_true_then_read_false_is_a_violation() {
        let h = [
            reg(0, 10, 1, Create, "k", Created),
            reg(20, 30, 2, Read, "k", RegOutcome::Read(true)),
            reg(40, 50, 3, Read, "k", RegOutcome::Read(false)),
        ]
        .concat();
        assert!(!valid(&h));
    }

    #[test]
    fn failed_ops_and_unknown_reads_are_dropped() {
        let h = [
            reg(
                0,
                10,
                1,
                Create,
                "k",
                RegOutcome::Fail("not-allowed".into()),
            ),
            reg(20, 30, 2, Read, "k", unknown("timeout")),
            reg(40, 50, 3, Read, "k", RegOutcome::Read(false)),
            reg(60, 70, 4, Create, "k", Created),
        ]
        .concat();
        let r = check(&h);
        assert!(r.linearizable);
        assert_eq!((r.fail, r.unknown), (1, 1));
    }

    #[test]
    fn concurrent_overlapping_ops_with_a_linearization_pass() {
        // create A [0,100] created; create B [10,50] exists; read C [20,30]
        // true; read D [5,200] false: D, A, C, B.
        let h = [
            reg(0, 100, 1, Create, "k", Created),
            reg(10, 50, 2, Create, "k", Exists),
            reg(20, 30, 3, Read, "k", RegOutcome::Read(true)),
            reg(5, 200, 4, Read, "k", RegOutcome::Read(false)),
        ]
        .concat();
        assert!(valid(&h));
        // But D invoked after C returned true cannot read false.
        let h2 = [
            reg(0, 100, 1, Create, "k", Created),
            reg(20, 30, 3, Read, "k", RegOutcome::Read(true)),
            reg(35, 200, 4, Read, "k", RegOutcome::Read(false)),
        ]
        .concat();
        assert!(!valid(&h2));
    }

    #[test]
    fn keys_are_independent() {
        let h = [
            reg(0, 10, 1, Create, "a", Created),
            reg(0, 10, 2, Create, "b", Created),
            reg(20, 30, 3, Read, "b", RegOutcome::Read(false)),
        ]
        .concat();
        let r = check(&h);
        assert_eq!(r.keys, 2);
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.violations[0].key, "b");
    }

    #[test]
    fn mismatched_outcome_is_a_violation() {
        assert!(!valid(&reg(0, 10, 1, Read, "k", Created)));
    }

    #[test]
    fn unknown_lines_show_open_end() {
        let mut h = vec![reg_invoke(1234, 1, Create, "k")];
        h.extend(reg(1300, 1400, 2, Create, "k", Created));
        h.extend(reg(1300, 1450, 3, Create, "k", Created));
        h.extend(reg(1500, 1600, 4, Create, "k", unknown("stream closed")));
        let r = check(&h);
        let v = &r.violations[0];
        assert_eq!(
            v.ops[0],
            "[1.234s..?] reg-1 create via admin on n1 -> unknown (no completion)"
        );
        assert_eq!(
            v.ops[3],
            "[1.500s..?] reg-4 create via admin on n1 -> unknown (stream closed)"
        );
    }

    #[test]
    fn many_concurrent_reads_stay_fast() {
        // 100 reads all overlapping one create: each may see either value
        // as long as false-readers come first. Exact, and quick thanks to
        // the forced moves.
        let mut h = reg(0, 1000, 1, Create, "k", Created).to_vec();
        for i in 0..100u64 {
            let b = i % 2 == 0;
            h.extend(reg(1 + i, 2000 + i, 10 + i, Read, "k", RegOutcome::Read(b)));
        }
        assert!(valid(&h));
        // Add a read that began after a true read returned but saw false.
        h.extend(reg(5000, 5001, 500, Read, "k", RegOutcome::Read(false)));
        assert!(!valid(&h));
    }

    #[test]
    fn search_gives_up_without_claiming_linearizable() {
        // Unknown creates concurrent with required, state-changing ops need
        // branching; a cap of 1 step cannot finish.
        let h = [
            reg(0, 10, 1, Create, "k", unknown("timeout")),
            reg(0, 100, 2, Create, "k", Exists),
            reg(0, 100, 3, Create, "k", Created),
        ]
        .concat();
        assert!(check_register_with(&h, 1_000).linearizable);
        let r = check_register_with(&h, 1);
        assert!(!r.linearizable);
        let v = &r.violations[0];
        assert_eq!(
            v.ops.last().map(String::as_str),
            Some("search gave up after 1 steps")
        );
    }

    /// Exhaustive reference: some order of all required ops and any subset
    /// of the optional ones respects real time and the model.
    fn brute_force(ops: &[SOp]) -> bool {
        fn go(ops: &[SOp], used: &mut Vec<bool>, last: &mut Vec<usize>, s: bool) -> bool {
            let complete = ops.iter().zip(used.iter()).all(|(o, u)| *u || !o.required);
            if complete {
                // Real time: nothing placed later returned before something
                // placed earlier was invoked; dropped ops never returned.
                let ok = last
                    .iter()
                    .enumerate()
                    .all(|(a, &i)| last[a + 1..].iter().all(|&j| ops[j].done >= ops[i].inv));
                if ok {
                    return true;
                }
            }
            for i in 0..ops.len() {
                if used[i] {
                    continue;
                }
                if let Some(s2) = ops[i].effect.step(s) {
                    used[i] = true;
                    last.push(i);
                    let found = go(ops, used, last, s2);
                    last.pop();
                    used[i] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        go(ops, &mut vec![false; ops.len()], &mut Vec::new(), false)
    }

    #[test]
    fn search_agrees_with_brute_force_on_random_histories() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut yes, mut no) = (0, 0);
        for _ in 0..400 {
            let n = 1 + rnd(6);
            let mut h = Vec::new();
            for op in 0..n {
                let t0 = rnd(20);
                let t1 = t0 + rnd(8);
                let (f, outcome) = match rnd(7) {
                    0 | 1 => (Create, Created),
                    2 => (Create, Exists),
                    3 => (Create, unknown("timeout")),
                    4 => (Read, unknown("timeout")),
                    5 => (Create, RegOutcome::Fail("no".into())),
                    _ => (Read, RegOutcome::Read(rnd(2) == 0)),
                };
                h.extend(reg(t0, t1, op, f, "k", outcome));
            }
            let mut ops: Vec<Op> = Vec::new();
            for e in &h {
                match e {
                    Entry::RegInvoke { t_us, f, .. } => ops.push(Op {
                        process: String::new(),
                        f: *f,
                        via: Via::Admin,
                        node: 1,
                        inv_us: *t_us,
                        done: None,
                    }),
                    Entry::RegDone { t_us, outcome, .. } => {
                        if let Some(o) = ops.last_mut() {
                            o.done = Some((*t_us, outcome.clone()));
                        }
                    }
                    _ => {}
                }
            }
            let sops: Vec<SOp> = ops.iter().filter_map(to_search).collect();
            let expected = brute_force(&sops);
            assert_eq!(check(&h).linearizable, expected, "{h:?}");
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 50 && no > 50, "both kinds exercised: {yes} {no}");
    }
}
