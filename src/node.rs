//! Running one node: storage -> raft -> network -> gRPC servers, then the
//! bootstrap task that forms a new cluster, until shutdown.
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_raft::network::{serve_raft, Peers, RaftNet};
use starling_raft::store;
use starling_raft::{ClusterHandle, StarlingNode};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn, Instrument};

use crate::admin;
use crate::config::Config;

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot create or secure data_dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store in data_dir: {0}")]
    Store(#[from] store::OpenError),
    #[error("cannot bind {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::c2s::tls::TlsError),
    #[error(transparent)]
    ClusterTls(#[from] crate::cluster_tls::ClusterTlsError),
    #[error("cluster_tls: {0}")]
    ClusterTlsConfig(tonic::transport::Error),
    #[error("{what} server failed: {source}")]
    Serve {
        what: &'static str,
        source: tonic::transport::Error,
    },
}

/// The node's description in the raft membership.
pub fn self_node(config: &Config) -> StarlingNode {
    StarlingNode {
        raft_addr: config.raft_addr.to_string(),
        admin_addr: config.admin_addr.to_string(),
        client_addr: config.xmpp.client_addr.to_string(),
    }
}

/// Accepted connections with Nagle off: raft and admin messages are small
/// and latency-bound (the server's own `tcp_nodelay` only applies when tonic
/// binds the port itself).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// Runs a node until `shutdown` resolves, then stops raft and the servers.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let id = config.node_id;
    let span = tracing::info_span!("node", node_id = id);
    run_inner(config, shutdown).instrument(span).await
}

async fn run_inner(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let id = config.node_id;
    let raft_config = Arc::new(config.openraft()?);
    // The /metrics token file too.
    let metrics_access = crate::http::access::MetricsAccess::from_config(&config.http)?;
    // Cluster certificates are read before anything is created or bound.
    let cluster_tls = match &config.cluster_tls {
        Some(section) => Some(crate::cluster_tls::load(section)?),
        None => {
            warn!(raft_addr = %config.raft_addr, "no [cluster_tls]: cluster links in clear text");
            None
        }
    };
    // The data dir holds SCRAM keys, rosters and messages: owner only.
    // A tree an older version left 0755/0644 is tightened.
    let data_dir_error = |source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    crate::private_files::create_private_dir(&config.data_dir).map_err(data_dir_error)?;
    let tightened = crate::private_files::tighten_tree(&config.data_dir).map_err(data_dir_error)?;
    if tightened > 0 {
        warn!(
            data_dir = %config.data_dir.display(),
            entries = tightened,
            "took group and other access away from files in data_dir"
        );
    }
    let (log_store, sm) = store::open(&config.data_dir.join("db"), id)?;
    let reader = sm.reader();
    let mut peers =
        Peers::new(&config.cluster_secret).map_err(|e| crate::config::ConfigError::Invalid {
            field: "cluster_secret".into(),
            message: e.to_string(),
        })?;
    // mTLS between nodes, or (validated: loopback or explicitly insecure)
    // plaintext.
    if let Some(tls) = &cluster_tls {
        peers = peers.with_tls(tls);
    }
    let tls = crate::c2s::tls::load_or_create(&crate::c2s::tls::TlsSettings {
        cert: config.xmpp.tls_cert.as_deref(),
        key: config.xmpp.tls_key.as_deref(),
        data_dir: &config.data_dir,
        domain: &config.domain,
    })?;
    info!(cert = %tls.cert_path.display(), fingerprint = %tls.fingerprint, "TLS certificate");
    // Bind every port before raft starts, so a port in use fails fast.
    let raft_listener = bind("raft", config.raft_addr).await?;
    let admin_listener = bind("admin", config.admin_addr).await?;
    let client_listener = bind("xmpp client", config.xmpp.client_addr).await?;
    let direct_listener = match config.xmpp.direct_tls_addr {
        Some(a) => Some(bind("xmpp direct TLS", a).await?),
        None => None,
    };
    let http_listener = match config.http.addr {
        Some(a) => Some(bind("http", a).await?),
        None => None,
    };

    let net = RaftNet {
        id,
        peers: peers.clone(),
    };
    let raft = openraft::Raft::new(id, raft_config, net, log_store, sm)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    let cluster = ClusterHandle::new(
        id,
        raft.clone(),
        reader,
        peers.clone(),
        Duration::from_millis(config.raft.propose_timeout_ms),
    );
    cluster.set_client_addr(config.xmpp.client_addr.to_string());
    let mesh = crate::mesh::MeshLinks::new(cluster.clone(), peers);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (c2s_stop_tx, c2s_stop_rx) = tokio::sync::watch::channel(false);
    let router = crate::router::Router::new(
        cluster.clone(),
        &config.domain,
        mesh,
        crate::router::QueueCaps {
            messages: config.xmpp.max_offline_messages,
            bytes: starling_raft::command::ByteCaps {
                per_user: config.xmpp.max_offline_bytes,
                total: config.xmpp.max_offline_bytes_total,
            },
        },
        crate::router::push::PushLimits {
            coalesce: Duration::from_millis(config.xmpp.push_coalesce_ms),
            min_interval: Duration::from_millis(config.xmpp.push_min_interval_ms),
        },
        stop_rx.clone(),
    );

    router.attach_archiver(crate::router::archiver::Archiver::start(
        cluster.clone(),
        crate::router::archiver::ArchiveConfig::from_section(&config.archive),
        stop_rx.clone(),
    ));

    // XEP-0045: stanzas for the chat service's domain go to it.
    if config.muc.enabled {
        let muc_domain = format!("{}.{}", config.muc.subdomain, config.domain);
        let service = crate::im::muc::Service::new(router.clone(), config.muc.clone());
        router.attach_muc(muc_domain, Arc::new(service));
    }

    // What the mesh receives, and what becomes of what it sends, goes to
    // the router (the mesh keeps only a weak handle: this one lives as
    // long as the node).
    let mesh_host: Arc<dyn crate::mesh::Host> = Arc::new(router.clone());
    router.mesh().attach(&mesh_host);

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut raft_server = tonic::transport::Server::builder();
    if let Some(tls) = &cluster_tls {
        raft_server = raft_server
            .tls_config(tls.server())
            .map_err(NodeError::ClusterTlsConfig)?;
    }
    let raft_server = raft_server
        .tcp_nodelay(true)
        .add_service(serve_raft(cluster.clone(), &config.cluster_secret))
        .add_service(crate::mesh::serve_mesh(
            mesh_host.clone(),
            cluster.clone(),
            &config.cluster_secret,
        ))
        .serve_with_incoming_shutdown(incoming(raft_listener), stopped(stop_rx.clone()));
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readiness =
        crate::readiness::Readiness::new(cluster.clone(), serving.clone(), c2s_stop_rx.clone());
    let admin_server = admin::server(cluster.clone(), &config, readiness.clone())
        .await
        .map_err(|e| NodeError::Raft(format!("admin service: {e}")))?
        .serve_with_incoming_shutdown(incoming(admin_listener), stopped(stop_rx.clone()));
    let raft_task = tokio::spawn(raft_server.in_current_span());
    let admin_task = tokio::spawn(admin_server.in_current_span());
    let boot = tokio::spawn(bootstrap(cluster.clone(), config.clone()).in_current_span());
    let (lost_tx, lost_rx) = tokio::sync::mpsc::unbounded_channel();
    let liveness = tokio::spawn(
        crate::router::liveness::run(
            router.clone(),
            Duration::from_millis(config.xmpp.node_dead_after_ms),
            lost_tx,
        )
        .in_current_span(),
    );
    let announcer = tokio::spawn(
        crate::im::presence::announce_lost_sessions(router.clone(), lost_rx).in_current_span(),
    );
    let exempt = config.xmpp.limits_exempt_nets()?;
    let shared = Arc::new(crate::c2s::Shared {
        config: config.xmpp.clone(),
        domain: config.domain.clone(),
        router: router.clone(),
        cluster: cluster.clone(),
        tls,
        limiter: std::sync::Mutex::new(crate::c2s::auth_limit::AuthLimiter::new(
            auth_limit_config(&config.xmpp, exempt.clone()),
        )),
        admission: std::sync::Mutex::new(crate::c2s::Gate::new(admission_config(
            &config.xmpp,
            exempt.clone(),
        ))),
        registrations: std::sync::Mutex::new(crate::c2s::register_limit::RegistrationLimiter::new(
            crate::c2s::register_limit::RegistrationLimitConfig {
                per_address: config.xmpp.registrations_per_address,
                interval: Duration::from_secs(config.xmpp.registration_interval_secs),
                exempt,
                ..Default::default()
            },
        )),
        resumable: std::sync::Mutex::new(std::collections::HashMap::new()),
        services: crate::im::Services::new(config.pep.clone(), config.server_info.clone()),
        shutdown: c2s_stop_rx,
        serving,
        handshakes: tokio::sync::Semaphore::new(config.xmpp.max_concurrent_handshakes),
    });
    // Address blocks from peers (their authentication throttling) go to
    // ours. Weak: the router outlives nothing it should not.
    let weak = Arc::downgrade(&shared);
    router.on_auth_block(Box::new(move |key, duration| {
        if let Some(shared) = weak.upgrade() {
            let mut l = shared.limiter.lock().unwrap_or_else(|p| p.into_inner());
            l.block_from_peer(key, duration, std::time::Instant::now());
        }
    }));
    let c2s = tokio::spawn(
        serve_clients(shared.clone(), client_listener, direct_listener).in_current_span(),
    );
    let http = http_listener.map(|listener| {
        let tls = config.http.tls.then(|| shared.tls.http.clone());
        let state = crate::http::HttpState {
            c2s: shared.clone(),
            config: Arc::new(config.http.clone()),
            readiness,
            tls: tls.is_some(),
            metrics_access: Arc::new(metrics_access),
        };
        tokio::spawn(crate::http::serve(state, listener, tls).in_current_span())
    });
    info!(raft_addr = %config.raft_addr, admin_addr = %config.admin_addr, client_addr = %config.xmpp.client_addr, "node started");

    let mut raft_task = raft_task;
    let mut admin_task = admin_task;
    let early = tokio::select! {
        _ = shutdown => None,
        r = &mut raft_task => Some(("raft", r)),
        r = &mut admin_task => Some(("admin", r)),
    };
    info!("shutting down");
    boot.abort();
    liveness.abort();
    announcer.abort();
    // Sessions close their streams (system-shutdown) and unbind while raft
    // is still up; give them a moment.
    let _ = c2s_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while shared.admission.lock().map(|g| g.open()).unwrap_or((0, 0)) != (0, 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    c2s.abort();
    if let Some(h) = http {
        h.abort();
    }
    // Messages whose guard has not committed yet: let them finish, so what
    // clients sent just before the stop is stored (their acks are lost with
    // the connections; the outcome is unknown to them, never wrong).
    router.wait_for_guards(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft shutdown");
    }
    let wait = Duration::from_secs(5);
    let _ = tokio::time::timeout(wait, async {
        if early.is_none() {
            let _ = (&mut raft_task).await;
            let _ = (&mut admin_task).await;
        }
    })
    .await;
    if let Some((what, Ok(Err(source)))) = early {
        return Err(NodeError::Serve { what, source });
    }
    info!("stopped");
    Ok(())
}

/// The authentication throttling of `[xmpp]` (see `c2s::auth_limit`).
fn auth_limit_config(
    x: &crate::config::XmppSection,
    exempt: Vec<crate::c2s::addr::IpNet>,
) -> crate::c2s::auth_limit::AuthLimitConfig {
    crate::c2s::auth_limit::AuthLimitConfig {
        delay_after: x.auth_delay_after_failures,
        block_after: x.auth_failures_per_address,
        window: Duration::from_secs(x.auth_window_secs),
        block_for: Duration::from_secs(x.auth_block_secs),
        max_block: Duration::from_secs(x.auth_max_block_secs),
        account_slow_after: x.auth_failures_per_account,
        max_delay: Duration::from_millis(x.auth_max_delay_ms),
        exempt,
        ..Default::default()
    }
}

/// The connection admission limits of `[xmpp]` (see `c2s::admission`).
fn admission_config(
    x: &crate::config::XmppSection,
    exempt: Vec<crate::c2s::addr::IpNet>,
) -> crate::c2s::admission::AdmissionConfig {
    crate::c2s::admission::AdmissionConfig {
        max_preauth: x.max_preauth_connections,
        max_sessions: x.max_connections,
        preauth_per_address: x.preauth_connections_per_address,
        preauth_per_prefix: x.preauth_connections_per_prefix,
        per_address: x.connections_per_address,
        per_prefix: x.connections_per_prefix,
        accept_rate: f64::from(x.accepts_per_second_per_address),
        accept_burst: x.accept_burst_per_address,
        exempt,
        ..Default::default()
    }
}

/// Serves clients once this node's stale session bindings (from before a
/// restart) are gone from the shared table: binding new sessions before
/// that could see them dropped.
async fn serve_clients(
    shared: Arc<crate::c2s::Shared>,
    plain: TcpListener,
    direct: Option<TcpListener>,
) {
    let node = shared.router.node();
    let mut logged = false;
    loop {
        match shared
            .cluster
            .write(starling_raft::command::Command::DropNodeSessions { node, term: None })
            .await
        {
            Ok(_) => {
                // This node's occupants of its previous life leave their
                // rooms too (XEP-0045: their sessions are gone).
                if shared
                    .cluster
                    .write(starling_raft::command::Command::MucDropNode { node })
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            Err(e) => {
                if !logged {
                    info!(error = %e, "waiting for the cluster before serving clients");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    info!("serving XMPP clients");
    shared
        .serving
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let plain_task =
        tokio::spawn(crate::c2s::serve(shared.clone(), plain, false).in_current_span());
    if let Some(d) = direct {
        crate::c2s::serve(shared, d, true).await;
    }
    let _ = plain_task.await;
}

/// Forms a new cluster from `initial_cluster`, at most once, from the
/// member with the lowest id, and only when every listed member answers and
/// reports no raft state at all. A member that already has state (restart,
/// or a cluster that exists) means there is nothing to initialize: stop.
async fn bootstrap(cluster: ClusterHandle, config: Config) {
    let Some(lowest) = config.initial_cluster.iter().map(|m| m.id).min() else {
        return;
    };
    if lowest != config.node_id {
        return;
    }
    let members: BTreeMap<u64, StarlingNode> = config
        .initial_cluster
        .iter()
        .map(|m| {
            (
                m.id,
                StarlingNode {
                    raft_addr: m.raft_addr.to_string(),
                    admin_addr: m.admin_addr.to_string(),
                    client_addr: String::new(),
                },
            )
        })
        .collect();
    let mut waited_log = false;
    loop {
        if !cluster.report().pristine {
            return;
        }
        let mut all_pristine = true;
        let mut missing = Vec::new();
        for (peer, node) in &members {
            if *peer == config.node_id {
                continue;
            }
            match cluster
                .peer_report(&node.raft_addr, Duration::from_millis(500))
                .await
            {
                Ok(r) if r.id != *peer => {
                    warn!(
                        peer,
                        answered = r.id,
                        "initial_cluster address answered with another node id"
                    );
                    all_pristine = false;
                    missing.push(*peer);
                }
                Ok(r) if !r.pristine => {
                    info!(peer, "a member already has raft state: not initializing");
                    return;
                }
                Ok(_) => {}
                Err(_) => {
                    all_pristine = false;
                    missing.push(*peer);
                }
            }
        }
        if all_pristine {
            match cluster.raft().initialize(members.clone()).await {
                Ok(()) => {
                    info!(members = ?members.keys().collect::<Vec<_>>(), "initialized new cluster")
                }
                Err(e) => info!(error = %e, "not initializing"),
            }
            return;
        }
        if !waited_log {
            info!(
                ?missing,
                "waiting for every initial member before forming the cluster"
            );
            waited_log = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
