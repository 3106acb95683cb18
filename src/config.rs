//! Node configuration: one TOML file, one struct, validated before any port
//! is bound. Every field's default is in its doc comment; unknown keys are
//! rejected so a typo cannot silently fall back to a default.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod http;
pub use http::HttpSection;

/// A configuration problem, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// One node's configuration (`starling serve --config node.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's raft id: a positive integer, unique in the cluster and
    /// never reused. Required.
    pub node_id: u64,
    /// Directory of this node's sled database. Required. Created if missing;
    /// a directory that belongs to another node id is refused.
    pub data_dir: PathBuf,
    /// The XMPP domain this cluster serves. Default: `"localhost"`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Intra-cluster address: raft RPCs and forwarded proposals. Required.
    pub raft_addr: SocketAddr,
    /// Admin gRPC address. Default: `127.0.0.1:7101`.
    #[serde(default = "default_admin_addr")]
    pub admin_addr: SocketAddr,
    /// Shared secret every node presents to the others on the raft port
    /// (at least 16 printable ASCII characters). Required.
    pub cluster_secret: String,
    /// Admin calls must carry `authorization: Bearer <token>` (the scheme
    /// in any case, RFC 6750 §2.1). Required, even on loopback: any local
    /// user can reach a loopback port, and the admin API creates accounts
    /// and changes membership. Keep the config file mode 0600 (`starling
    /// dev` writes it so). Default: unset, which refuses to start unless
    /// `admin_insecure_no_token` is set.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Serve the admin API without a token, to anyone who can reach
    /// `admin_addr`. Only allowed while `admin_addr` is loopback, and only
    /// for a machine with no other users. Default: `false`.
    #[serde(default)]
    pub admin_insecure_no_token: bool,
    /// The members that form a new cluster, as in etcd's `--initial-cluster`.
    /// The member with the lowest id initializes the cluster, once, when every
    /// listed member is reachable and none has any raft state. Leave empty on
    /// a node that will be added later with `starling ctl add-node`.
    /// Default: empty.
    #[serde(default)]
    pub initial_cluster: Vec<Member>,
    /// Raft timing and log compaction.
    #[serde(default)]
    pub raft: RaftSection,
    /// Client connections and IM behaviour.
    #[serde(default)]
    pub xmpp: XmppSection,
    /// XEP-0313 message archive: retention, paging, batching.
    #[serde(default)]
    pub archive: ArchiveSection,
    /// XEP-0045 multi-user chat: the service's address and its limits.
    #[serde(default)]
    pub muc: MucSection,
    /// XEP-0163 PEP, XEP-0054 vCards, XEP-0049 private storage: limits.
    #[serde(default)]
    pub pep: PepSection,
    /// XEP-0157 contact addresses and XEP-0455 status pages in the
    /// server's disco#info.
    #[serde(default)]
    pub server_info: ServerInfoSection,
    /// The HTTP listener: XMPP over WebSocket (RFC 7395), XEP-0156
    /// discovery, health. Default: off.
    #[serde(default)]
    pub http: HttpSection,
    /// Mutual TLS on the raft port (raft and mesh traffic between nodes).
    /// Default: unset, which is allowed only while `raft_addr` is loopback
    /// or `insecure_plaintext_cluster` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_tls: Option<ClusterTlsSection>,
    /// Run the cluster links without TLS on a non-loopback `raft_addr`:
    /// session bindings, SCRAM keys, stanzas and the cluster secret then
    /// cross the network in clear. Only for a network you trust entirely.
    /// Ignored when `cluster_tls` is set. Default: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plaintext_cluster: bool,
}

/// `[cluster_tls]`: mutual TLS between nodes. Every node presents `cert`,
/// signed by the cluster CA `ca`, and accepts only peers whose certificate
/// chains to `ca`. See README "Cluster TLS" for making them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsSection {
    /// PEM certificate of the cluster CA. Required.
    pub ca: PathBuf,
    /// PEM certificate chain of this node, signed by `ca`, with the DNS
    /// subject alternative name `server_name`. Required.
    pub cert: PathBuf,
    /// PEM private key of `cert` (keep it mode 0600). Required.
    pub key: PathBuf,
    /// The DNS name every node certificate carries and peers check (they
    /// dial IP addresses, so this name, not the address, is verified).
    /// Default: `"starling-cluster"`.
    #[serde(default = "default_cluster_server_name")]
    pub server_name: String,
}

fn default_cluster_server_name() -> String {
    starling_raft::tls::DEFAULT_SERVER_NAME.to_string()
}

/// `[pep]`: per-account data a client stores on the server (`im::pep`,
/// `im::vcard`, `im::private`). Every node holds all of it in memory and
/// on disk (it is replicated), so these bound each node's memory per
/// account. Every node of a cluster should use the same values (the
/// proposing node's apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PepSection {
    /// Bytes of one PEP item's payload (serialized); more is refused with
    /// `not-acceptable` + `<payload-too-big/>` (XEP-0060 §7.1.3.6). At
    /// most `xmpp.max_stanza_bytes`. Default: 65536 (an XEP-0084 avatar
    /// of about 48 KB).
    pub max_item_bytes: usize,
    /// Items one node keeps (`pubsub#max_items` is lowered to it, and
    /// `max` means it). Default: 256.
    pub max_items_per_node: u32,
    /// PEP nodes of one account; creating one more is refused with
    /// `resource-constraint`. Default: 128.
    pub max_nodes: u32,
    /// Payload bytes of all of one account's PEP items; a publish beyond
    /// is refused with `resource-constraint`. Default: 2097152 (2 MiB).
    pub max_bytes_per_account: u64,
    /// XEP-0115 client versions (`ver`) remembered with the PEP nodes they
    /// want notifications of, for the whole cluster; beyond, a new
    /// version's interests are not stored (its clients get no PEP
    /// notifications until one is forgotten). Default: 10000.
    pub max_caps: u32,
    /// Bytes of one account's XEP-0054 vCard (serialized); more is
    /// refused with `not-acceptable`. At most `xmpp.max_stanza_bytes`.
    /// Default: 65536.
    pub max_vcard_bytes: usize,
    /// Bytes of all of one account's XEP-0049 private XML; a store beyond
    /// is refused with `resource-constraint`. Default: 262144 (256 KiB).
    pub max_private_bytes: u64,
}

impl Default for PepSection {
    fn default() -> Self {
        PepSection {
            max_item_bytes: 64 * 1024,
            max_items_per_node: 256,
            max_nodes: 128,
            max_bytes_per_account: 2 << 20,
            max_caps: 10_000,
            max_vcard_bytes: 64 * 1024,
            max_private_bytes: 256 * 1024,
        }
    }
}

/// `[server_info]`: what the server's disco#info tells about its
/// operators, as an XEP-0128 extended form each: XEP-0157 contact
/// addresses (`http://jabber.org/network/serverinfo`) and XEP-0455
/// out-of-band status pages (`urn:xmpp:sos:0`). Each field is a list of
/// URIs (`mailto:`, `xmpp:`, `https:`); an empty list is left out, and
/// with every list empty the form is. Default: every list empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerInfoSection {
    /// XEP-0157 `abuse-addresses`.
    pub abuse: Vec<String>,
    /// XEP-0157 `admin-addresses`.
    pub admin: Vec<String>,
    /// XEP-0157 `feedback-addresses`.
    pub feedback: Vec<String>,
    /// XEP-0157 `sales-addresses`.
    pub sales: Vec<String>,
    /// XEP-0157 `security-addresses`.
    pub security: Vec<String>,
    /// XEP-0157 `status-addresses`.
    pub status: Vec<String>,
    /// XEP-0157 `support-addresses`.
    pub support: Vec<String>,
    /// XEP-0455 `external-status-addresses`: status pages (`https:` URLs
    /// of a JSON status document) clients may read when this server
    /// cannot be reached.
    pub outage_status: Vec<String>,
}

impl ServerInfoSection {
    /// The XEP-0157 fields, (var, values), in the XEP's order.
    pub fn contact_fields(&self) -> [(&'static str, &[String]); 7] {
        [
            ("abuse-addresses", &self.abuse),
            ("admin-addresses", &self.admin),
            ("feedback-addresses", &self.feedback),
            ("sales-addresses", &self.sales),
            ("security-addresses", &self.security),
            ("status-addresses", &self.status),
            ("support-addresses", &self.support),
        ]
    }
}

/// `[archive]`: the XEP-0313 message archive (`im::mam`,
/// `router::archiver`). Every node of a cluster should use the same
/// retention (the proposing node's applies to each batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSection {
    /// Archive one-to-one messages at all (XEP-0313). Off: nothing is
    /// archived, the sender's ack does not wait for the archive, and
    /// `urn:xmpp:mam:2` is neither advertised nor answered. Default:
    /// `false` (see BENCHMARKS.md for what it costs today).
    pub enabled: bool,
    /// The preference of an account that set none (XEP-0313 §6):
    /// `"always"`, `"roster"` or `"never"`. Default: `"always"`.
    pub default_mode: String,
    /// Messages kept per account; beyond it the oldest are dropped when a
    /// new one is archived. 0: no cap. Every node holds every archive in
    /// memory and on disk, so this bounds both. Default: 10000.
    pub max_entries: u32,
    /// Messages older than this are dropped (at each append for the
    /// owners it touches, and hourly for all). 0: kept forever.
    /// Default: 365.
    pub max_age_days: u32,
    /// Most messages in one page of a query (RSM `max` is capped to it).
    /// Default: 250.
    pub max_page: u32,
    /// The page size of a query without RSM `max`. Default: 50.
    pub default_page: u32,
    /// Longest an archive entry waits for others to share its raft
    /// commit, milliseconds (the sender's ack waits for that commit).
    /// Default: 20. Every commit costs each node a log append, an fsync,
    /// an apply and its sled write whatever its size: at 2 ms the servers
    /// spent 19-26% more CPU for the same messages than at 20 and
    /// saturated at 2,000-3,000 msg/s cross node instead of 5,000-7,500
    /// (BENCHMARKS.md, "The archive on the live path"); 20 ms more before
    /// the sender's ack is not something a user sees.
    pub batch_ms: u64,
    /// Most entries in one commit. Default: 512.
    pub batch_entries: usize,
}

impl Default for ArchiveSection {
    fn default() -> Self {
        ArchiveSection {
            // Off by default: every node holds every archive in memory
            // (up to max_entries per account), and it costs live
            // throughput: on the bench's two cores, cross-node saturation
            // fell from 30,000 msg/s to 5,000-7,500 with it on
            // (BENCHMARKS.md, "The archive on the live path").
            enabled: false,
            default_mode: "always".into(),
            max_entries: 10_000,
            max_age_days: 365,
            max_page: 250,
            default_page: 50,
            batch_ms: 20,
            batch_entries: 512,
        }
    }
}

impl ArchiveSection {
    /// `default_mode`, parsed.
    pub fn default_prefs(&self) -> Result<starling_raft::command::ArchiveDefault, ConfigError> {
        starling_raft::command::ArchiveDefault::parse(&self.default_mode).ok_or_else(|| {
            invalid(
                "archive.default_mode",
                "must be \"always\", \"roster\" or \"never\"",
            )
        })
    }
}

/// `[muc]`: the XEP-0045 multi-user chat service (`im::muc`). Every node
/// of a cluster should use the same values (the proposing node's caps
/// apply to each join and creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucSection {
    /// Serve multi-user chat at all. Default: `true`.
    pub enabled: bool,
    /// The service's subdomain label: rooms are `room@<subdomain>.<domain>`.
    /// Default: `"conference"`.
    pub subdomain: String,
    /// Rooms one user may have created (existing at once); one more is
    /// answered with `resource-constraint`. Default: 10.
    pub max_rooms_per_user: u32,
    /// Occupants of one room at once; a room's own `max_occupants` may be
    /// lower, never higher. Entering a full room is answered with
    /// `service-unavailable` (XEP-0045 §7.2.10; owners and admins still
    /// enter). Default: 200.
    pub max_occupants: u32,
    /// Messages of a room's history kept on each node for newcomers; a
    /// room's `muc#maxhistoryfetch` may be lower. Default: 50.
    pub max_history: u32,
    /// Bytes of a nick; longer is answered with `not-acceptable`.
    /// Default: 64.
    pub max_nick_bytes: usize,
    /// Bytes of a subject, a room name or description; longer is answered
    /// with `policy-violation`. Default: 1024.
    pub max_subject_bytes: usize,
}

impl Default for MucSection {
    fn default() -> Self {
        MucSection {
            enabled: true,
            subdomain: "conference".into(),
            max_rooms_per_user: 10,
            max_occupants: 200,
            max_history: 50,
            max_nick_bytes: 64,
            max_subject_bytes: 1024,
        }
    }
}

/// `[xmpp]`: client-to-server listeners, TLS, authentication, limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XmppSection {
    /// Client-to-server listener (STARTTLS, RFC 6120). Default: `127.0.0.1:5222`.
    pub client_addr: SocketAddr,
    /// Direct TLS listener (XEP-0368, ALPN `xmpp-client`). Default: unset (off).
    pub direct_tls_addr: Option<SocketAddr>,
    /// PEM certificate chain. Default: unset: a self-signed certificate for
    /// `domain` is made at first start and kept in `data_dir/tls/`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`. Default: unset.
    pub tls_key: Option<PathBuf>,
    /// Allow SASL (PLAIN included) on a connection without TLS. Only for
    /// benchmarks on loopback. Default: `false` (TLS is required first).
    pub allow_plaintext: bool,
    /// XEP-0077 in-band registration of new accounts: `"off"` (or
    /// `false`), `"open"` (or `true`): anyone may register, limited per
    /// address by `registrations_per_address`; `"token"`: only a client
    /// that presents an invitation token first (XEP-0445; tokens from
    /// `starling ctl invite create`), for apps that create accounts from
    /// their own backend; each token allows its number of accounts, so the
    /// per-address limit does not apply to it. Default: `"off"` (XEP-0479,
    /// IM suite: "should be supported, but not enabled in default server
    /// configurations"); `starling dev` sets `"open"`.
    pub registration: Registration,
    /// Accounts one address (IPv4 address or IPv6 /64) may register in
    /// `registration_interval_secs` (with `registration = "open"`); further attempts get `not-acceptable`
    /// (XEP-0077 §3.1.1) until the oldest leaves the interval. Addresses in
    /// `limits_exempt` are not limited. 0: no limit. Default: 1 (one per
    /// 10 minutes, as ejabberd's `registration_timeout`).
    pub registrations_per_address: u32,
    /// The interval of `registrations_per_address`, seconds. Default: 600.
    pub registration_interval_secs: u64,
    /// Largest stanza accepted, bytes (larger: `policy-violation` stream
    /// error). Default: 262144 (256 KiB).
    pub max_stanza_bytes: usize,
    /// Deepest element nesting in a stanza. Default: 32.
    pub max_depth: usize,
    /// Most authenticated client connections (sessions) open at once on
    /// this node; beyond it a client that authenticates gets
    /// `resource-constraint`. Connections still negotiating are counted
    /// apart, in `max_preauth_connections`. Default: 10000.
    pub max_connections: usize,
    /// Most connections not yet authenticated open at once on this node,
    /// kept apart from `max_connections` so that half-open streams cannot
    /// take the sessions' capacity. When full, a new connection evicts the
    /// oldest unauthenticated one. Default: 1000.
    pub max_preauth_connections: usize,
    /// Most TLS handshakes (direct TLS and STARTTLS) this node runs at
    /// once; the others wait their turn, within
    /// `negotiation_timeout_secs`. A storm of reconnects (every client of a
    /// node that died, at once) queues here instead of filling the
    /// runtime with handshakes: with 10,000 at once on two cores, raft's
    /// heartbeats waited behind them, leaders changed and logins failed.
    /// Default: 32.
    pub max_concurrent_handshakes: usize,
    /// Most unauthenticated connections from one address. 0: no limit.
    /// Default: 16 (a client needs one, for about a second).
    pub preauth_connections_per_address: usize,
    /// Most unauthenticated connections from one IPv6 /64 (one subscriber,
    /// whatever its host bits). 0: no limit. Default: 64.
    pub preauth_connections_per_prefix: usize,
    /// Most connections (authenticated or not) from one address. 0: no
    /// limit. Default: 256 (room for a NAT of many users).
    pub connections_per_address: usize,
    /// Most connections (authenticated or not) from one IPv6 /64. 0: no
    /// limit. Default: 1024.
    pub connections_per_prefix: usize,
    /// Connections accepted per second from one address (IPv6: one /64),
    /// on average; beyond it they are closed at once. 0: no limit. Default: 10.
    pub accepts_per_second_per_address: u32,
    /// Connections one address (IPv6: one /64) may open in a burst before
    /// `accepts_per_second_per_address` applies. Default: 20.
    pub accept_burst_per_address: u32,
    /// Addresses or ranges (`203.0.113.0/24`, `2001:db8::/48`) that the
    /// per-address connection limits, the authentication throttling and the
    /// registration limit do not apply to. Behind a proxy on this host every client would look
    /// like one of these: the proxy must then do the limiting.
    /// Default: `["127.0.0.1", "::1"]` (local tools, benchmarks and
    /// `starling dev`; the rest of 127.0.0.0/8 is limited like any address).
    pub limits_exempt: Vec<String>,
    /// Most stanzas per second read from one connection; beyond it the
    /// server stops reading (TCP backpressure) rather than failing. Default: 200.
    pub max_stanzas_per_second: u32,
    /// Messages kept in one account's offline queue; beyond it a message
    /// is refused with `resource-constraint` (RFC 6120 §8.3.3.18) before
    /// the sender's ack. While the recipient is online (its queue then
    /// holds copies not yet acknowledged) this and `max_offline_bytes`
    /// count double. Default: 1000.
    pub max_offline_messages: u32,
    /// Bytes (of serialized stanzas) kept in one account's offline queue;
    /// beyond it a message is refused as for `max_offline_messages`. Every
    /// node holds every queue (they are replicated), so this bounds each
    /// node's memory and disk per account. At least `max_stanza_bytes`.
    /// Default: 10485760 (10 MiB).
    pub max_offline_bytes: u64,
    /// Bytes kept in all offline queues together, on every node (each
    /// holds them all); beyond it a message for anyone is refused with
    /// `resource-constraint`. At least `max_offline_bytes`. Every node of a
    /// cluster should use the same value (as for the other caps, the
    /// proposing node's applies). Default: 2147483648 (2 GiB).
    pub max_offline_bytes_total: u64,
    /// Items in one account's roster, pending subscription requests from
    /// others included; a roster set that would add one more is answered
    /// with `resource-constraint`, and so is a subscription stanza that
    /// would add an item to a full roster (the sender's or the contact's).
    /// Changing or removing an item is never refused. This also bounds the
    /// size of one roster result. Default: 1000.
    pub max_roster_items: u32,
    /// JIDs in one account's XEP-0191 block list; a block that would add
    /// more is answered with `resource-constraint` and changes nothing.
    /// Unblocking is never refused. This also bounds the size of one
    /// blocklist result. Default: 1000.
    pub max_block_items: u32,
    /// XEP-0357 push registrations (app server JID and node) one account
    /// may have; enabling one more is answered with `resource-constraint`
    /// (re-enabling an existing one is never refused). Default: 10.
    pub max_push_registrations: u32,
    /// A push is sent this long after the message that triggers it, so a
    /// burst of messages makes one push (its summary counts them).
    /// Milliseconds; 0: at once. Default: 250.
    pub push_coalesce_ms: u64,
    /// Least time between two pushes to one registration from one node;
    /// messages meanwhile are counted into the next push, sent when the
    /// interval is over. Milliseconds; 0: no limit. Default: 5000.
    pub push_min_interval_ms: u64,
    /// Time allowed from connect to a bound resource, seconds. Default: 30.
    pub negotiation_timeout_secs: u64,
    /// A connection silent this long gets a whitespace ping; silent twice
    /// as long it is closed with `connection-timeout`. Seconds. Default: 120.
    pub idle_timeout_secs: u64,
    /// Failed authentications from one address (IPv6: one /64) within
    /// `auth_window_secs` that block it: its attempts get
    /// `temporary-auth-failure` (RFC 6120 §6.5.10) for `auth_block_secs`.
    /// Only the address is blocked, never the account. 0: never block.
    /// Default: 20 (as ejabberd's `mod_fail2ban`).
    pub auth_failures_per_address: u32,
    /// Failed authentications from one address within the window answered
    /// without delay; each further one waits 250 ms, doubling up to
    /// `auth_max_delay_ms`. Default: 5 (as Prosody's `mod_limit_auth`).
    pub auth_delay_after_failures: u32,
    /// Failed authentications of one account (from any address) within the
    /// window after which the failures of addresses that already failed
    /// before are delayed too. Never refuses nor slows a right password,
    /// nor a clean address. 0: off. Default: 5.
    pub auth_failures_per_account: u32,
    /// Window over which failed authentications are counted, seconds.
    /// Default: 600.
    pub auth_window_secs: u64,
    /// Length of an address's first block, seconds; each repeat doubles it
    /// up to `auth_max_block_secs`. Default: 900.
    pub auth_block_secs: u64,
    /// Longest block, seconds; an address with no block for this long
    /// starts again from `auth_block_secs`. Default: 86400.
    pub auth_max_block_secs: u64,
    /// Longest delay before a failed authentication is answered,
    /// milliseconds. Default: 2000.
    pub auth_max_delay_ms: u64,
    /// XEP-0198: how long a lost session can be resumed, seconds. Default: 300.
    pub sm_resume_timeout_secs: u64,
    /// XEP-0484 FAST: how long a token is valid after it is issued (each
    /// FAST login issues the next one), seconds. Default: 1209600 (14 days).
    pub fast_token_lifetime_secs: u64,
    /// XEP-0198: most unacknowledged stanzas kept for one session; beyond it
    /// the session is closed with `policy-violation`. Default: 1000.
    pub sm_max_unacked: usize,
    /// A node that no leader has heard from for this long is considered
    /// dead: its session bindings are dropped from the shared table so its
    /// users' messages go to offline storage. Milliseconds. Default: 3000.
    pub node_dead_after_ms: u64,
    /// Longest a write to one client may take; a client that stops reading
    /// for longer is treated as gone (with XEP-0198 it can resume; what it
    /// did not acknowledge stays in its replicated queue). Seconds. Default: 30.
    pub write_timeout_secs: u64,
}

impl XmppSection {
    /// `limits_exempt`, parsed.
    pub fn limits_exempt_nets(&self) -> Result<Vec<crate::c2s::addr::IpNet>, ConfigError> {
        self.limits_exempt
            .iter()
            .map(|s| {
                s.parse().map_err(|e: crate::c2s::addr::IpNetError| {
                    invalid("xmpp.limits_exempt", e.to_string())
                })
            })
            .collect()
    }
}

impl Default for XmppSection {
    fn default() -> Self {
        XmppSection {
            client_addr: SocketAddr::from(([127, 0, 0, 1], 5222)),
            direct_tls_addr: None,
            tls_cert: None,
            tls_key: None,
            allow_plaintext: false,
            registration: Registration::Off,
            registrations_per_address: 1,
            registration_interval_secs: 600,
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_connections: 10_000,
            max_preauth_connections: 1000,
            max_concurrent_handshakes: 32,
            preauth_connections_per_address: 16,
            preauth_connections_per_prefix: 64,
            connections_per_address: 256,
            connections_per_prefix: 1024,
            accepts_per_second_per_address: 10,
            accept_burst_per_address: 20,
            limits_exempt: vec!["127.0.0.1".into(), "::1".into()],
            max_stanzas_per_second: 200,
            max_offline_messages: 1000,
            max_offline_bytes: 10 << 20,
            max_offline_bytes_total: 2 << 30,
            max_roster_items: 1000,
            max_block_items: 1000,
            max_push_registrations: 10,
            push_coalesce_ms: 250,
            push_min_interval_ms: 5000,
            negotiation_timeout_secs: 30,
            idle_timeout_secs: 120,
            auth_failures_per_address: 20,
            auth_delay_after_failures: 5,
            auth_failures_per_account: 5,
            auth_window_secs: 600,
            auth_block_secs: 900,
            auth_max_block_secs: 86_400,
            auth_max_delay_ms: 2000,
            sm_resume_timeout_secs: 300,
            fast_token_lifetime_secs: 14 * 86_400,
            sm_max_unacked: 1000,
            node_dead_after_ms: 3000,
            write_timeout_secs: 30,
        }
    }
}

/// `[xmpp] registration`: who may create an account by XEP-0077.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Registration {
    /// Nobody: accounts come from the admin API.
    #[default]
    Off,
    /// Anyone, limited per address.
    Open,
    /// A client that presented a valid invitation token (XEP-0445).
    Token,
}

impl Registration {
    pub fn as_str(self) -> &'static str {
        match self {
            Registration::Off => "off",
            Registration::Open => "open",
            Registration::Token => "token",
        }
    }

    /// Whether XEP-0077 account creation is offered at all.
    pub fn enabled(self) -> bool {
        self != Registration::Off
    }
}

impl Serialize for Registration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Registration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// `true`/`false` are what the field took before the modes.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Flag(bool),
            Name(String),
        }
        match Given::deserialize(d)? {
            Given::Flag(false) => Ok(Registration::Off),
            Given::Flag(true) => Ok(Registration::Open),
            Given::Name(n) => match n.as_str() {
                "off" => Ok(Registration::Off),
                "open" => Ok(Registration::Open),
                "token" => Ok(Registration::Token),
                other => Err(serde::de::Error::custom(format!(
                    "registration {other:?}: expected \"off\", \"open\" or \"token\""
                ))),
            },
        }
    }
}

/// One initial cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub raft_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// `[raft]`: timing and compaction knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Leader heartbeat interval, ms. Default: 50.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout, ms. Default: 150.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, ms; also the leader
    /// lease during which followers refuse to vote for another. Default: 300.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    /// Default: 10000.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging node
    /// catches up from the log rather than by snapshot. Default: 1000.
    pub keep_entries_after_snapshot: u64,
    /// Size of one snapshot chunk sent to a lagging node, bytes; must stay
    /// well under the 64 MiB gRPC message limit. Default: 1048576 (1 MiB).
    pub snapshot_chunk_bytes: u64,
    /// Most entries in one append RPC. Default: 256.
    pub max_entries_per_append: u64,
    /// How long a write waits for a leader and for commit before failing, ms.
    /// Default: 5000.
    pub propose_timeout_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_after_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            max_entries_per_append: 256,
            propose_timeout_ms: 5_000,
        }
    }
}

fn default_domain() -> String {
    "localhost".into()
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7101))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule that does not need the network or the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be a positive integer"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        jid::BareJid::new(&self.domain)
            .ok()
            .filter(|j| j.node().is_none())
            .ok_or_else(|| {
                invalid(
                    "domain",
                    format!("{:?} is not a valid XMPP domain", self.domain),
                )
            })?;
        if self.cluster_secret.len() < 16 {
            return Err(invalid("cluster_secret", "must be at least 16 characters"));
        }
        if !self.cluster_secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "cluster_secret",
                "must be printable ASCII without spaces",
            ));
        }
        match &self.admin_token {
            Some(t) if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(invalid(
                    "admin_token",
                    "must be non-empty printable ASCII without spaces",
                ));
            }
            Some(_) if self.admin_insecure_no_token => {
                return Err(invalid(
                    "admin_insecure_no_token",
                    "cannot be set together with admin_token",
                ));
            }
            None if !self.admin_insecure_no_token => {
                return Err(invalid(
                    "admin_token",
                    "required: set admin_token (a random string; keep this file mode 0600), \
                     or admin_insecure_no_token = true to let every local user administer the cluster",
                ));
            }
            None if !self.admin_addr.ip().is_loopback() => {
                return Err(invalid(
                    "admin_token",
                    format!(
                        "required when admin_addr ({}) is not a loopback address \
                         (admin_insecure_no_token is only for loopback)",
                        self.admin_addr
                    ),
                ));
            }
            _ => {}
        }
        if self.cluster_tls.is_none()
            && !self.insecure_plaintext_cluster
            && !self.raft_addr.ip().is_loopback()
        {
            return Err(invalid(
                "cluster_tls",
                format!(
                    "required when raft_addr ({}) is not a loopback address \
                     (or set insecure_plaintext_cluster = true to send cluster traffic in clear)",
                    self.raft_addr
                ),
            ));
        }
        if let Some(t) = &self.cluster_tls {
            if rustls::pki_types::ServerName::try_from(t.server_name.as_str()).is_err() {
                return Err(invalid(
                    "cluster_tls.server_name",
                    format!("{:?} is not a valid DNS name", t.server_name),
                ));
            }
        }
        if self.raft_addr == self.admin_addr {
            return Err(invalid("admin_addr", "must differ from raft_addr"));
        }
        if !self.initial_cluster.is_empty() {
            let mut ids = BTreeSet::new();
            let mut addrs = BTreeSet::new();
            for (i, m) in self.initial_cluster.iter().enumerate() {
                let field = format!("initial_cluster[{i}]");
                if m.id == 0 {
                    return Err(invalid(format!("{field}.id"), "must be a positive integer"));
                }
                if !ids.insert(m.id) {
                    return Err(invalid(
                        format!("{field}.id"),
                        format!("duplicate id {}", m.id),
                    ));
                }
                if !addrs.insert(m.raft_addr) || !addrs.insert(m.admin_addr) {
                    return Err(invalid(field, "duplicate address"));
                }
            }
            if let Some(me) = self.initial_cluster.iter().find(|m| m.id == self.node_id) {
                if me.raft_addr != self.raft_addr {
                    return Err(invalid(
                        "initial_cluster",
                        format!(
                            "lists node {} at raft_addr {}, but raft_addr is {}",
                            me.id, me.raft_addr, self.raft_addr
                        ),
                    ));
                }
                if me.admin_addr != self.admin_addr {
                    return Err(invalid(
                        "initial_cluster",
                        format!(
                            "lists node {} at admin_addr {}, but admin_addr is {}",
                            me.id, me.admin_addr, self.admin_addr
                        ),
                    ));
                }
            } else {
                return Err(invalid(
                    "initial_cluster",
                    format!("does not list this node (node_id {}); leave it empty on a node that joins later", self.node_id),
                ));
            }
        }
        let x = &self.xmpp;
        let taken = [self.raft_addr, self.admin_addr];
        if taken.contains(&x.client_addr) {
            return Err(invalid(
                "xmpp.client_addr",
                "must differ from raft_addr and admin_addr",
            ));
        }
        if let Some(d) = x.direct_tls_addr {
            if taken.contains(&d) || d == x.client_addr {
                return Err(invalid(
                    "xmpp.direct_tls_addr",
                    "must differ from the other listen addresses",
                ));
            }
        }
        let mut listening = vec![self.raft_addr, self.admin_addr, x.client_addr];
        listening.extend(x.direct_tls_addr);
        self.http.validate(&listening)?;
        if x.tls_cert.is_some() != x.tls_key.is_some() {
            return Err(invalid(
                "xmpp.tls_cert",
                "tls_cert and tls_key must be set together",
            ));
        }
        for (field, v, min) in [
            ("xmpp.max_stanza_bytes", x.max_stanza_bytes, 10_000usize),
            ("xmpp.max_depth", x.max_depth, 4),
            ("xmpp.max_connections", x.max_connections, 1),
            ("xmpp.max_preauth_connections", x.max_preauth_connections, 1),
            (
                "xmpp.max_concurrent_handshakes",
                x.max_concurrent_handshakes,
                1,
            ),
            ("xmpp.sm_max_unacked", x.sm_max_unacked, 1),
        ] {
            if v < min {
                return Err(invalid(field, format!("must be at least {min}")));
            }
        }
        for (field, v) in [
            (
                "xmpp.max_stanzas_per_second",
                u64::from(x.max_stanzas_per_second),
            ),
            (
                "xmpp.max_offline_messages",
                u64::from(x.max_offline_messages),
            ),
            ("xmpp.max_roster_items", u64::from(x.max_roster_items)),
            ("xmpp.max_block_items", u64::from(x.max_block_items)),
            (
                "xmpp.max_push_registrations",
                u64::from(x.max_push_registrations),
            ),
            ("xmpp.negotiation_timeout_secs", x.negotiation_timeout_secs),
            ("xmpp.idle_timeout_secs", x.idle_timeout_secs),
            ("xmpp.write_timeout_secs", x.write_timeout_secs),
            ("xmpp.auth_window_secs", x.auth_window_secs),
            ("xmpp.auth_block_secs", x.auth_block_secs),
            (
                "xmpp.registration_interval_secs",
                x.registration_interval_secs,
            ),
            ("xmpp.node_dead_after_ms", x.node_dead_after_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if x.max_offline_bytes < x.max_stanza_bytes as u64 {
            return Err(invalid(
                "xmpp.max_offline_bytes",
                "must be at least xmpp.max_stanza_bytes (else a stanza the server accepts could never be queued)",
            ));
        }
        if x.max_offline_bytes_total < x.max_offline_bytes {
            return Err(invalid(
                "xmpp.max_offline_bytes_total",
                "must be at least xmpp.max_offline_bytes",
            ));
        }
        if x.auth_max_block_secs < x.auth_block_secs {
            return Err(invalid(
                "xmpp.auth_max_block_secs",
                "must be at least xmpp.auth_block_secs",
            ));
        }
        x.limits_exempt_nets()?;
        let a = &self.archive;
        a.default_prefs()?;
        if a.max_page == 0 || a.default_page == 0 || a.batch_entries == 0 {
            return Err(invalid(
                "archive.max_page",
                "max_page, default_page and batch_entries must be positive",
            ));
        }
        if a.default_page > a.max_page {
            return Err(invalid(
                "archive.default_page",
                "must be at most archive.max_page",
            ));
        }
        let m = &self.muc;
        if m.subdomain.is_empty()
            || !m
                .subdomain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid(
                "muc.subdomain",
                "must be one DNS label (letters, digits, '-')",
            ));
        }
        if m.max_occupants == 0 || m.max_rooms_per_user == 0 || m.max_nick_bytes == 0 {
            return Err(invalid(
                "muc.max_occupants",
                "max_occupants, max_rooms_per_user and max_nick_bytes must be positive",
            ));
        }
        if m.max_history > 1000 {
            return Err(invalid("muc.max_history", "must be at most 1000"));
        }
        let p = &self.pep;
        for (field, v) in [
            ("pep.max_item_bytes", p.max_item_bytes as u64),
            ("pep.max_items_per_node", u64::from(p.max_items_per_node)),
            ("pep.max_nodes", u64::from(p.max_nodes)),
            ("pep.max_bytes_per_account", p.max_bytes_per_account),
            ("pep.max_caps", u64::from(p.max_caps)),
            ("pep.max_vcard_bytes", p.max_vcard_bytes as u64),
            ("pep.max_private_bytes", p.max_private_bytes),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        for (field, v) in [
            ("pep.max_item_bytes", p.max_item_bytes),
            ("pep.max_vcard_bytes", p.max_vcard_bytes),
        ] {
            if v > x.max_stanza_bytes {
                return Err(invalid(field, "must be at most xmpp.max_stanza_bytes"));
            }
        }
        if p.max_bytes_per_account < p.max_item_bytes as u64 {
            return Err(invalid(
                "pep.max_bytes_per_account",
                "must be at least pep.max_item_bytes",
            ));
        }
        let si = &self.server_info;
        for (var, values) in si
            .contact_fields()
            .into_iter()
            .chain([("outage_status", si.outage_status.as_slice())])
        {
            if let Some(bad) = values.iter().find(|v| !v.contains(':') || v.len() > 1024) {
                return Err(invalid(
                    format!("server_info.{}", var.trim_end_matches("-addresses")),
                    format!("{bad:?} is not a URI"),
                ));
            }
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", "must be positive"));
        }
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                "must be greater than raft.heartbeat_ms",
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms",
            ));
        }
        if r.snapshot_after_entries == 0 {
            return Err(invalid("raft.snapshot_after_entries", "must be positive"));
        }
        let max_chunk = (starling_raft::network::MAX_MESSAGE_BYTES / 2) as u64;
        if r.snapshot_chunk_bytes == 0 || r.snapshot_chunk_bytes > max_chunk {
            return Err(invalid(
                "raft.snapshot_chunk_bytes",
                format!("must be between 1 and {max_chunk}"),
            ));
        }
        if r.max_entries_per_append == 0 {
            return Err(invalid("raft.max_entries_per_append", "must be positive"));
        }
        if r.propose_timeout_ms < r.election_timeout_max_ms {
            return Err(invalid(
                "raft.propose_timeout_ms",
                "must be at least raft.election_timeout_max_ms",
            ));
        }
        Ok(())
    }

    /// The openraft configuration this node runs with.
    pub fn openraft(&self) -> Result<openraft::Config, ConfigError> {
        let r = &self.raft;
        let c = openraft::Config {
            cluster_name: "starling".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
            max_in_snapshot_log_to_keep: r.keep_entries_after_snapshot,
            snapshot_max_chunk_size: r.snapshot_chunk_bytes,
            max_payload_entries: r.max_entries_per_append,
            ..Default::default()
        };
        c.validate().map_err(|e| invalid("raft", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 1
data_dir = "/tmp/n1"
raft_addr = "127.0.0.1:7001"
admin_addr = "127.0.0.1:7101"
cluster_secret = "0123456789abcdef"
admin_token = "test-admin-token"
[[initial_cluster]]
id = 1
raft_addr = "127.0.0.1:7001"
admin_addr = "127.0.0.1:7101"
[[initial_cluster]]
id = 2
raft_addr = "127.0.0.1:7002"
admin_addr = "127.0.0.1:7102"
"#;

    fn field_of(text: &str) -> String {
        match Config::parse(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            Err(other) => format!("parse: {other}"),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.raft, RaftSection::default());
        c.openraft().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(&GOOD.replace("node_id = 1", "node_id = 0")),
            "node_id"
        );
        assert_eq!(
            field_of(&GOOD.replace("0123456789abcdef", "short")),
            "cluster_secret"
        );
        let no_token = GOOD.replace("admin_token = \"test-admin-token\"\n", "");
        assert_eq!(field_of(&no_token), "admin_token");
        let opted_out = no_token.replace(
            "[[initial_cluster]]\nid = 1",
            "admin_insecure_no_token = true\n[[initial_cluster]]\nid = 1",
        );
        assert_eq!(field_of(&opted_out), "ok");
        assert_eq!(
            field_of(&opted_out.replace(
                "admin_addr = \"127.0.0.1:7101\"\ncluster",
                "admin_addr = \"0.0.0.0:7101\"\ncluster"
            )),
            "admin_token"
        );
        assert_eq!(
            field_of(&GOOD.replace(
                "[[initial_cluster]]\nid = 1",
                "admin_insecure_no_token = true\n[[initial_cluster]]\nid = 1",
            )),
            "admin_insecure_no_token"
        );
        assert_eq!(
            field_of(&format!("{GOOD}\n[xmpp]\nregistration_interval_secs = 0\n")),
            "xmpp.registration_interval_secs"
        );
        assert_eq!(
            field_of(&GOOD.replace("node_id = 1", "node_id = 3")),
            "initial_cluster"
        );
        assert_eq!(
            field_of(&format!("{GOOD}\n[raft]\nelection_timeout_min_ms = 10\n")),
            "raft.election_timeout_min_ms"
        );
        assert_eq!(
            field_of(&GOOD.replace("id = 2", "id = 1")),
            "initial_cluster[1].id"
        );
        assert_eq!(
            field_of(&format!(
                "{GOOD}\n[xmpp]\nlimits_exempt = [\"10.0.0.0/40\"]\n"
            )),
            "xmpp.limits_exempt"
        );
        assert_eq!(
            field_of(&format!("{GOOD}\n[xmpp]\nauth_max_block_secs = 60\n")),
            "xmpp.auth_max_block_secs"
        );
        assert_eq!(
            field_of(&format!("{GOOD}\n[xmpp]\nmax_offline_bytes = 1000\n")),
            "xmpp.max_offline_bytes"
        );
        assert_eq!(
            field_of(&format!(
                "{GOOD}\n[xmpp]\nmax_offline_bytes_total = 1048576\n"
            )),
            "xmpp.max_offline_bytes_total"
        );
        assert_eq!(
            field_of(&format!("{GOOD}\n[xmpp]\nmax_roster_items = 0\n")),
            "xmpp.max_roster_items"
        );
        assert_eq!(
            field_of(&format!("{GOOD}\n[xmpp]\nmax_block_items = 0\n")),
            "xmpp.max_block_items"
        );
        assert_eq!(
            field_of(&format!("{GOOD}\n[xmpp]\nmax_push_registrations = 0\n")),
            "xmpp.max_push_registrations"
        );
    }

    #[test]
    fn registration_takes_a_mode_or_the_old_flag() {
        let with = |v: &str| Config::parse(&format!("{GOOD}\n[xmpp]\nregistration = {v}\n"));
        assert_eq!(
            Config::parse(GOOD).unwrap().xmpp.registration,
            Registration::Off
        );
        for (v, want) in [
            ("false", Registration::Off),
            ("true", Registration::Open),
            ("\"off\"", Registration::Off),
            ("\"open\"", Registration::Open),
            ("\"token\"", Registration::Token),
        ] {
            assert_eq!(with(v).unwrap().xmpp.registration, want, "{v}");
        }
        let e = with("\"invite\"").unwrap_err().to_string();
        assert!(e.contains("registration") && e.contains("token"), "{e}");
        // Written back as the mode's name.
        let mut c = Config::parse(GOOD).unwrap();
        c.xmpp.registration = Registration::Token;
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("registration = \"token\""), "{text}");
        assert_eq!(Config::parse(&text).unwrap(), c);
    }

    #[test]
    fn unknown_and_malformed_keys_are_parse_errors() {
        let e = field_of(&format!("{GOOD}\nnode_idd = 4\n"));
        assert!(e.starts_with("parse:") && e.contains("node_idd"), "{e}");
        let e = field_of(&GOOD.replace("\"127.0.0.1:7001\"\nadmin", "\"not an address\"\nadmin"));
        assert!(e.starts_with("parse:") && e.contains("raft_addr"), "{e}");
        let e = field_of("node_id = \"one\"");
        assert!(e.starts_with("parse:") && e.contains("node_id"), "{e}");
    }
}
