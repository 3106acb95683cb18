//! Session binding commands (RFC 6120 §7 resource binding, as replicated):
//! bind, unbind, update the presence facts, drop a node's bindings.
use crate::command::{Response, SessionBinding};
use crate::state::StateData;
use crate::types::NodeId;

/// [`crate::Command::BindSession`]: replaces whatever `full_jid` had.
pub(super) fn bind(data: &mut StateData, full_jid: String, binding: SessionBinding) -> Response {
    let replaced = data.sessions.insert(full_jid, binding, &mut data.tracker);
    Response::Bound { replaced }
}

/// [`crate::Command::UnbindSession`]: only if the binding is still that
/// session on that node.
pub(super) fn unbind(
    data: &mut StateData,
    full_jid: String,
    node: NodeId,
    session: u64,
) -> Response {
    let t = &mut data.tracker;
    let existed = match data.sessions.get(&full_jid) {
        Some(b) if b.node == node && b.session == session => {
            // The session's own (unverified) XEP-0115 interests go with it.
            data.caps
                .remove(&crate::pep::session_caps_key(&full_jid), t);
            data.sessions.remove(&full_jid, t).is_some()
        }
        _ => false,
    };
    Response::Unbound { existed }
}

/// [`crate::Command::UpdateSession`]: only if the binding is still that
/// session on that node.
pub(super) fn update(data: &mut StateData, full_jid: String, binding: SessionBinding) -> Response {
    let same = data
        .sessions
        .get(&full_jid)
        .is_some_and(|b| b.node == binding.node && b.session == binding.session);
    if same {
        data.sessions.insert(full_jid, binding, &mut data.tracker);
    }
    Response::SessionUpdated { updated: same }
}

/// [`crate::Command::DropNodeSessions`]: a decision of term `term` is void
/// in an entry of another term.
pub(super) fn drop_node(data: &mut StateData, node: NodeId, term: Option<u64>) -> Response {
    if let Some(term) = term {
        if term != data.entry_term {
            return Response::Rejected {
                reason: format!(
                    "decided in term {term}, committed in term {}",
                    data.entry_term
                ),
            };
        }
    }
    let gone: Vec<String> = data
        .sessions
        .iter()
        .filter(|(_, b)| b.node == node)
        .map(|(k, _)| k.clone())
        .collect();
    let t = &mut data.tracker;
    for k in &gone {
        data.caps.remove(&crate::pep::session_caps_key(k), t);
        data.sessions.remove(k, t);
    }
    Response::NodeSessionsDropped {
        count: gone.len() as u32,
    }
}
