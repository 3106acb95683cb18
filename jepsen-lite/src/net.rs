//! The network the cluster runs on, and the partitions a nemesis makes.
//!
//! What this machine offers decided the mechanism (checked, not assumed):
//! `ip netns` and veth pairs work; iptables/nft and `tc` qdiscs do not (the
//! kernel lacks them), nor do bridges. So every node gets its own network
//! namespace with one address on its loopback (`10.77.0.<id>`), and every
//! pair of namespaces (each node pair, and each node with the clients'
//! namespace `10.77.0.100`) is joined by its own veth pair with a /32 route
//! through it. There is no bridge and no router: a packet from node a to
//! node b can only cross the a-b link.
//!
//! A cut from a to b replaces a's neighbour entry for b with a MAC address
//! nobody owns (`nud permanent`): a's packets to b leave and vanish, silently,
//! as on a real network whose switch lost a port; b's packets to a still
//! arrive (a one-way cut). Healing deletes the entry, and ARP finds the real
//! peer again. Cutting both directions isolates the pair. The client links
//! are never cut: clients, like Jepsen's control node, reach every node.
//!
//! The namespaces are named `jl<pid>-n<id>` and `jl<pid>-c`; they are deleted
//! when the run ends, and ones left by a run that died are deleted at the
//! next start. Without root (or without `ip netns`), the cluster runs on
//! loopback addresses and partition schedules are reported as skipped.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{bail, Context};

/// The MAC address of no one: packets sent to it are dropped silently.
const BLACKHOLE_MAC: &str = "02:00:00:6a:6c:00";
/// The clients' pseudo node id in the address plan.
pub const CLIENT_ID: u64 = 100;

/// Where the nodes live.
pub enum Net {
    /// Each node in its own namespace; the harness joins the clients' one.
    Netns(Netns),
    /// All on loopback, `127.77.<k>.<id>`; no partitions.
    Loopback { k: u8 },
}

impl Net {
    /// The address node `id` binds (and clients dial).
    pub fn addr_of(&self, id: u64) -> IpAddr {
        match self {
            Net::Netns(_) => IpAddr::V4(Ipv4Addr::new(10, 77, 0, id as u8)),
            Net::Loopback { k } => IpAddr::V4(Ipv4Addr::new(127, 77, *k, id as u8)),
        }
    }

    /// The command prefix that runs a program inside node `id`'s namespace.
    pub fn exec_prefix(&self, id: u64) -> Vec<String> {
        match self {
            Net::Netns(n) => vec!["ip".into(), "netns".into(), "exec".into(), n.ns_name(id)],
            Net::Loopback { .. } => vec![],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Net::Netns(_) => "netns",
            Net::Loopback { .. } => "loopback",
        }
    }
}

/// Whether namespaces can be made here: root, and `ip netns` answers.
pub fn netns_available() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("cannot run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes namespaces left by jepsen-lite runs whose process is gone.
pub fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("jl") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive || pid == std::process::id() as i32 {
            // Processes a dead run left inside (its nodes) go with it.
            if let Ok(pids) = ip(&["netns", "pids", name]) {
                for p in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The namespaces of one run.
pub struct Netns {
    prefix: String,
    nodes: Vec<u64>,
    /// Directed cuts in force: (from, to).
    cuts: BTreeSet<(u64, u64)>,
}

impl Netns {
    /// Makes a namespace per node and one for the clients, fully meshed.
    pub fn create(nodes: &[u64]) -> anyhow::Result<Netns> {
        remove_stale();
        let net = Netns {
            prefix: format!("jl{}", std::process::id()),
            nodes: nodes.to_vec(),
            cuts: BTreeSet::new(),
        };
        let mut all = nodes.to_vec();
        all.push(CLIENT_ID);
        for &id in &all {
            let ns = net.ns_name(id);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", addr(id)),
                "dev",
                "lo",
            ])?;
        }
        for (i, &a) in all.iter().enumerate() {
            for &b in &all[i + 1..] {
                let (na, nb) = (net.ns_name(a), net.ns_name(b));
                // In a's namespace the link is named after b, and vice versa.
                let (ia, ib) = (ifname(b), ifname(a));
                ip(&[
                    "link", "add", &ia, "netns", &na, "type", "veth", "peer", "name", &ib, "netns",
                    &nb,
                ])?;
                for (ns, dev, me, peer) in [(&na, &ia, a, b), (&nb, &ib, b, a)] {
                    ip(&["-n", ns, "link", "set", dev, "up"])?;
                    ip(&[
                        "-n",
                        ns,
                        "route",
                        "add",
                        &format!("{}/32", addr(peer)),
                        "dev",
                        dev,
                        "src",
                        &addr(me),
                    ])?;
                }
            }
        }
        Ok(net)
    }

    pub fn ns_name(&self, id: u64) -> String {
        if id == CLIENT_ID {
            format!("{}-c", self.prefix)
        } else {
            format!("{}-n{id}", self.prefix)
        }
    }

    /// Moves the calling thread (call it before any other thread exists:
    /// threads made afterwards inherit it) into the clients' namespace.
    pub fn enter_client_namespace(&self) -> anyhow::Result<()> {
        let path = format!("/run/netns/{}", self.ns_name(CLIENT_ID));
        let f = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {path}"))?;
        Ok(())
    }

    /// Drops every packet `from` sends to `to`.
    pub fn cut(&mut self, from: u64, to: u64) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.ns_name(from),
            "neigh",
            "replace",
            &addr(to),
            "lladdr",
            BLACKHOLE_MAC,
            "dev",
            &ifname(to),
            "nud",
            "permanent",
        ])?;
        self.cuts.insert((from, to));
        Ok(())
    }

    /// Undoes `cut(from, to)`.
    pub fn uncut(&mut self, from: u64, to: u64) -> anyhow::Result<()> {
        if self.cuts.contains(&(from, to)) {
            // Forgotten only once the blackhole is really gone.
            ip(&[
                "-n",
                &self.ns_name(from),
                "neigh",
                "del",
                &addr(to),
                "dev",
                &ifname(to),
            ])?;
            self.cuts.remove(&(from, to));
        }
        Ok(())
    }

    /// Heals every cut.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        let cuts: Vec<_> = self.cuts.iter().copied().collect();
        let mut first_err = None;
        for (a, b) in cuts {
            if let Err(e) = self.uncut(a, b) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub fn cuts(&self) -> Vec<(u64, u64)> {
        self.cuts.iter().copied().collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut all = self.nodes.clone();
        all.push(CLIENT_ID);
        for id in all {
            let _ = ip(&["netns", "del", &self.ns_name(id)]);
        }
    }
}

fn addr(id: u64) -> String {
    format!("10.77.0.{id}")
}

fn ifname(peer: u64) -> String {
    format!("v{peer}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write as _};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    /// Runs `f` on a thread that has joined namespace `ns` (namespaces are
    /// per thread).
    fn in_ns<T: Send + 'static>(ns: String, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread")
    }

    fn reaches(net: &Netns, from: u64, to: u64, port: u16) -> bool {
        let addr: SocketAddr = format!("10.77.0.{to}:{port}").parse().expect("addr");
        in_ns(net.ns_name(from), move || match TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(700),
        ) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_millis(700)));
                let mut b = [0u8; 2];
                s.read_exact(&mut b).is_ok() && &b == b"hi"
            }
            Err(_) => false,
        })
    }

    /// The partition mechanism itself: a cut drops one direction only, both
    /// cuts isolate a pair, healing restores it, and other links are
    /// untouched. Needs root (CI runs as root): fails loudly without it.
    #[test]
    fn cuts_drop_packets_one_way_and_heal() {
        assert!(
            netns_available(),
            "this test needs root and `ip netns` (network namespaces) to check partitions"
        );
        let mut net = Netns::create(&[1, 2, 3]).expect("namespaces");
        // A server in each node namespace answering "hi".
        for id in [1u64, 2, 3] {
            let ns = net.ns_name(id);
            std::thread::spawn(move || {
                let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let l = TcpListener::bind(("0.0.0.0", 9911)).expect("bind");
                for s in l.incoming().flatten() {
                    let mut s = s;
                    let _ = s.write_all(b"hi");
                }
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(reaches(&net, 1, 2, 9911) && reaches(&net, 2, 1, 9911));
        assert!(
            reaches(&net, CLIENT_ID, 3, 9911),
            "clients reach every node"
        );
        // One way: 1 -> 2 dropped. TCP needs both ways, so neither side can
        // connect, but 1 <-> 3 is untouched.
        net.cut(1, 2).expect("cut");
        assert!(!reaches(&net, 1, 2, 9911));
        assert!(
            !reaches(&net, 2, 1, 9911),
            "2's SYNs reach 1, but 1's answers vanish"
        );
        assert!(reaches(&net, 1, 3, 9911) && reaches(&net, 3, 2, 9911));
        net.heal_all().expect("heal");
        assert!(net.cuts().is_empty());
        assert!(reaches(&net, 1, 2, 9911) && reaches(&net, 2, 1, 9911));
        let names: Vec<String> = [1, 2, 3, CLIENT_ID]
            .iter()
            .map(|&i| net.ns_name(i))
            .collect();
        drop(net);
        let list = ip(&["netns", "list"]).expect("list");
        for n in names {
            assert!(!list.contains(&n), "{n} deleted");
        }
    }
}
