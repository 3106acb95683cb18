//! The nemesis: seeded schedules of faults, each logged with its time in the
//! history (`Nemesis` entries, a start and an end per fault) and in
//! `nemesis.log`.
//!
//! Faults: `kill -9` and restart (a random node, the leader, the node
//! holding a recipient's or a sender's session), `SIGSTOP`/`SIGCONT` pauses
//! (a random node, the leader), partitions (isolate one node, isolate the
//! leader, a majority/minority split, a bridge, a one-way cut, a cut between
//! one pair), a pause of one node with a kill of another, and a catch-up
//! schedule: a follower killed while a large amount of state is written,
//! then restarted.
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::cluster::{Cluster, NodeState};
use crate::net::Net;
use crate::workload::queue::{receiver_name, sender_name};
use crate::workload::{bare, Stage};
use jepsen_lite::history::{Entry, Recorder};

/// Every schedule `--nemesis` takes.
pub const KINDS: &[&str] = &[
    "none",
    "kill",
    "kill-leader",
    "kill-recipient",
    "kill-sender",
    "pause",
    "pause-leader",
    "partition",
    "partition-one",
    "partition-leader",
    "partition-split",
    "partition-bridge",
    "partition-oneway",
    "partition-pair",
    "pause-kill",
    "catchup",
    "mixed",
];

const PARTITIONS: &[&str] = &[
    "partition-one",
    "partition-leader",
    "partition-split",
    "partition-bridge",
    "partition-oneway",
    "partition-pair",
];

const NON_PARTITIONS: &[&str] = &[
    "kill",
    "kill-leader",
    "kill-recipient",
    "kill-sender",
    "pause",
    "pause-leader",
    "pause-kill",
];

pub fn needs_partitions(kind: &str) -> bool {
    kind.starts_with("partition") || kind == "mixed"
}

/// A fault in force, to be undone.
enum Undo {
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    Heal(Vec<(u64, u64)>),
    Both { resume: Vec<u64>, restart: Vec<u64> },
}

pub struct Nemesis {
    pub cluster: Cluster,
    rec: Recorder,
    rng: StdRng,
    log: std::fs::File,
    next_fault: u64,
    pairs: usize,
}

impl Nemesis {
    pub fn new(
        cluster: Cluster,
        rec: Recorder,
        seed: u64,
        dir: &Path,
        pairs: usize,
    ) -> anyhow::Result<Nemesis> {
        Ok(Nemesis {
            cluster,
            rec,
            rng: StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            log: std::fs::File::create(dir.join("nemesis.log"))?,
            next_fault: 1,
            pairs,
        })
    }

    fn note(&mut self, fault: u64, start: bool, kind: &str, nodes: &[u64], detail: String) {
        let t = self.rec.now();
        let _ = writeln!(
            self.log,
            "[{:>9.3}s] {} {kind} nodes={nodes:?} fault={fault} {detail}",
            t as f64 / 1e6,
            if start { "start" } else { "end  " },
        );
        self.rec.record(Entry::Nemesis {
            t_us: t,
            fault,
            start,
            kind: kind.to_string(),
            nodes: nodes.to_vec(),
            detail,
        });
    }

    /// Runs `kind` until the stage leaves `Faults`, then undoes the fault in
    /// force. Returns whether a partition was asked for but skipped.
    pub async fn run(&mut self, kind: &str, mut stage: watch::Receiver<Stage>) -> bool {
        let partitions = matches!(self.cluster.net, Net::Netns(_));
        let mut skipped = false;
        if kind == "none" {
            while *stage.borrow() == Stage::Faults {
                if stage.changed().await.is_err() {
                    break;
                }
            }
            return false;
        }
        // A first quiet stretch lets traffic start.
        if sleep_or_stage(&mut stage, Duration::from_secs(3)).await {
            return false;
        }
        loop {
            let pick = match kind {
                "partition" => PARTITIONS.choose(&mut self.rng).copied().unwrap_or(kind),
                "mixed" => {
                    let all: Vec<&str> = if partitions {
                        NON_PARTITIONS.iter().chain(PARTITIONS).copied().collect()
                    } else {
                        NON_PARTITIONS.to_vec()
                    };
                    all.choose(&mut self.rng).copied().unwrap_or("kill")
                }
                k => k,
            };
            if needs_partitions(kind) && !partitions {
                skipped = true;
            }
            let fault = self.next_fault;
            self.next_fault += 1;
            let (hold, gap) = if pick == "catchup" {
                (
                    Duration::from_millis(self.rng.gen_range(12_000..18_000)),
                    Duration::from_secs(8),
                )
            } else {
                (
                    Duration::from_millis(self.rng.gen_range(1_500..7_000)),
                    Duration::from_millis(self.rng.gen_range(2_000..5_000)),
                )
            };
            let undo = if pick.starts_with("partition") && !partitions {
                let _ = writeln!(
                    self.log,
                    "[{:>9.3}s] SKIPPED {pick}: network namespaces unavailable (not root?)",
                    self.rec.now() as f64 / 1e6
                );
                None
            } else {
                match self.start(pick, fault).await {
                    Ok(u) => Some(u),
                    Err(e) => {
                        let _ = writeln!(self.log, "nemesis {pick} failed: {e:#}");
                        None
                    }
                }
            };
            let over = sleep_or_stage(&mut stage, hold).await;
            if let Some(u) = undo {
                self.end(pick, fault, u).await;
            }
            if over || sleep_or_stage(&mut stage, gap).await {
                return skipped;
            }
        }
    }

    async fn leader(&self) -> Option<u64> {
        let up: Vec<u64> = self
            .cluster
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Running)
            .map(|n| n.id)
            .collect();
        self.cluster.admin_handle().leader(&up).await
    }

    fn random_node(&mut self) -> u64 {
        let ids = self.cluster.ids();
        ids[self.rng.gen_range(0..ids.len())]
    }

    async fn session_node_of(&mut self, user: &str) -> Option<u64> {
        let admin = self.cluster.admin_handle();
        for id in self.cluster.ids() {
            if let Some(n) = admin.session_node(id, &bare(user)).await {
                return Some(n);
            }
        }
        None
    }

    async fn start(&mut self, pick: &str, fault: u64) -> anyhow::Result<Undo> {
        let n = self.cluster.ids().len();
        match pick {
            "kill" | "kill-leader" | "kill-recipient" | "kill-sender" | "catchup" => {
                let (target, why) = match pick {
                    "kill-leader" => match self.leader().await {
                        Some(l) => (l, "the leader".to_string()),
                        None => (self.random_node(), "no leader known: random".into()),
                    },
                    "kill-recipient" | "kill-sender" => {
                        let k = self.rng.gen_range(0..self.pairs.max(1));
                        let user = if pick == "kill-recipient" {
                            receiver_name(k)
                        } else {
                            sender_name(k)
                        };
                        match self.session_node_of(&user).await {
                            Some(id) => (id, format!("holds {user}'s session")),
                            None => (self.random_node(), format!("{user} not bound: random")),
                        }
                    }
                    "catchup" => {
                        let leader = self.leader().await;
                        let followers: Vec<u64> = self
                            .cluster
                            .ids()
                            .into_iter()
                            .filter(|id| Some(*id) != leader)
                            .collect();
                        let t = followers
                            .choose(&mut self.rng)
                            .copied()
                            .unwrap_or_else(|| self.cluster.ids()[0]);
                        (t, "a follower, down while bulk state is written".into())
                    }
                    _ => (self.random_node(), "random".into()),
                };
                self.cluster.kill(target).await?;
                self.note(fault, true, pick, &[target], format!("kill -9 ({why})"));
                Ok(Undo::Restart(vec![target]))
            }
            "pause" | "pause-leader" => {
                let target = if pick == "pause-leader" {
                    match self.leader().await {
                        Some(l) => l,
                        None => self.random_node(),
                    }
                } else {
                    self.random_node()
                };
                self.cluster.pause(target)?;
                self.note(fault, true, pick, &[target], "SIGSTOP".into());
                Ok(Undo::Resume(vec![target]))
            }
            "pause-kill" => {
                let mut ids = self.cluster.ids();
                ids.shuffle(&mut self.rng);
                let (p, k) = (ids[0], ids[1 % n]);
                self.cluster.pause(p)?;
                self.cluster.kill(k).await?;
                self.note(
                    fault,
                    true,
                    pick,
                    &[p, k],
                    format!("SIGSTOP n{p}, kill -9 n{k}"),
                );
                Ok(Undo::Both {
                    resume: vec![p],
                    restart: vec![k],
                })
            }
            p if p.starts_with("partition") => {
                let mut ids = self.cluster.ids();
                ids.shuffle(&mut self.rng);
                let mut cuts: Vec<(u64, u64)> = Vec::new();
                let both = |a: &[u64], b: &[u64], cuts: &mut Vec<(u64, u64)>| {
                    for &x in a {
                        for &y in b {
                            cuts.push((x, y));
                            cuts.push((y, x));
                        }
                    }
                };
                let (nodes, detail) = match p {
                    "partition-one" | "partition-leader" => {
                        let target = if p == "partition-leader" {
                            self.leader().await.unwrap_or(ids[0])
                        } else {
                            ids[0]
                        };
                        let rest: Vec<u64> = ids.iter().copied().filter(|&x| x != target).collect();
                        both(&[target], &rest, &mut cuts);
                        (vec![target], format!("n{target} isolated from {rest:?}"))
                    }
                    "partition-split" => {
                        let (minority, majority) = ids.split_at(n / 2);
                        both(minority, majority, &mut cuts);
                        (
                            minority.to_vec(),
                            format!("minority {minority:?} | majority {majority:?}"),
                        )
                    }
                    "partition-bridge" => {
                        let half = (n - 1) / 2;
                        let a = &ids[..half];
                        let bridge = ids[half];
                        let b = &ids[half + 1..];
                        both(a, b, &mut cuts);
                        (
                            vec![bridge],
                            format!("{a:?} | {b:?}, n{bridge} sees both sides"),
                        )
                    }
                    "partition-oneway" => {
                        let x = ids[0];
                        let rest: Vec<u64> = ids.iter().copied().filter(|&y| y != x).collect();
                        let outgoing = self.rng.gen_bool(0.5);
                        for &y in &rest {
                            cuts.push(if outgoing { (x, y) } else { (y, x) });
                        }
                        (
                            vec![x],
                            if outgoing {
                                format!("n{x} -> {rest:?} dropped (it still hears them)")
                            } else {
                                format!("{rest:?} -> n{x} dropped (it still reaches them)")
                            },
                        )
                    }
                    _ => {
                        let (a, b) = (ids[0], ids[1 % n]);
                        cuts.push((a, b));
                        cuts.push((b, a));
                        (vec![a, b], format!("n{a} <-> n{b} cut"))
                    }
                };
                if let Net::Netns(net) = &mut self.cluster.net {
                    for &(a, b) in &cuts {
                        if let Err(e) = net.cut(a, b) {
                            // Undo the part already made: no fault runs
                            // without its entry in the history.
                            for &(x, y) in &cuts {
                                let _ = net.uncut(x, y);
                            }
                            return Err(e);
                        }
                    }
                }
                self.note(fault, true, p, &nodes, detail);
                Ok(Undo::Heal(cuts))
            }
            other => anyhow::bail!("unknown nemesis {other}"),
        }
    }

    async fn end(&mut self, pick: &str, fault: u64, undo: Undo) {
        match undo {
            Undo::Restart(ids) => {
                for &id in &ids {
                    if let Err(e) = self.cluster.start(id) {
                        let _ = writeln!(self.log, "restart n{id} failed: {e:#}");
                    }
                }
                self.note(fault, false, pick, &ids, "restarted".into());
            }
            Undo::Resume(ids) => {
                for &id in &ids {
                    let _ = self.cluster.resume(id);
                }
                self.note(fault, false, pick, &ids, "SIGCONT".into());
            }
            Undo::Both { resume, restart } => {
                for &id in &resume {
                    let _ = self.cluster.resume(id);
                }
                for &id in &restart {
                    let _ = self.cluster.start(id);
                }
                let all: Vec<u64> = resume.iter().chain(&restart).copied().collect();
                self.note(fault, false, pick, &all, "SIGCONT + restarted".into());
            }
            Undo::Heal(cuts) => {
                if let Net::Netns(net) = &mut self.cluster.net {
                    for &(a, b) in &cuts {
                        let _ = net.uncut(a, b);
                    }
                }
                let mut nodes: Vec<u64> = cuts.iter().flat_map(|&(a, b)| [a, b]).collect();
                nodes.sort_unstable();
                nodes.dedup();
                self.note(fault, false, pick, &nodes, "healed".into());
            }
        }
    }

    /// The final heal: every node running, no cut left. Logged as one fault.
    pub async fn heal_everything(&mut self) {
        let mut healed: Vec<u64> = Vec::new();
        if let Net::Netns(net) = &mut self.cluster.net {
            for (a, b) in net.cuts() {
                healed.push(a);
                healed.push(b);
            }
            if let Err(e) = net.heal_all() {
                let _ = writeln!(self.log, "final heal failed: {e:#}");
                eprintln!("WARNING: final heal failed: {e:#}");
            }
        }
        if let Ok(ids) = self.cluster.revive_all() {
            healed.extend(ids);
        }
        healed.sort_unstable();
        healed.dedup();
        if !healed.is_empty() {
            let fault = self.next_fault;
            self.next_fault += 1;
            self.note(fault, true, "final-heal", &healed, "leftover faults".into());
            self.note(fault, false, "final-heal", &healed, "healed".into());
        }
    }
}

/// Sleeps `d`, or less if the stage moves on; true if it did.
async fn sleep_or_stage(stage: &mut watch::Receiver<Stage>, d: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        if *stage.borrow() != Stage::Faults {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return *stage.borrow() != Stage::Faults,
            r = stage.changed() => if r.is_err() { return true; },
        }
    }
}
