//! The replicated core as an operator sees it: real `starling serve`
//! processes on loopback, real disks, driven through the admin API and
//! `starling ctl`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use starling::config::RaftSection;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_accept_writes_through_any_node() {
    let cluster = TestCluster::start(3, fast_raft());
    let leader = cluster.wait_leader(1, T).await;
    assert!((1..=3).contains(&leader));
    let s = cluster.status(2).await;
    assert_eq!(s.members.len(), 3);
    assert!(s.members.iter().all(|m| m.membership == "voter"));
    for (via, name) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        let r = cluster.create_user(via, name).await.unwrap();
        assert_eq!(r.jid, format!("{name}@localhost"));
    }
    let (applied, digest) = cluster.wait_converged(3, &[1, 2, 3], T).await;
    assert!(
        applied >= 4,
        "1 membership entry, 1 blank and 3 users at least: {applied}"
    );
    assert_ne!(digest, "0".repeat(32));
    for via in 1..=3 {
        assert_eq!(
            cluster.users(via).await,
            ["alice@localhost", "bob@localhost", "carol@localhost"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_then_restarted_node_catches_up_by_log() {
    let mut cluster = TestCluster::start(3, fast_raft());
    let old = cluster.wait_leader(1, T).await;
    cluster.create_user(old, "before").await.unwrap();
    cluster.kill(old);
    let survivor = (1..=3).find(|id| *id != old).unwrap();
    let new = cluster.wait_leader(survivor, T).await;
    assert_ne!(new, old);
    let other = (1..=3).find(|id| *id != old && *id != new).unwrap();
    // Writes go on, through the leader and through the follower.
    cluster.create_user(new, "after1").await.unwrap();
    cluster.create_user(other, "after2").await.unwrap();
    let s = cluster.status(new).await;
    let dead = s.members.iter().find(|m| m.id == old).unwrap();
    assert!(!dead.reachable && dead.role == "unreachable");

    cluster.start_node(old);
    let (_, digest) = cluster.wait_converged(new, &[1, 2, 3], T).await;
    assert_eq!(
        cluster.users(old).await,
        ["after1@localhost", "after2@localhost", "before@localhost"]
    );
    // Default compaction: nothing was purged, so this was log replication.
    let s = cluster.status(old).await;
    let me = s.members.iter().find(|m| m.id == old).unwrap();
    assert!(
        !me.has_snapshot,
        "no snapshot expected at default thresholds"
    );
    assert_eq!(me.state_digest, digest);
}

/// Delivery-guarantee issue, item 5: a write forwarded to a leader that
/// stopped answering (paused: the proposal may or may not commit when it
/// wakes) is proposed again to the next leader within its deadline, when
/// proposing it twice is harmless (setting a password is). (Before: the
/// follower waited the whole 5 s deadline on the silent leader and
/// answered "timed out waiting for the leader".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_write_through_a_follower_outlives_a_paused_leader() {
    use starling_proto::admin::SetPasswordRequest;
    let cluster = TestCluster::start(3, fast_raft());
    let old = cluster.wait_leader(1, T).await;
    let via = (1..=3).find(|id| *id != old).unwrap();
    cluster.create_user(via, "dana").await.unwrap();
    let conn = cluster.conn(via).await;
    let pid = {
        let n = cluster
            .nodes
            .iter()
            .find(|n| n.config.node_id == old)
            .unwrap();
        nix::unistd::Pid::from_raw(n.child.as_ref().unwrap().id() as i32)
    };
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The follower still believes in the silent leader for an election
    // timeout; the write must not wait out its deadline there.
    let started = std::time::Instant::now();
    let r = conn
        .client
        .clone()
        .set_password(conn.req(SetPasswordRequest {
            jid: "dana".into(),
            password: "new-secret".into(),
        }))
        .await;
    let took = started.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        r.is_ok(),
        "set password through node {via} after {took:?}: {:?}",
        r.err()
    );
    assert!(
        took < Duration::from_millis(4500),
        "took {took:?}: waited out the deadline on the paused leader"
    );
    let new = cluster.wait_leader(via, T).await;
    assert_ne!(new, old, "a new leader was elected meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_catches_up_by_chunked_snapshot() {
    let raft = RaftSection {
        snapshot_after_entries: 10,
        keep_entries_after_snapshot: 0,
        // Several chunks per snapshot.
        snapshot_chunk_bytes: 1024,
        ..fast_raft()
    };
    let mut cluster = TestCluster::start(3, raft);
    let old = cluster.wait_leader(1, T).await;
    cluster.wait_converged(old, &[1, 2, 3], T).await;
    let before = cluster.status(old).await;
    let old_last = before
        .members
        .iter()
        .find(|m| m.id == old)
        .unwrap()
        .last_log_index;
    cluster.kill(old);
    let survivor = (1..=3).find(|id| *id != old).unwrap();
    let leader = cluster.wait_leader(survivor, T).await;
    for i in 0..40 {
        cluster
            .create_user(leader, &format!("user{i}"))
            .await
            .unwrap();
    }
    // The new leader has purged past everything the old one has.
    let deadline = std::time::Instant::now() + T;
    loop {
        let s = cluster.status(leader).await;
        let l = s.members.iter().find(|m| m.id == leader).unwrap();
        if l.has_snapshot && l.purged_index > old_last + 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leader never purged: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.start_node(old);
    let (_, digest) = cluster.wait_converged(leader, &[1, 2, 3], T).await;
    assert_eq!(cluster.users(old).await.len(), 40);
    let s = cluster.status(old).await;
    let me = s.members.iter().find(|m| m.id == old).unwrap();
    assert!(me.has_snapshot, "{me:?}");
    assert_eq!(me.state_digest, digest);
    assert!(
        cluster.log_of(old).contains("installed snapshot"),
        "the restarted node should report installing a snapshot:\n{}",
        cluster.log_of(old)
    );
}

/// Issue 13, part 7: the admin port's reflection, v1 and v1alpha, lists
/// exactly the services the port serves (not the raft and mesh services,
/// which answer only on the raft port), and resolves them; `ctl status`
/// gives every member's client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_offers_reflection_and_health() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::{v1, v1alpha};

    let cluster = TestCluster::start(2, fast_raft());
    cluster.wait_leader(1, T).await;
    let endpoint = format!("http://{}", cluster.admin_addr(1));
    let ch = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(ch.clone());
    let r = health
        .check(HealthCheckRequest {
            service: "starling.admin.v1.Admin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, 1, "SERVING");

    let mut expected: Vec<String> = starling::admin::SERVICES
        .iter()
        .map(|s| s.to_string())
        .collect();
    expected.sort();
    assert!(expected.contains(&"grpc.reflection.v1alpha.ServerReflection".to_string()));

    // v1: the list, then the file of the Admin service.
    {
        use v1::server_reflection_client::ServerReflectionClient;
        use v1::server_reflection_request::MessageRequest;
        use v1::server_reflection_response::MessageResponse;
        use v1::ServerReflectionRequest;
        let mut refl = ServerReflectionClient::new(ch.clone());
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "starling.admin.v1.Admin".into(),
                )),
            },
        ];
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let reply = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, expected, "v1 lists what the admin port serves");
        let reply = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(
                reply.message_response,
                Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
            ),
            "{reply:?}"
        );
    }
    // v1alpha (Python's grpc_reflection, older grpcurl): the same.
    {
        use v1alpha::server_reflection_client::ServerReflectionClient;
        use v1alpha::server_reflection_request::MessageRequest;
        use v1alpha::server_reflection_response::MessageResponse;
        use v1alpha::ServerReflectionRequest;
        let mut refl = ServerReflectionClient::new(ch);
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "grpc.health.v1.Health".into(),
                )),
            },
        ];
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .expect("grpc.reflection.v1alpha served")
            .into_inner();
        let reply = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, expected, "v1alpha lists what the admin port serves");
        let reply = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(
                reply.message_response,
                Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
            ),
            "{reply:?}"
        );
    }

    // Every member's client address, though `initial_cluster` has none.
    let status = cluster.status(1).await;
    assert_eq!(status.members.len(), 2, "{status:?}");
    for m in &status.members {
        assert_eq!(
            m.client_addr,
            cluster.client_addr(m.id).to_string(),
            "{status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_fourth_node_then_remove_one() {
    let mut cluster = TestCluster::start(3, fast_raft());
    let leader = cluster.wait_leader(1, T).await;
    cluster.create_user(leader, "early").await.unwrap();
    // Node 4 joins later: no initial_cluster, so it never initializes.
    let ports = free_ports(2);
    let c4 = node_config(
        cluster.dir.path(),
        4,
        ports[0],
        ports[1],
        &cluster.secret,
        &[],
        &fast_raft(),
    );
    cluster.add_config(c4);
    cluster.start_node(4);
    let (raft4, admin4) = (cluster.raft_addr(4), cluster.admin_addr(4));
    let admin1 = cluster.admin_addr(1);
    let (ok, out, err) = ctl(&[
        "--addr",
        &admin1,
        "add-node",
        "--id",
        "4",
        "--raft-addr",
        &raft4,
        "--admin-addr",
        &admin4,
    ]);
    assert!(ok, "add-node failed: {out} {err}");
    assert!(out.contains("voters:   [1, 2, 3, 4]"), "{out}");
    cluster.wait_converged(1, &[1, 2, 3, 4], T).await;
    assert_eq!(cluster.users(4).await, ["early@localhost"]);

    // Remove a follower that is not node 4.
    let gone = (1..=3).find(|id| *id != leader).unwrap();
    let (ok, out, err) = ctl(&[
        "--addr",
        &cluster.admin_addr(4),
        "--json",
        "remove-node",
        "--id",
        &gone.to_string(),
    ]);
    assert!(ok, "remove-node failed: {out} {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let voters: Vec<u64> = v["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(voters.len(), 3);
    assert!(!voters.contains(&gone));
    let s = cluster.status(leader).await;
    assert_eq!(s.members.len(), 3);
    cluster.create_user(4, "late").await.unwrap();
    let rest: Vec<u64> = (1..=4).filter(|id| *id != gone).collect();
    cluster.wait_converged(leader, &rest, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_identity_and_data_and_never_reinitializes() {
    let mut cluster = TestCluster::start(3, fast_raft());
    let leader = cluster.wait_leader(1, T).await;
    cluster.create_user(leader, "durable").await.unwrap();
    let (_, digest) = cluster.wait_converged(1, &[1, 2, 3], T).await;
    for id in 1..=3 {
        assert!(
            cluster.stop(id),
            "node {id} did not stop cleanly:\n{}",
            cluster.log_of(id)
        );
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_leader(1, T).await;
    let (_, digest_after) = cluster.wait_converged(1, &[1, 2, 3], T).await;
    assert_eq!(cluster.users(2).await, ["durable@localhost"]);
    // Same state; at most a new blank entry from the new leader changes the
    // applied index, never the state.
    assert_eq!(digest, digest_after);
    assert_eq!(
        cluster.log_of(1).matches("initialized new cluster").count(),
        1
    );

    // The same data dir under another node id is refused, naming both ids.
    cluster.stop(3);
    let mut c = cluster.nodes[2].config.clone();
    c.node_id = 9;
    c.initial_cluster.clear();
    let path = cluster.dir.path().join("wrong-id.toml");
    std::fs::write(&path, toml::to_string_pretty(&c).unwrap()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to node 3") && err.contains("configured as 9"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_account_created_at_once_through_two_nodes_succeeds_once() {
    let cluster = TestCluster::start(3, fast_raft());
    cluster.wait_leader(1, T).await;
    for round in 0..5 {
        let name = format!("race{round}");
        let (a, b) = tokio::join!(cluster.create_user(2, &name), cluster.create_user(3, &name));
        let oks = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "round {round}: {a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert_eq!(loser.unwrap_err().code(), tonic::Code::AlreadyExists);
    }
    assert_eq!(cluster.users(1).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_node_and_no_quorum_are_clear_failures() {
    let mut cluster = TestCluster::start(3, fast_raft());
    let leader = cluster.wait_leader(1, T).await;
    let admin = cluster.admin_addr(leader);
    let (ok, _, err) = ctl(&["--addr", &admin, "remove-node", "--id", "99"]);
    assert!(!ok);
    assert!(err.contains("node 99 is not a member"), "{err}");
    let (ok, _, err) = ctl(&["--addr", &admin, "user", "delete", "nobody"]);
    assert!(!ok);
    assert!(err.contains("no such user nobody@localhost"), "{err}");
    let (ok, _, err) = ctl_as(
        &["--addr", &admin, "user", "create", "x@elsewhere"],
        Some(ADMIN_TOKEN),
        "p\n",
    );
    assert!(!ok);
    assert!(err.contains("not in this server's domain"), "{err}");

    // Lose quorum: keep only one follower alive.
    let keep = (1..=3).find(|id| *id != leader).unwrap();
    for id in 1..=3 {
        if id != keep {
            cluster.kill(id);
        }
    }
    let admin = cluster.admin_addr(keep);
    let started = std::time::Instant::now();
    let (ok, _, err) = ctl(&[
        "--addr",
        &admin,
        "--timeout",
        "20",
        "remove-node",
        "--id",
        &leader.to_string(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("no quorum") || err.contains("outcome unknown"),
        "{err}"
    );
    let (ok, _, err) = ctl_as(
        &["--addr", &admin, "--timeout", "20", "user", "create", "q"],
        Some(ADMIN_TOKEN),
        "p\n",
    );
    assert!(!ok);
    assert!(
        err.contains("no quorum") || err.contains("outcome unknown"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failures must not hang"
    );
    // Reads still answer, and status names the unreachable members.
    let (ok, out, _) = ctl(&["--addr", &admin, "status"]);
    assert!(ok);
    assert!(out.contains("UNREACHABLE"), "{out}");
    // A node nobody listens on.
    let port = free_ports(1)[0];
    let (ok, _, err) = ctl(&["--addr", &format!("127.0.0.1:{port}"), "status"]);
    assert!(!ok);
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_and_cluster_secret_are_enforced() {
    let cluster = TestCluster::start_with(3, fast_raft(), |c| {
        c.admin_token = Some("s3cret-token".into())
    });
    let admin = cluster.admin_addr(1);
    // Wait for the cluster through the authorized path.
    let deadline = std::time::Instant::now() + T;
    loop {
        let (ok, out, _) = ctl(&[
            "--addr",
            &admin,
            "--token",
            "s3cret-token",
            "--json",
            "status",
        ]);
        if ok && out.contains("\"leader_id\": ") && !out.contains("\"leader_id\": null") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no leader: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, _, err) = ctl_as(&["--addr", &admin, "status"], None, "");
    assert!(!ok);
    assert!(err.contains("not authorized"), "{err}");
    let (ok, _, err) = ctl(&["--addr", &admin, "--token", "wrong", "user", "list"]);
    assert!(!ok);
    assert!(
        err.contains("not authorized") && err.contains("wrong admin token"),
        "{err}"
    );
    // The password comes on standard input, never in argv.
    let (ok, out, err) = ctl_as(
        &[
            "--addr",
            &admin,
            "--token",
            "s3cret-token",
            "user",
            "create",
            "tok",
        ],
        None,
        "p\n",
    );
    assert!(ok, "{out}{err}");
    let (ok, _, err) = ctl_as(
        &[
            "--addr",
            &admin,
            "--token",
            "s3cret-token",
            "user",
            "create",
            "argv",
            "--password",
            "p",
        ],
        None,
        "",
    );
    assert!(
        !ok && err.contains("not taken on the command line"),
        "{err}"
    );
    // A token file others can read is refused; a 0600 one is used.
    let file = cluster.dir.path().join("token");
    std::fs::write(&file, "s3cret-token\n").unwrap();
    let set_mode = |m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).unwrap();
    };
    set_mode(0o644);
    let file_s = file.to_str().unwrap();
    let (ok, _, err) = ctl_as(
        &["--addr", &admin, "--token-file", file_s, "status"],
        None,
        "",
    );
    assert!(!ok && err.contains("chmod 600"), "{err}");
    set_mode(0o600);
    let (ok, out, err) = ctl_as(
        &["--addr", &admin, "--token-file", file_s, "user", "list"],
        None,
        "",
    );
    assert!(ok && out.contains("tok@localhost"), "{out}{err}");
    // RFC 6750 §2.1: the scheme is case-insensitive (`bearer` was refused).
    for scheme in ["bearer", "BEARER"] {
        let mut admin_client =
            starling_proto::admin::admin_client::AdminClient::connect(format!("http://{admin}"))
                .await
                .unwrap();
        let mut req = tonic::Request::new(starling_proto::admin::ListUsersRequest {});
        req.metadata_mut().insert(
            "authorization",
            format!("{scheme} s3cret-token").parse().unwrap(),
        );
        let users = admin_client.list_users(req).await.unwrap().into_inner();
        assert!(users.users.iter().any(|u| u.jid == "tok@localhost"));
    }

    // The raft port: a member's certificate without the cluster secret gets
    // nothing (the secret is still checked, inside TLS).
    let tls = member_tls(&cluster, 1);
    let stranger = starling_raft::network::Peers::new("not-the-cluster-secret")
        .unwrap()
        .with_tls(&tls);
    let mut client = stranger.client(&cluster.raft_addr(1)).unwrap();
    let e = client
        .node_info(starling_proto::raft::Empty {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = client
        .append_entries(starling_proto::raft::Payload {
            data: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // With the secret but garbage in the payload: a clear error, no crash.
    let insider = starling_raft::network::Peers::new(&cluster.secret)
        .unwrap()
        .with_tls(&tls);
    let mut client = insider.client(&cluster.raft_addr(1)).unwrap();
    let e = client
        .append_entries(starling_proto::raft::Payload {
            data: vec![0xc1, 0xff],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    client
        .node_info(starling_proto::raft::Empty {})
        .await
        .unwrap();
}

/// Node `id`'s certificate, key and the cluster CA, as a member holds them.
fn member_tls(cluster: &TestCluster, id: u64) -> starling_raft::tls::ClusterTls {
    starling::cluster_tls::load(&cluster_tls_of(cluster.dir.path(), id)).unwrap()
}

/// Issue 10 item 6: the raft port (raft and mesh) speaks only mutual TLS
/// with certificates of the cluster CA. A caller in clear text, or with a
/// certificate from another CA, is refused before any RPC, even holding the
/// cluster secret; the cluster itself works through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_port_refuses_callers_without_a_cluster_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::start(3, fast_raft());
    cluster.wait_leader(1, T).await;
    for via in 1..=3 {
        cluster
            .create_user(via, &format!("tls{via}"))
            .await
            .unwrap();
    }
    let raft = cluster.raft_addr(2);

    // Clear text: an HTTP/2 client preface and SETTINGS frame get no HTTP/2
    // answer (today's main answers with its own SETTINGS frame: the secret
    // header would follow in clear). TLS answers a non-handshake with an
    // alert record (0x15) or closes.
    let mut tcp = tokio::net::TcpStream::connect(&raft).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the raft port neither answered nor closed")
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "the raft port answered clear text: {:02x?}",
        &buf[..n]
    );

    // A gRPC client in clear text, holding the secret: every call fails.
    let plain = starling_raft::network::Peers::new(&cluster.secret).unwrap();
    assert_refused(&plain, &raft).await;

    // TLS with a certificate of another CA (the secret right, the cluster
    // CA trusted): the server refuses the client certificate.
    let other = tempfile::tempdir().unwrap();
    write_cluster_tls(other.path());
    let foreign = starling::cluster_tls::load(&cluster_tls_of(other.path(), 1)).unwrap();
    let mut forged = member_tls(&cluster, 1);
    forged.cert_pem = foreign.cert_pem.clone();
    forged.key_pem = foreign.key_pem.clone();
    for tls in [forged, foreign] {
        let peers = starling_raft::network::Peers::new(&cluster.secret)
            .unwrap()
            .with_tls(&tls);
        assert_refused(&peers, &raft).await;
    }

    // A member's certificate works, and the cluster still takes writes
    // through any node.
    let member = starling_raft::network::Peers::new(&cluster.secret)
        .unwrap()
        .with_tls(&member_tls(&cluster, 3));
    member
        .client(&raft)
        .unwrap()
        .node_info(starling_proto::raft::Empty {})
        .await
        .unwrap();
    for via in 1..=3 {
        cluster
            .create_user(via, &format!("after{via}"))
            .await
            .unwrap();
    }
    let users = cluster.users(2).await;
    for name in ["tls1", "tls3", "after1", "after3"] {
        assert!(users.iter().any(|u| u.starts_with(name)), "{users:?}");
    }
}

/// Every raft call and the mesh link from `peers` to `raft` fail.
async fn assert_refused(peers: &starling_raft::network::Peers, raft: &str) {
    let mut client = peers.client(raft).unwrap();
    assert!(client
        .node_info(starling_proto::raft::Empty {})
        .await
        .is_err());
    assert!(client
        .append_entries(starling_proto::raft::Payload { data: vec![1] })
        .await
        .is_err());
    assert!(client
        .propose(starling_proto::raft::Payload { data: vec![1] })
        .await
        .is_err());
    let mut mesh = starling_proto::mesh::mesh_client::MeshClient::with_interceptor(
        peers.channel(raft).unwrap(),
        peers.add_secret(),
    );
    assert!(mesh
        .link(futures::stream::empty::<starling_proto::mesh::Envelope>())
        .await
        .is_err());
}

#[test]
fn malformed_configs_exit_non_zero_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("node_id = 0\ndata_dir = \"d\"\nraft_addr = \"127.0.0.1:1\"\ncluster_secret = \"0123456789abcdef\"\n", "`node_id`"),
        ("node_id = 1\ndata_dir = \"d\"\nraft_addr = \"nope\"\ncluster_secret = \"0123456789abcdef\"\n", "raft_addr"),
        ("node_id = 1\ndata_dir = \"d\"\nraft_addr = \"127.0.0.1:1\"\ncluster_secret = \"short\"\n", "`cluster_secret`"),
        ("node_id = 1\ndata_dir = \"d\"\nraft_addr = \"127.0.0.1:1\"\ncluster_secret = \"0123456789abcdef\"\nadmin_addr = \"0.0.0.0:7101\"\n", "`admin_token`"),
        // No token on loopback either, unless the operator opts out.
        ("node_id = 1\ndata_dir = \"d\"\nraft_addr = \"127.0.0.1:1\"\ncluster_secret = \"0123456789abcdef\"\n", "`admin_token`: required"),
        ("node_id = 1\ndata_dir = \"d\"\nraft_addr = \"127.0.0.1:1\"\ncluster_secret = \"0123456789abcdef\"\nadmin_insecure_no_token = true\nadmin_addr = \"0.0.0.0:7101\"\n", "`admin_token`"),
        ("node_id = 1\ndata_dir = \"d\"\nraft_addr = \"127.0.0.1:1\"\ncluster_secret = \"0123456789abcdef\"\nadmin_token = \"t\"\n[xmpp]\nregistration_interval_secs = 0\n", "`xmpp.registration_interval_secs`"),
        ("node_id = 1\ndata_dir = \"d\"\nraft_addr = \"127.0.0.1:1\"\ncluster_secret = \"0123456789abcdef\"\ncolour = 1\n", "colour"),
        ("node_id = 1\ndata_dir = \"d\"\nraft_addr = \"10.9.9.9:1\"\ncluster_secret = \"0123456789abcdef\"\nadmin_token = \"t\"\n", "`cluster_tls`"),
        ("this is not toml", "config file"),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "case {i}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "case {i}: {err}");
        assert!(
            !dir.path().join("d").exists(),
            "nothing may be created for a bad config"
        );
    }
    // Cluster certificates that cannot be read: refused before anything
    // is created, naming the file.
    let path = dir.path().join("nocert.toml");
    std::fs::write(&path, "node_id = 1\ndata_dir = \"d\"\nraft_addr = \"127.0.0.1:1\"\ncluster_secret = \"0123456789abcdef\"\nadmin_token = \"t\"\n[cluster_tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"c\"\nkey = \"k\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    assert!(!dir.path().join("d").exists());
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/node.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}
