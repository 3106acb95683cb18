//! XEP-0163 PEP commands (publish, retract, delete a node, configure one),
//! XEP-0115 caps, XEP-0054 vCards and XEP-0049 private XML.
//!
//! Budgets: an account has at most `max_nodes` nodes and `max_bytes` of
//! item payloads (a publish over either is refused whole,
//! [`Response::OverBudget`]); a node keeps at most its `max_items`
//! (itself at most the proposer's cap), dropping the oldest.
use crate::command::{Budget, PepItem, PepLimits, PepNode, PepNodeConfig, Response};
use crate::pep::item_key;
use crate::state::StateData;

/// `config` with `max_items` within the cap (and 1 when not persistent).
fn capped(mut config: PepNodeConfig, limits: &PepLimits) -> PepNodeConfig {
    config.max_items = config.max_items.clamp(1, limits.max_items.max(1));
    config
}

fn effective_max(config: &PepNodeConfig) -> usize {
    if config.persist {
        config.max_items as usize
    } else {
        1
    }
}

/// [`crate::Command::PepPublish`].
#[allow(clippy::too_many_arguments)]
pub(super) fn publish(
    data: &mut StateData,
    owner: String,
    node: String,
    item_id: String,
    mut item: PepItem,
    create: PepNodeConfig,
    require: Option<PepNodeConfig>,
    limits: PepLimits,
) -> Response {
    if data.users.get(&owner).is_none() {
        return Response::NoSuchUser;
    }
    let node_key = (owner.clone(), node.clone());
    let existing = data.pep_nodes.get(&node_key).cloned();
    if let (Some(n), Some(req)) = (&existing, &require) {
        if n.config != capped(req.clone(), &limits) {
            return Response::PepPreconditionNotMet;
        }
    }
    if existing.is_none() && data.pep_nodes.of_owner(&owner) >= u64::from(limits.max_nodes) {
        return Response::OverBudget {
            budget: Budget::PepNodes,
            cap: u64::from(limits.max_nodes),
        };
    }
    let key = (owner.clone(), item_key(&node, &item_id));
    let old_bytes = data
        .pep_items
        .get(&key)
        .map_or(0, |i| i.payload.len() as u64);
    let bytes = data.pep_items.of_owner(&owner) - old_bytes + item.payload.len() as u64;
    if bytes > limits.max_bytes {
        return Response::OverBudget {
            budget: Budget::PepBytes,
            cap: limits.max_bytes,
        };
    }
    let created = existing.is_none();
    let mut n = existing.unwrap_or_else(|| PepNode {
        config: capped(require.unwrap_or(create), &limits),
        next_seq: 0,
        created_ms: item.stamp_ms,
    });
    item.seq = n.next_seq;
    n.next_seq += 1;
    let max = effective_max(&n.config);
    data.pep_nodes.insert(node_key, n, &mut data.tracker);
    data.pep_items.insert(key, item, &mut data.tracker);
    let evicted = trim(data, &owner, &node, max);
    Response::PepPublished { created, evicted }
}

/// [`crate::Command::PepCreate`].
pub(super) fn create(
    data: &mut StateData,
    owner: String,
    node: String,
    config: PepNodeConfig,
    created_ms: u64,
    limits: PepLimits,
) -> Response {
    if data.users.get(&owner).is_none() {
        return Response::NoSuchUser;
    }
    let key = (owner.clone(), node);
    if data.pep_nodes.get(&key).is_some() {
        return Response::PepNodeExists;
    }
    if data.pep_nodes.of_owner(&owner) >= u64::from(limits.max_nodes) {
        return Response::OverBudget {
            budget: Budget::PepNodes,
            cap: u64::from(limits.max_nodes),
        };
    }
    let n = PepNode {
        config: capped(config, &limits),
        next_seq: 0,
        created_ms,
    };
    data.pep_nodes.insert(key, n, &mut data.tracker);
    Response::PepPublished {
        created: true,
        evicted: Vec::new(),
    }
}

/// Drops the oldest items of a node beyond `max`; their ids.
fn trim(data: &mut StateData, owner: &str, node: &str, max: usize) -> Vec<String> {
    let items: Vec<String> = data
        .pep_items_of(owner, node)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let over = items.len().saturating_sub(max);
    let doomed: Vec<String> = items.into_iter().take(over).collect();
    for id in &doomed {
        data.pep_items
            .remove(&(owner.to_string(), item_key(node, id)), &mut data.tracker);
    }
    doomed
}

/// [`crate::Command::PepRetract`].
pub(super) fn retract(data: &mut StateData, owner: String, node: String, id: String) -> Response {
    if data.pep_nodes.get(&(owner.clone(), node.clone())).is_none() {
        return Response::PepNoSuchNode;
    }
    let existed = data
        .pep_items
        .remove(&(owner, item_key(&node, &id)), &mut data.tracker)
        .is_some();
    Response::PepRetracted { existed }
}

/// [`crate::Command::PepDeleteNode`].
pub(super) fn delete_node(data: &mut StateData, owner: String, node: String) -> Response {
    if data
        .pep_nodes
        .remove(&(owner.clone(), node.clone()), &mut data.tracker)
        .is_none()
    {
        return Response::PepNoSuchNode;
    }
    let items = trim(data, &owner, &node, 0);
    Response::PepNodeDeleted { items }
}

/// [`crate::Command::PepConfigure`].
pub(super) fn configure(
    data: &mut StateData,
    owner: String,
    node: String,
    config: PepNodeConfig,
    limits: PepLimits,
) -> Response {
    let key = (owner.clone(), node.clone());
    let Some(mut n) = data.pep_nodes.get(&key).cloned() else {
        return Response::PepNoSuchNode;
    };
    n.config = capped(config, &limits);
    let max = effective_max(&n.config);
    data.pep_nodes.insert(key, n, &mut data.tracker);
    let evicted = trim(data, &owner, &node, max);
    Response::PepConfigured { evicted }
}

/// [`crate::Command::SetCaps`].
pub(super) fn set_caps(
    data: &mut StateData,
    ver: String,
    notify: Vec<String>,
    max_entries: u32,
) -> Response {
    if data.caps.get(&ver).is_none() && data.caps.len() >= max_entries as usize {
        return Response::CapsSet { stored: false };
    }
    data.caps.insert(ver, notify, &mut data.tracker);
    Response::CapsSet { stored: true }
}

/// [`crate::Command::SetVcard`].
pub(super) fn set_vcard(data: &mut StateData, owner: String, vcard: Option<String>) -> Response {
    if data.users.get(&owner).is_none() {
        return Response::NoSuchUser;
    }
    match vcard {
        Some(v) => {
            data.vcards.insert(owner, v, &mut data.tracker);
        }
        None => {
            data.vcards.remove(&owner, &mut data.tracker);
        }
    }
    Response::VcardSet
}

/// [`crate::Command::SetPrivate`].
pub(super) fn set_private(
    data: &mut StateData,
    owner: String,
    key: String,
    xml: String,
    max_bytes: u64,
) -> Response {
    if data.users.get(&owner).is_none() {
        return Response::NoSuchUser;
    }
    let k = (owner.clone(), key);
    let old = data.private.get(&k).map_or(0, |x| x.len() as u64);
    if data.private.of_owner(&owner) - old + xml.len() as u64 > max_bytes {
        return Response::OverBudget {
            budget: Budget::PrivateBytes,
            cap: max_bytes,
        };
    }
    data.private.insert(k, xml, &mut data.tracker);
    Response::PrivateSet
}

/// Removes every PEP node and item, the vCard and the private XML of
/// `owner` (the account is deleted).
pub(super) fn remove_all(data: &mut StateData, owner: &str) {
    let nodes: Vec<String> = data.pep_nodes_of(owner).map(|(n, _)| n.clone()).collect();
    for n in nodes {
        delete_node(data, owner.to_string(), n);
    }
    let private: Vec<String> = data.private_of(owner).map(|(k, _)| k.clone()).collect();
    for k in private {
        data.private
            .remove(&(owner.to_string(), k), &mut data.tracker);
    }
    data.vcards.remove(&owner.to_string(), &mut data.tracker);
}

#[cfg(test)]
mod tests {
    use crate::command::{Budget, Command, PepAccess, PepItem, PepLimits, PepNodeConfig, Response};
    use crate::credentials::Credentials;
    use crate::state::StateData;

    const LIMITS: PepLimits = PepLimits {
        max_items: 3,
        max_nodes: 2,
        max_bytes: 100,
    };

    fn user(d: &mut StateData) {
        d.apply(Command::CreateUser {
            jid: "a@x".into(),
            credentials: Credentials::derive("pw", 2),
            created_ms: 1,
        });
    }

    fn publish(d: &mut StateData, node: &str, id: &str, payload: &str) -> Response {
        publish_with(d, node, id, payload, None)
    }

    fn publish_with(
        d: &mut StateData,
        node: &str,
        id: &str,
        payload: &str,
        require: Option<PepNodeConfig>,
    ) -> Response {
        d.apply(Command::PepPublish {
            owner: "a@x".into(),
            node: node.into(),
            item_id: id.into(),
            item: PepItem {
                seq: 0,
                payload: payload.into(),
                publisher: "a@x/r".into(),
                stamp_ms: 5,
            },
            create: PepNodeConfig {
                max_items: 2,
                ..PepNodeConfig::default()
            },
            require,
            limits: LIMITS,
        })
    }

    fn ids(d: &StateData, node: &str) -> Vec<String> {
        d.pep_items_of("a@x", node)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    #[test]
    fn publish_keeps_max_items_replaces_by_id_and_checks_preconditions() {
        let mut d = StateData::default();
        assert_eq!(publish(&mut d, "n", "1", "<a/>"), Response::NoSuchUser);
        user(&mut d);
        let empty = d.digest();
        assert_eq!(
            publish(&mut d, "n", "1", "<a/>"),
            Response::PepPublished {
                created: true,
                evicted: vec![]
            }
        );
        publish(&mut d, "n", "2", "<b/>");
        assert_eq!(
            publish(&mut d, "n", "3", "<c/>"),
            Response::PepPublished {
                created: false,
                evicted: vec!["1".into()]
            }
        );
        // The same id again: replaced and newest.
        publish(&mut d, "n", "2", "<b2/>");
        assert_eq!(ids(&d, "n"), ["3", "2"]);
        // A precondition that differs: refused, nothing changes.
        let open = PepNodeConfig {
            access: PepAccess::Open,
            ..PepNodeConfig::default()
        };
        let before = d.digest();
        assert_eq!(
            publish_with(&mut d, "n", "9", "<z/>", Some(open.clone())),
            Response::PepPreconditionNotMet
        );
        assert_eq!(d.digest(), before);
        // A new node is created with the precondition's config.
        publish_with(&mut d, "m", "1", "<z/>", Some(open.clone()));
        assert_eq!(
            d.pep_nodes
                .get(&("a@x".into(), "m".into()))
                .map(|n| n.config.access),
            Some(PepAccess::Open)
        );
        // A third node is over the budget, as are too many bytes.
        assert_eq!(
            publish(&mut d, "o", "1", "<z/>"),
            Response::OverBudget {
                budget: Budget::PepNodes,
                cap: 2
            }
        );
        assert!(matches!(
            publish(&mut d, "n", "big", &"x".repeat(95)),
            Response::OverBudget {
                budget: Budget::PepBytes,
                ..
            }
        ));
        assert_eq!(
            d.apply(Command::PepRetract {
                owner: "a@x".into(),
                node: "n".into(),
                item_id: "3".into()
            }),
            Response::PepRetracted { existed: true }
        );
        assert_eq!(ids(&d, "n"), ["2"]);
        let back = StateData::from_snapshot(&d.to_snapshot().expect("snap")).expect("restore");
        assert_eq!(back.digest(), d.digest());
        assert_eq!(back.pep_items.of_owner("a@x"), d.pep_items.of_owner("a@x"));
        d.apply(Command::PepDeleteNode {
            owner: "a@x".into(),
            node: "m".into(),
        });
        d.apply(Command::PepDeleteNode {
            owner: "a@x".into(),
            node: "n".into(),
        });
        assert_eq!(d.digest(), empty, "nothing left behind");
        publish(&mut d, "n", "1", "<a/>");
        d.apply(Command::SetVcard {
            owner: "a@x".into(),
            vcard: Some("<vCard/>".into()),
        });
        d.apply(Command::SetPrivate {
            owner: "a@x".into(),
            key: "ns\0q".into(),
            xml: "<q/>".into(),
            max_bytes: 10,
        });
        assert!(matches!(
            d.apply(Command::SetPrivate {
                owner: "a@x".into(),
                key: "ns2\0q".into(),
                xml: "<qqqqqqqq/>".into(),
                max_bytes: 10,
            }),
            Response::OverBudget {
                budget: Budget::PrivateBytes,
                ..
            }
        ));
        d.apply(Command::DeleteUser { jid: "a@x".into() });
        assert!(d.pep_nodes.is_empty() && d.pep_items.is_empty());
        assert!(d.vcards.is_empty() && d.private.is_empty());
    }
}
