//! Applying commands to [`StateData`]: the one entry point (`apply`, with
//! the term and index of the log entry) and the dispatch of each command.
//! Deterministic: the result depends only on the state, the command and the
//! term and index of its entry.
use std::ops::Bound;

use crate::command::{Command, Response, UserRecord};
use crate::state::StateData;

mod accounts;
mod offline;

use accounts::owner_range;
use offline::{prune_done, remove_queue};

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

    fn apply_one(&mut self, cmd: Command) -> Response {
        let t = &mut self.tracker;
        match cmd {
            Command::Batch { .. } => Response::Rejected {
                reason: "nested batch".into(),
            },
            Command::Barrier => Response::Done,
            Command::EnqueueMany { items } => Response::Batch {
                responses: items
                    .into_iter()
                    .map(|i| {
                        self.apply_one(Command::EnqueueOffline {
                            to: i.to,
                            message: i.message,
                            max_queue: i.max_queue,
                        })
                    })
                    .collect(),
            },
            Command::CreateUser {
                jid,
                credentials,
                created_ms,
            } => {
                if self.users.get(&jid).is_some() {
                    return Response::UserExists;
                }
                self.users.insert(
                    jid,
                    UserRecord {
                        credentials,
                        created_ms,
                    },
                    t,
                );
                Response::UserCreated
            }
            Command::DeleteUser { jid } => {
                if self.users.remove(&jid, t).is_none() {
                    return Response::NoSuchUser;
                }
                let roster: Vec<_> = owner_range(&self.roster, &jid);
                for k in &roster {
                    self.roster.remove(k, t);
                }
                let queued = remove_queue(self, &jid, u64::MAX);
                let done: Vec<(String, String)> = self
                    .offline_done
                    .range((jid.clone(), String::new())..)
                    .take_while(|((o, _), _)| *o == jid)
                    .map(|(k, _)| k.clone())
                    .collect();
                let t = &mut self.tracker;
                for k in &done {
                    self.offline_done.remove(k, t);
                }
                self.offline_next.remove(&jid, t);
                let prefix = format!("{jid}/");
                let sessions: Vec<String> = self
                    .sessions
                    .range::<(Bound<&String>, Bound<&String>)>((
                        Bound::Included(&prefix),
                        Bound::Unbounded,
                    ))
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &sessions {
                    self.sessions.remove(k, t);
                }
                Response::UserDeleted {
                    roster_items: roster.len() as u32,
                    queued,
                    sessions: sessions.len() as u32,
                }
            }
            Command::SetPassword { jid, credentials } => {
                let Some(mut user) = self.users.get(&jid).cloned() else {
                    return Response::NoSuchUser;
                };
                user.credentials = credentials;
                self.users.insert(jid, user, t);
                Response::PasswordChanged
            }
            Command::BindSession { full_jid, binding } => {
                let replaced = self.sessions.insert(full_jid, binding, t);
                Response::Bound { replaced }
            }
            Command::UnbindSession {
                full_jid,
                node,
                session,
            } => {
                let existed = match self.sessions.get(&full_jid) {
                    Some(b) if b.node == node && b.session == session => {
                        self.sessions.remove(&full_jid, t).is_some()
                    }
                    _ => false,
                };
                Response::Unbound { existed }
            }
            Command::DropNodeSessions {
                term: Some(term), ..
            } if term != self.entry_term => Response::Rejected {
                reason: format!(
                    "decided in term {term}, committed in term {}",
                    self.entry_term
                ),
            },
            Command::UpdateSession { full_jid, binding } => {
                let same = self
                    .sessions
                    .get(&full_jid)
                    .is_some_and(|b| b.node == binding.node && b.session == binding.session);
                if same {
                    self.sessions.insert(full_jid, binding, t);
                }
                Response::SessionUpdated { updated: same }
            }
            Command::DropNodeSessions { node, .. } => {
                let gone: Vec<String> = self
                    .sessions
                    .iter()
                    .filter(|(_, b)| b.node == node)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &gone {
                    self.sessions.remove(k, t);
                }
                Response::NodeSessionsDropped {
                    count: gone.len() as u32,
                }
            }
            Command::SetRosterItem { owner, item } => {
                let key = (owner, item.jid.clone());
                let previous = self.roster.insert(key, item, t);
                Response::RosterUpdated { previous }
            }
            Command::RemoveRosterItem { owner, contact } => Response::RosterRemoved {
                existed: self.roster.remove(&(owner, contact), t).is_some(),
            },
            Command::Subscription {
                user,
                contact,
                action,
            } => {
                if self.users.get(&user).is_none() || self.users.get(&contact).is_none() {
                    return Response::NoSuchUser;
                }
                let ukey = (user.clone(), contact.clone());
                let ckey = (contact.clone(), user.clone());
                let o = crate::subscription::transition(
                    action,
                    &user,
                    &contact,
                    self.roster.get(&ukey).cloned(),
                    self.roster.get(&ckey).cloned(),
                );
                for (key, item, changed) in [
                    (ukey, &o.user_item, o.user_changed),
                    (ckey, &o.contact_item, o.contact_changed),
                ] {
                    if !changed {
                        continue;
                    }
                    match item {
                        Some(i) => {
                            self.roster.insert(key, i.clone(), t);
                        }
                        None => {
                            self.roster.remove(&key, t);
                        }
                    }
                }
                Response::Subscription {
                    user_item: o.user_item,
                    user_changed: o.user_changed,
                    contact_item: o.contact_item,
                    contact_changed: o.contact_changed,
                    deliver: o.deliver,
                    auto_approved: o.auto_approved,
                }
            }
            Command::EnqueueOffline {
                to,
                message,
                max_queue,
            } => {
                if self.users.get(&to).is_none() {
                    return Response::NoSuchUser;
                }
                if self
                    .offline_done
                    .get(&(to.clone(), message.id.clone()))
                    .is_some()
                {
                    // Delivered and removed already: a late retry.
                    return Response::Queued {
                        seq: 0,
                        duplicate: true,
                    };
                }
                if let Some(seq) = self.offline_ids.get(&(to.clone(), message.id.clone())) {
                    return Response::Queued {
                        seq: *seq,
                        duplicate: true,
                    };
                }
                if self.queue_depth(&to) >= max_queue as usize {
                    return Response::QueueFull { cap: max_queue };
                }
                let t = &mut self.tracker;
                let seq = self.offline_next.get(&to).copied().unwrap_or(1);
                self.offline_next.insert(to.clone(), seq + 1, t);
                self.offline_ids
                    .insert((to.clone(), message.id.clone()), seq, t);
                self.offline.insert((to, seq), message, t);
                Response::Queued {
                    seq,
                    duplicate: false,
                }
            }
            Command::AckOffline { to, up_to } => Response::Acked {
                removed: remove_queue(self, &to, up_to),
            },
            Command::RemoveOffline { to, ids } => {
                let mut removed = 0;
                for id in ids {
                    let key = (to.clone(), id);
                    if let Some(seq) = self.offline_ids.remove(&key, t) {
                        self.offline.remove(&(to.clone(), seq), t);
                        removed += 1;
                    }
                    self.offline_done.insert(key, self.entry_index, t);
                }
                prune_done(self, &to);
                Response::Acked { removed }
            }
        }
    }
}
