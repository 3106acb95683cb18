//! `starling ctl`: the operator CLI over the admin gRPC API.
//!
//! Prints a readable table by default and JSON with `--json`. Every failure
//! (node unreachable, not authorized, no such user, no quorum) prints one
//! clear line on stderr and exits non-zero.
//!
//! Secrets never go on the command line, where every local user sees them
//! (`ps`, `/proc/*/cmdline`): passwords are typed at a prompt without echo
//! or piped on standard input; the admin token comes from a file only its
//! owner can read (`--token-file`, or the one `--cluster` names), or from
//! `STARLING_ADMIN_TOKEN`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use starling_proto::admin::*;
use tonic::{Code, Status};

use crate::admin::client::AdminConn;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Admin address of a node (host:port). Repeat to give fallbacks.
    /// Default: the nodes of `--cluster`, else 127.0.0.1:7101.
    #[arg(long, env = "STARLING_ADMIN_ADDR", value_delimiter = ',')]
    pub addr: Vec<String>,
    /// A `cluster.json` written by `starling dev`: try its nodes in order.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Admin token. Prefer `--token-file` or the environment: a value
    /// here is visible to other local users while ctl runs.
    #[arg(long, env = "STARLING_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the admin token (mode 0600: refused if other users
    /// can read it). Default: the `admin_token_file` of `--cluster`.
    #[arg(long, env = "STARLING_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
pub enum CtlCmd {
    /// Leader, term and every member's state.
    Status,
    /// Add a node (learner first, voter once caught up).
    AddNode {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        admin_addr: String,
        #[arg(long, default_value = "")]
        client_addr: String,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// List bound sessions.
    Sessions {
        /// Only sessions on this node.
        #[arg(long)]
        node: Option<u64>,
    },
    /// Offline queue depth and oldest age per user.
    Queues,
    /// Registration invitations (XEP-0401/0445), for nodes running with
    /// `registration = "token"`.
    #[command(subcommand)]
    Invite(InviteCmd),
}

#[derive(Subcommand, Debug)]
pub enum InviteCmd {
    /// Create an invitation; prints its token (shown once: only its hash
    /// is stored) and its `xmpp:DOMAIN?register;preauth=TOKEN` URI.
    Create {
        /// Accounts it may create.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Seconds after which it is refused; 0: never.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        expires: u64,
    },
    /// Revoke an invitation; its token is read from standard input (or
    /// asked for without echo).
    Delete,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account (`alice` or `alice@domain`). The password is
    /// asked for (without echo), or read from standard input when it is
    /// not a terminal: `printf '%s\n' "$PW" | starling ctl user create alice`.
    Create {
        jid: String,
        /// Refused: a password in argv is visible to every local user.
        #[arg(long, hide = true)]
        password: Option<String>,
    },
    /// Delete an account, its roster and its offline queue.
    Delete { jid: String },
    /// Change an account's password (asked for, or read from standard
    /// input, as for `create`).
    Passwd {
        jid: String,
        /// Refused, as for `create`.
        #[arg(long, hide = true)]
        password: Option<String>,
    },
    /// List accounts.
    List,
    /// XEP-0484 FAST tokens of an account (never the tokens themselves).
    #[command(subcommand)]
    Tokens(TokensCmd),
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Per client (SASL2 user-agent id): slot, mechanism, issue and expiry.
    List { jid: String },
    /// Revoke the account's tokens: one client's (`--client`), or all.
    Revoke {
        jid: String,
        #[arg(long)]
        client: Option<String>,
    },
}

/// The admin token: `--token` (or `STARLING_ADMIN_TOKEN`), else the file of
/// `--token-file`, else the `admin_token_file` that `--cluster` names.
fn token(args: &CtlArgs) -> Result<Option<String>, String> {
    if let Some(t) = &args.token {
        return Ok(Some(t.clone()));
    }
    let file = match (&args.token_file, &args.cluster) {
        (Some(f), _) => Some(f.clone()),
        (None, Some(cluster)) => {
            let v = cluster_json(cluster)?;
            v["admin_token_file"].as_str().map(|f| {
                let f = PathBuf::from(f);
                match cluster.parent() {
                    Some(dir) if f.is_relative() => dir.join(f),
                    _ => f,
                }
            })
        }
        (None, None) => None,
    };
    let Some(path) = file else {
        return Ok(None);
    };
    if let Some(mode) = crate::private_files::loose_mode(&path) {
        return Err(format!(
            "{} holds the admin token but other users can read it (mode {mode:o}); chmod 600 it",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the admin token file {} is empty", path.display()));
    }
    Ok(Some(t.to_string()))
}

fn cluster_json(path: &std::path::Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
}

/// A password for `jid`: refused from argv; asked for twice without echo
/// on a terminal; otherwise the first line of standard input.
fn password(jid: &str, given: &Option<String>) -> Result<String, String> {
    if given.is_some() {
        return Err(
            "passwords are not taken on the command line, where other users can see \
                    them (ps); leave out --password to be asked for it, or pipe it on \
                    standard input"
                .into(),
        );
    }
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let pw = if stdin.is_terminal() {
        let first = prompt_hidden(&format!("password for {jid}: "))?;
        let again = prompt_hidden("again: ")?;
        if first != again {
            return Err("the two passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if pw.is_empty() {
        return Err("the password must not be empty".into());
    }
    Ok(pw)
}

/// One secret line: asked for without echo on a terminal, else the first
/// line of standard input.
fn secret_line(what: &str) -> Result<String, String> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let s = if stdin.is_terminal() {
        prompt_hidden(&format!("{what}: "))?
    } else {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the {what} from standard input: {e}"))?;
        line.trim().to_string()
    };
    if s.is_empty() {
        return Err(format!("no {what} given"));
    }
    Ok(s)
}

/// Reads one line from the terminal on standard input with echo off.
fn prompt_hidden(prompt: &str) -> Result<String, String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::Write;
    let stdin = std::io::stdin();
    let mut err = std::io::stderr();
    let _ = write!(err, "{prompt}");
    let _ = err.flush();
    let saved = tcgetattr(&stdin).map_err(|e| format!("cannot use the terminal: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| format!("cannot turn echo off: {e}"))?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    let _ = writeln!(err);
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Admin addresses from `--addr`, `--cluster`, or the default.
fn addresses(args: &CtlArgs) -> Result<Vec<String>, String> {
    let mut addrs = args.addr.clone();
    if let Some(path) = &args.cluster {
        let v = cluster_json(path)?;
        let nodes = v["nodes"]
            .as_array()
            .ok_or_else(|| format!("{} has no \"nodes\" list", path.display()))?;
        for n in nodes {
            if let Some(a) = n["admin_addr"].as_str() {
                addrs.push(a.to_string());
            }
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:7101".into());
    }
    Ok(addrs)
}

/// A readable one-line message for a failed call.
pub fn describe(status: &Status) -> String {
    let msg = status.message();
    match status.code() {
        Code::Unauthenticated => {
            format!("not authorized: {msg} (give --token-file, --cluster or STARLING_ADMIN_TOKEN)")
        }
        Code::NotFound | Code::AlreadyExists | Code::InvalidArgument | Code::FailedPrecondition => {
            msg.to_string()
        }
        Code::Unavailable => format!("unavailable: {msg}"),
        Code::DeadlineExceeded => format!("timed out: {msg}"),
        other => format!("{other:?}: {msg}"),
    }
}

pub async fn run(args: CtlArgs) -> ExitCode {
    match run_inner(&args).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(args: &CtlArgs) -> Result<String, String> {
    let addrs = addresses(args)?;
    let token = token(args)?;
    // Asked before connecting, so a prompt does not wait on the network.
    let new_password = match &args.cmd {
        CtlCmd::User(UserCmd::Create { jid, password: p })
        | CtlCmd::User(UserCmd::Passwd { jid, password: p }) => Some(password(jid, p)?),
        _ => None,
    };
    let new_password = new_password.unwrap_or_default();
    let invite_token = match &args.cmd {
        CtlCmd::Invite(InviteCmd::Delete) => secret_line("invitation token")?,
        _ => String::new(),
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let conn = AdminConn::connect(&addrs, token.as_deref(), timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut c = conn.client.clone();
    let (value, table) = match &args.cmd {
        CtlCmd::Status => {
            let r = c
                .status(conn.req(StatusRequest {}))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            status_output(&r)
        }
        CtlCmd::AddNode {
            id,
            raft_addr,
            admin_addr,
            client_addr,
        } => {
            let r = c
                .add_node(conn.req(AddNodeRequest {
                    id: *id,
                    raft_addr: raft_addr.clone(),
                    admin_addr: admin_addr.clone(),
                    client_addr: client_addr.clone(),
                }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            membership_output(&r)
        }
        CtlCmd::RemoveNode { id } => {
            let r = c
                .remove_node(conn.req(RemoveNodeRequest { id: *id }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            membership_output(&r)
        }
        CtlCmd::User(UserCmd::Create { jid, .. }) => {
            let r = c
                .create_user(conn.req(CreateUserRequest {
                    jid: jid.clone(),
                    password: new_password.clone(),
                }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            user_output("created", &r)
        }
        CtlCmd::User(UserCmd::Delete { jid }) => {
            let r = c
                .delete_user(conn.req(DeleteUserRequest { jid: jid.clone() }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            user_output("deleted", &r)
        }
        CtlCmd::User(UserCmd::Passwd { jid, .. }) => {
            let r = c
                .set_password(conn.req(SetPasswordRequest {
                    jid: jid.clone(),
                    password: new_password.clone(),
                }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            user_output("password changed", &r)
        }
        CtlCmd::User(UserCmd::List) => {
            let r = c
                .list_users(conn.req(ListUsersRequest {}))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let rows: Vec<Vec<String>> = r
                .users
                .iter()
                .map(|u| vec![u.jid.clone(), u.created_unix_ms.to_string()])
                .collect();
            let v = json!({"users": r.users.iter().map(|u| json!({"jid": u.jid, "created_unix_ms": u.created_unix_ms})).collect::<Vec<_>>()});
            (v, table(&["JID", "CREATED_UNIX_MS"], &rows))
        }
        CtlCmd::User(UserCmd::Tokens(TokensCmd::List { jid })) => {
            let r = c
                .list_fast_tokens(conn.req(ListFastTokensRequest { jid: jid.clone() }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let rows: Vec<Vec<String>> = r
                .tokens
                .iter()
                .map(|t| {
                    vec![
                        t.client.clone(),
                        t.slot.clone(),
                        t.mechanism.clone(),
                        t.issued_unix_ms.to_string(),
                        t.expires_unix_ms.to_string(),
                    ]
                })
                .collect();
            let v = json!({"tokens": r.tokens.iter().map(|t| json!({"client": t.client, "slot": t.slot, "mechanism": t.mechanism, "issued_unix_ms": t.issued_unix_ms, "expires_unix_ms": t.expires_unix_ms})).collect::<Vec<_>>()});
            let headers = [
                "CLIENT",
                "SLOT",
                "MECHANISM",
                "ISSUED_UNIX_MS",
                "EXPIRES_UNIX_MS",
            ];
            (v, table(&headers, &rows))
        }
        CtlCmd::User(UserCmd::Tokens(TokensCmd::Revoke { jid, client })) => {
            let r = c
                .revoke_fast_tokens(conn.req(RevokeFastTokensRequest {
                    jid: jid.clone(),
                    client: client.clone().unwrap_or_default(),
                }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let v = json!({"revoked": r.revoked, "log_index": r.log_index});
            (
                v,
                format!(
                    "revoked {} token(s) at log index {}",
                    r.revoked, r.log_index
                ),
            )
        }
        CtlCmd::Sessions { node } => {
            let r = c
                .list_sessions(conn.req(ListSessionsRequest {
                    node_id: node.unwrap_or(0),
                }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let rows: Vec<Vec<String>> = r
                .sessions
                .iter()
                .map(|s| {
                    vec![
                        s.full_jid.clone(),
                        s.node_id.to_string(),
                        s.priority.to_string(),
                    ]
                })
                .collect();
            let v = json!({"sessions": r.sessions.iter().map(|s| json!({"full_jid": s.full_jid, "node_id": s.node_id, "priority": s.priority, "bound_unix_ms": s.bound_unix_ms})).collect::<Vec<_>>()});
            (v, table(&["FULL_JID", "NODE", "PRIORITY"], &rows))
        }
        CtlCmd::Invite(InviteCmd::Create { uses, expires }) => {
            let r = c
                .create_invite(conn.req(CreateInviteRequest {
                    uses: *uses,
                    expires_in_secs: *expires,
                }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let v = json!({"token": r.token, "uri": r.uri, "uses": r.uses,
                "expires_unix_ms": (r.expires_unix_ms != 0).then_some(r.expires_unix_ms),
                "log_index": r.log_index});
            let expires = if r.expires_unix_ms == 0 {
                "never".to_string()
            } else {
                format!("{} (Unix ms)", r.expires_unix_ms)
            };
            let out = format!(
                "token:   {}\nuri:     {}\nuses:    {}\nexpires: {expires}\n",
                r.token, r.uri, r.uses
            );
            (v, out)
        }
        CtlCmd::Invite(InviteCmd::Delete) => {
            let r = c
                .delete_invite(conn.req(DeleteInviteRequest {
                    token: invite_token.clone(),
                }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            if !r.existed {
                return Err("no such invitation (used up, expired or never made)".into());
            }
            (
                json!({"deleted": true, "log_index": r.log_index}),
                format!("invitation revoked (log index {})\n", r.log_index),
            )
        }
        CtlCmd::Queues => {
            let r = c
                .list_queues(conn.req(ListQueuesRequest {}))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            let rows: Vec<Vec<String>> = r
                .queues
                .iter()
                .map(|q| {
                    vec![
                        q.jid.clone(),
                        q.depth.to_string(),
                        format!("{:.1}s", q.oldest_age_ms as f64 / 1000.0),
                    ]
                })
                .collect();
            let v = json!({"queues": r.queues.iter().map(|q| json!({"jid": q.jid, "depth": q.depth, "oldest_age_ms": q.oldest_age_ms})).collect::<Vec<_>>()});
            (v, table(&["JID", "DEPTH", "OLDEST"], &rows))
        }
    };
    if args.json {
        Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ))
    } else {
        Ok(table)
    }
}

fn opt(has: bool, v: u64) -> String {
    if has {
        v.to_string()
    } else {
        "-".into()
    }
}

fn status_output(r: &StatusReply) -> (Value, String) {
    let members: Vec<Value> = r
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "raft_addr": m.raft_addr, "admin_addr": m.admin_addr,
                "client_addr": m.client_addr, "membership": m.membership, "role": m.role,
                "reachable": m.reachable, "error": m.error, "term": m.term, "leader_id": m.leader_id,
                "last_log_index": m.has_last_log.then_some(m.last_log_index),
                "applied_index": m.has_applied.then_some(m.applied_index),
                "snapshot_index": m.has_snapshot.then_some(m.snapshot_index),
                "purged_index": m.purged_index,
                "state_digest": m.state_digest, "users": m.users, "sessions": m.sessions,
                "queued_messages": m.queued_messages,
            })
        })
        .collect();
    let v = json!({
        "answered_by": r.node_id,
        "leader_id": r.has_leader.then_some(r.leader_id),
        "term": r.term,
        "ready": r.ready,
        "not_ready": (!r.ready).then_some(r.not_ready.as_str()),
        "members": members,
    });
    let leader = if r.has_leader {
        r.leader_id.to_string()
    } else {
        "none".into()
    };
    let ready = if r.ready {
        "yes".to_string()
    } else {
        format!("no ({})", r.not_ready)
    };
    let mut out = format!(
        "leader: {leader}   term: {}   answered by node {}   ready: {ready}\n",
        r.term, r.node_id
    );
    let rows: Vec<Vec<String>> = r
        .members
        .iter()
        .map(|m| {
            if !m.reachable {
                return vec![
                    m.id.to_string(),
                    m.membership.clone(),
                    "UNREACHABLE".into(),
                    m.raft_addr.clone(),
                    m.admin_addr.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ];
            }
            vec![
                m.id.to_string(),
                m.membership.clone(),
                m.role.clone(),
                m.raft_addr.clone(),
                m.admin_addr.clone(),
                m.term.to_string(),
                opt(m.has_last_log, m.last_log_index),
                opt(m.has_applied, m.applied_index),
                opt(m.has_snapshot, m.snapshot_index),
                m.state_digest.chars().take(12).collect(),
                m.users.to_string(),
                m.sessions.to_string(),
                m.queued_messages.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ID", "MEMBER", "ROLE", "RAFT", "ADMIN", "TERM", "LAST_LOG", "APPLIED", "SNAPSHOT",
            "DIGEST", "USERS", "SESSIONS", "QUEUED",
        ],
        &rows,
    ));
    let digests: std::collections::BTreeSet<&str> = r
        .members
        .iter()
        .filter(|m| m.reachable && m.has_applied)
        .map(|m| m.state_digest.as_str())
        .collect();
    let applied: std::collections::BTreeSet<u64> = r
        .members
        .iter()
        .filter(|m| m.reachable)
        .map(|m| m.applied_index)
        .collect();
    if digests.len() == 1 && applied.len() == 1 {
        out.push_str("all reachable members have applied the same log and hold the same state\n");
    }
    for m in r.members.iter().filter(|m| !m.reachable) {
        out.push_str(&format!("node {} unreachable: {}\n", m.id, m.error));
    }
    (v, out)
}

fn membership_output(r: &MembershipReply) -> (Value, String) {
    let v = json!({"voters": r.voters, "learners": r.learners, "log_index": r.log_index});
    let out = format!(
        "membership committed at log index {}\nvoters:   {:?}\nlearners: {:?}\n",
        r.log_index, r.voters, r.learners
    );
    (v, out)
}

fn user_output(what: &str, r: &UserReply) -> (Value, String) {
    (
        json!({"jid": r.jid, "log_index": r.log_index}),
        format!("{what}: {} (log index {})\n", r.jid, r.log_index),
    )
}

/// Formats rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            s.push_str(&format!("{c:<w$}  "));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(|s| s.as_str())));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}
