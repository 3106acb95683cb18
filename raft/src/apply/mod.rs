//! Applying commands to [`StateData`]: the one entry point (`apply`, with
//! the term and index of the log entry) and the dispatch of each command.
//! Deterministic: the result depends only on the state, the command and the
//! term and index of its entry.
//!
//! One file per command family, one function per command:
//! - `accounts`: create, delete, set password;
//! - `sessions`: bind, unbind, update, drop a node's bindings;
//! - `roster`: set or remove an item, presence subscriptions;
//! - `offline`: enqueue (one or many), ack, remove by id;
//! - `invites`: create and delete invitations, register with one;
//! - `blocking`: block and unblock JIDs (XEP-0191 block lists);
//! - `fast`: XEP-0484 FAST tokens: issue, use (rotation), revoke;
//! - `push`: XEP-0357 push registrations: enable, disable.
//! - `pep`: XEP-0163 PEP nodes and items, XEP-0115 caps, XEP-0054
//!   vCards, XEP-0049 private XML.
//! - `archive`: XEP-0313 message archives: append a batch, trim, prefs.
//! - `muc`: XEP-0045 rooms: join, leave, nick, role, affiliations,
//!   configuration, subject, destroy, a dead node's occupants.
//!
//! `Barrier` and `Batch` are handled here. A new command gets one arm in
//! `apply_one` and its function in its family's file (or a new family's).
use crate::command::{Command, Response};
use crate::state::StateData;

mod accounts;
mod archive;
mod blocking;
mod fast;
mod invites;
mod muc;
mod offline;
mod pep;
mod push;
mod roster;
mod sessions;

impl StateData {
    /// Applies the command of a log entry of raft term `term`.
    pub fn apply_in_term(&mut self, cmd: Command, term: u64) -> Response {
        self.entry_term = term;
        self.apply(cmd)
    }

    /// Applies the command of the log entry at `index`, of term `term`.
    pub fn apply_entry(&mut self, cmd: Command, term: u64, index: u64) -> Response {
        self.entry_index = index;
        self.apply_in_term(cmd, term)
    }

    /// Applies one command. Deterministic: the result depends only on the
    /// current state, the command and the term of its entry.
    pub fn apply(&mut self, cmd: Command) -> Response {
        match cmd {
            Command::Batch { commands } => Response::Batch {
                responses: commands
                    .into_iter()
                    .map(|c| match c {
                        Command::Batch { .. } => Response::Rejected {
                            reason: "nested batch".into(),
                        },
                        c => self.apply_one(c),
                    })
                    .collect(),
            },
            c => self.apply_one(c),
        }
    }

    /// Whether `cmd` writes only the archive's tables (an append or a
    /// trim): the store applies it with [`StateData::apply_archive`] under
    /// a read lock of the state, so routing never waits behind it.
    pub fn archive_only(cmd: &Command) -> bool {
        matches!(
            cmd,
            Command::ArchiveAppend { .. } | Command::ArchiveTrim { .. }
        )
    }

    /// Applies an [`StateData::archive_only`] command through shared
    /// access: it reads the accounts and rooms and writes the archive under
    /// the archive's own lock. The same result as [`StateData::apply`];
    /// any other command is refused.
    pub fn apply_archive(&self, cmd: Command) -> Response {
        match cmd {
            Command::ArchiveAppend {
                entries,
                retractions,
                limits,
            } => archive::append(self, entries, retractions, limits),
            Command::ArchiveTrim { limits } => archive::trim(self, limits),
            _ => Response::Rejected {
                reason: "not an archive command".into(),
            },
        }
    }

    /// Dispatches one command (not a batch) to the function of its family.
    fn apply_one(&mut self, cmd: Command) -> Response {
        match cmd {
            Command::Batch { .. } => Response::Rejected {
                reason: "nested batch".into(),
            },
            Command::Barrier => Response::Done,
            Command::CreateUser {
                jid,
                credentials,
                created_ms,
            } => accounts::create_user(self, jid, credentials, created_ms),
            Command::DeleteUser { jid } => accounts::delete_user(self, jid),
            Command::SetPassword { jid, credentials } => {
                accounts::set_password(self, jid, credentials)
            }
            Command::BindSession { full_jid, binding } => sessions::bind(self, full_jid, binding),
            Command::UnbindSession {
                full_jid,
                node,
                session,
            } => sessions::unbind(self, full_jid, node, session),
            Command::UpdateSession { full_jid, binding } => {
                sessions::update(self, full_jid, binding)
            }
            Command::DropNodeSessions { node, term } => sessions::drop_node(self, node, term),
            Command::SetRosterItem {
                owner,
                item,
                max_items,
            } => roster::set_item(self, owner, item, max_items),
            Command::RemoveRosterItem { owner, contact } => {
                roster::remove_item(self, owner, contact)
            }
            Command::Subscription {
                user,
                contact,
                action,
                max_items,
            } => roster::subscription(self, user, contact, action, max_items),
            Command::EnqueueOffline {
                to,
                message,
                max_queue,
                max_bytes,
            } => offline::enqueue(self, to, message, max_queue, max_bytes),
            Command::EnqueueMany { items } => offline::enqueue_many(self, items),
            Command::AckOffline { to, up_to } => offline::ack(self, to, up_to),
            Command::RemoveOffline { to, ids } => offline::remove(self, to, ids),
            Command::CreateInvite { hash, invite } => invites::create(self, hash, invite),
            Command::DeleteInvite { hash } => invites::delete(self, hash),
            Command::RegisterWithInvite {
                jid,
                credentials,
                created_ms,
                invite,
            } => invites::register(self, jid, credentials, created_ms, invite),
            Command::Block {
                owner,
                jids,
                max_items,
            } => blocking::block(self, owner, jids, max_items),
            Command::Unblock { owner, jids } => blocking::unblock(self, owner, jids),
            Command::IssueFastToken {
                user,
                client,
                token,
            } => fast::issue(self, user, client, token),
            Command::UseFastToken {
                user,
                client,
                verifier,
                next,
            } => fast::use_token(self, user, client, verifier, next),
            Command::RevokeFastTokens {
                user,
                client,
                verifier,
            } => fast::revoke(self, user, client, verifier),
            Command::EnablePush {
                owner,
                registration,
                max_registrations,
            } => push::enable(self, owner, registration, max_registrations),
            Command::DisablePush { owner, jid, node } => push::disable(self, owner, jid, node),
            Command::MucJoin {
                room,
                nick,
                occupant,
                create,
                max_occupants,
                password,
            } => muc::join(self, room, nick, occupant, create, max_occupants, password),
            Command::MucLeave { room, full } => muc::leave(self, room, full),
            Command::MucNick { room, full, nick } => muc::nick(self, room, full, nick),
            Command::MucSetRole { room, nick, role } => muc::set_role(self, room, nick, role),
            Command::MucSetAffiliations { room, changes } => {
                muc::set_affiliations(self, room, changes)
            }
            Command::MucConfigure {
                room,
                config,
                unlock,
            } => muc::configure(self, room, config, unlock),
            Command::MucSubject { room, subject } => muc::subject(self, room, subject),
            Command::MucDestroy { room } => muc::destroy(self, room),
            Command::MucDropNode { node } => muc::drop_node(self, node),
            c @ (Command::ArchiveAppend { .. } | Command::ArchiveTrim { .. }) => {
                self.apply_archive(c)
            }
            Command::SetArchivePrefs { owner, prefs } => archive::set_prefs(self, owner, prefs),
            Command::PepPublish {
                owner,
                node,
                item_id,
                item,
                create,
                require,
                limits,
            } => pep::publish(self, owner, node, item_id, item, create, require, limits),
            Command::PepCreate {
                owner,
                node,
                config,
                created_ms,
                limits,
            } => pep::create(self, owner, node, config, created_ms, limits),
            Command::PepRetract {
                owner,
                node,
                item_id,
            } => pep::retract(self, owner, node, item_id),
            Command::PepDeleteNode { owner, node } => pep::delete_node(self, owner, node),
            Command::PepConfigure {
                owner,
                node,
                config,
                limits,
            } => pep::configure(self, owner, node, config, limits),
            Command::SetCaps {
                ver,
                notify,
                max_entries,
            } => pep::set_caps(self, ver, notify, max_entries),
            Command::SetVcard { owner, vcard } => pep::set_vcard(self, owner, vcard),
            Command::SetPrivate {
                owner,
                key,
                xml,
                max_bytes,
            } => pep::set_private(self, owner, key, xml, max_bytes),
        }
    }
}
