//! The workloads: XMPP clients (and admin API calls) that act as users would
//! while the nemesis works, each recording what it did and what it saw.
//!
//! - [`queue`]: sender/receiver pairs with XEP-0198; every message unique.
//! - [`register`]: concurrent account creation of overlapping names, reads.
//! - [`roster`]: concurrent subscription requests and approvals.
pub mod queue;
pub mod register;
pub mod roster;

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::cluster::{Admin, DOMAIN};
use crate::xmpp::{Conn, XmppError};
use jepsen_lite::history::Recorder;

/// How long one negotiation step may take before the client gives up.
pub const STEP: Duration = Duration::from_secs(5);

/// Where the run is: the workloads watch it to know when to stop sending
/// and when to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Traffic and faults.
    Faults,
    /// Faults are over and the cluster is healed: finish what is pending.
    Finish,
    /// Every recipient logs in and drains.
    Drain,
}

/// What every client task shares.
#[derive(Clone)]
pub struct Ctx {
    pub rec: Recorder,
    /// XMPP direct TLS address of each node.
    pub nodes: Vec<(u64, SocketAddr)>,
    pub admin: Admin,
    /// Prefix that makes message ids unique to the run.
    pub run_id: String,
    pub seed: u64,
    pub stage: watch::Receiver<Stage>,
}

impl Ctx {
    /// A generator seeded from the run's seed and the client's name.
    pub fn rng(&self, name: &str) -> StdRng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        StdRng::seed_from_u64(self.seed ^ h)
    }

    pub fn random_node(&self, rng: &mut StdRng) -> (u64, SocketAddr) {
        self.nodes[rng.gen_range(0..self.nodes.len())]
    }

    pub fn addr_of(&self, id: u64) -> Option<SocketAddr> {
        self.nodes.iter().find(|(n, _)| *n == id).map(|(_, a)| *a)
    }

    pub fn stage(&self) -> Stage {
        *self.stage.borrow()
    }
}

pub fn password_of(user: &str) -> String {
    format!("pw-{user}-secret")
}

pub fn bare(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// Connects to `node` and authenticates `user` (no resource bound yet).
pub async fn connect_auth(ctx: &Ctx, node: u64, user: &str) -> Result<Conn, XmppError> {
    let addr = ctx
        .addr_of(node)
        .ok_or_else(|| XmppError::Unexpected(format!("no node {node}")))?;
    let (mut conn, _features) = Conn::connect(addr, node, DOMAIN, STEP).await?;
    conn.auth(user, &password_of(user), STEP).await?;
    Ok(conn)
}

/// A fresh session: authenticate, bind `resource`, enable XEP-0198.
pub async fn login(
    ctx: &Ctx,
    node: u64,
    user: &str,
    resource: &str,
) -> Result<(Conn, Option<String>), XmppError> {
    let mut conn = connect_auth(ctx, node, user).await?;
    conn.bind(resource, STEP).await?;
    let sm = conn.enable_sm(STEP).await?;
    Ok((conn, sm))
}

/// Creates `users` through the admin API (setup, not part of the history).
pub async fn create_users(admin: &Admin, ids: &[u64], users: &[String]) -> anyhow::Result<()> {
    use starling_proto::admin::CreateUserRequest;
    for u in users {
        let mut tries = 0;
        loop {
            tries += 1;
            let id = ids[tries % ids.len()];
            let res = async {
                let mut c = admin.client(id, Duration::from_secs(3)).await?;
                let r = c
                    .create_user(admin.req(CreateUserRequest {
                        jid: bare(u),
                        password: password_of(u),
                    }))
                    .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(s) => Err(anyhow::anyhow!("{s}")),
                }
            }
            .await;
            match res {
                Ok(()) => break,
                Err(e) if tries < 20 => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e.context(format!("cannot create user {u}"))),
            }
        }
    }
    Ok(())
}

/// Sleeps for a random time in `[lo, hi)` ms.
pub async fn nap(rng: &mut StdRng, lo: u64, hi: u64) {
    let ms = rng.gen_range(lo..hi.max(lo + 1));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
