//! The register workload: concurrent creation of overlapping account names
//! through XEP-0077 (before authentication, RFC 6120 streams) and through
//! the admin API, on different nodes, plus reads (admin `ListUsers` on one
//! node). Each account name is a set-once register; the checker asks
//! whether the history has a linearization.
//!
//! Outcomes: `created`, `exists` (XEP-0077 `conflict`, gRPC
//! `ALREADY_EXISTS`), or unknown: any other error or a timeout may hide a
//! write that commits later, so it is never counted as a failure. Only an
//! argument the server refused before writing is a `fail`.
use std::time::Duration;

use rand::Rng;
use starling_proto::admin::{CreateUserRequest, ListUsersRequest};

use super::{bare, nap, Ctx, Stage, STEP};
use crate::cluster::DOMAIN;
use crate::xmpp::Conn;
use jepsen_lite::history::{Entry, RegF, RegOutcome, Via};

/// Names per generation; a new generation of names every few seconds keeps
/// contention high and histories per name short.
const NAMES: u64 = 4;
const GENERATION_SECS: u64 = 6;
const OP_TIMEOUT: Duration = Duration::from_secs(6);

pub async fn client(ctx: Ctx, i: usize, ops_per_sec: f64) {
    let me = format!("reg{i}");
    let mut rng = ctx.rng(&me);
    let mut op_no = 0u64;
    let pause = (1000.0 / ops_per_sec.max(0.1)) as u64;
    while ctx.stage() == Stage::Faults {
        op_no += 1;
        let op = (i as u64) << 32 | op_no;
        let generation = ctx.rec.now() / 1_000_000 / GENERATION_SECS;
        let key = format!("acct-g{generation}-{}", rng.gen_range(0..NAMES));
        let (node, _) = ctx.random_node(&mut rng);
        let roll = rng.gen_range(0..10);
        let (f, via) = match roll {
            0..=3 => (RegF::Create, Via::Xmpp),
            4..=6 => (RegF::Create, Via::Admin),
            _ => (RegF::Read, Via::Admin),
        };
        ctx.rec.record(Entry::RegInvoke {
            t_us: ctx.rec.now(),
            op,
            process: me.clone(),
            f,
            key: key.clone(),
            via,
            node,
        });
        let outcome = match tokio::time::timeout(OP_TIMEOUT, run(&ctx, f, via, node, &key)).await {
            Ok(o) => o,
            Err(_) => RegOutcome::Unknown("timed out".into()),
        };
        ctx.rec.record(Entry::RegDone {
            t_us: ctx.rec.now(),
            op,
            outcome,
        });
        nap(&mut rng, pause / 2, pause * 3 / 2).await;
    }
}

async fn run(ctx: &Ctx, f: RegF, via: Via, node: u64, key: &str) -> RegOutcome {
    match (f, via) {
        (RegF::Create, Via::Xmpp) => {
            let Some(addr) = ctx.addr_of(node) else {
                return RegOutcome::Fail(format!("no node {node}"));
            };
            let (mut conn, features) = match Conn::connect(addr, node, DOMAIN, STEP).await {
                Ok(c) => c,
                // Nothing was sent: certainly not applied.
                Err(e) => return RegOutcome::Fail(format!("connect: {e}")),
            };
            if features.child("register").is_none() {
                return RegOutcome::Fail("registration not offered".into());
            }
            let r = conn
                .register(key, &super::password_of(key), OP_TIMEOUT)
                .await;
            conn.close().await;
            match r {
                Ok(Ok(true)) => RegOutcome::Created,
                Ok(Ok(false)) => RegOutcome::Exists,
                Ok(Err(cond)) if cond == "bad-request" || cond == "not-acceptable" => {
                    RegOutcome::Fail(cond)
                }
                Ok(Err(cond)) => RegOutcome::Unknown(cond),
                Err(e) => RegOutcome::Unknown(e.to_string()),
            }
        }
        (RegF::Create, Via::Admin) => {
            let mut c = match ctx.admin.client(node, Duration::from_secs(2)).await {
                Ok(c) => c,
                Err(e) => return RegOutcome::Fail(format!("connect: {e}")),
            };
            let r = c
                .create_user(ctx.admin.req(CreateUserRequest {
                    jid: bare(key),
                    password: super::password_of(key),
                }))
                .await;
            match r {
                Ok(_) => RegOutcome::Created,
                Err(s) if s.code() == tonic::Code::AlreadyExists => RegOutcome::Exists,
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    RegOutcome::Fail(s.message().to_string())
                }
                Err(s) => RegOutcome::Unknown(format!("{:?}: {}", s.code(), s.message())),
            }
        }
        (RegF::Read, _) => {
            let mut c = match ctx.admin.client(node, Duration::from_secs(2)).await {
                Ok(c) => c,
                Err(e) => return RegOutcome::Unknown(format!("connect: {e}")),
            };
            match c.list_users(ctx.admin.req(ListUsersRequest {})).await {
                Ok(r) => {
                    let want = bare(key);
                    RegOutcome::Read(r.into_inner().users.iter().any(|u| u.jid == want))
                }
                Err(s) => RegOutcome::Unknown(format!("{:?}: {}", s.code(), s.message())),
            }
        }
    }
}
