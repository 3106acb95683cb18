//! XEP-0163 Personal Eventing Protocol: every account is a pubsub service
//! (XEP-0060) with the subset PEP needs. This module owns the iqs:
//! publish (§7.1, with §7.1.5 publish-options and §7.1.4 auto-create),
//! retract (§7.2), items (§6.5), and the owner's configure (§8.2) and
//! delete (§8.4); their errors (§7.1.3, §6.5.9) in [`PepError`].
//! - [`config`]: node configuration forms and access checks;
//! - [`notify`]: who gets a notification (XEP-0163 §4.3: the owner's and
//!   the presence subscribers' sessions whose caps ask `node+notify`),
//!   the event messages, and the last items a session gets when it comes
//!   online (§4.3.2);
//! - [`caps`]: XEP-0115: which client version wants which nodes, asked of
//!   the client by disco#info once per `ver`, verified (§5.4), replicated.
//!
//! Nodes, configurations and items are replicated ([`Command::PepPublish`]
//! and friends): a publish is answered only once committed, then its
//! notifications go out, so an acknowledged item survives any minority of
//! the nodes.
pub mod caps;
pub mod config;
pub mod notify;

use starling_raft::command::{Budget, Command, PepItem, PepLimits, PepNodeConfig, Response};
use starling_raft::ProposeError;
use tracing::warn;

use super::{error_reply, iq_result, Ctx, Effect, Effects, Me};
use crate::clock::now_ms;
use crate::xmpp::jid::BareJid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// What a PEP request is refused with (XEP-0060's conditions).
#[derive(Debug, thiserror::Error)]
pub enum PepError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("node required")]
    NodeRequired,
    #[error("the item must carry exactly one payload element")]
    InvalidPayload,
    #[error("payload required")]
    PayloadRequired,
    #[error("payload of {0} bytes over the limit of {1}")]
    PayloadTooBig(usize, usize),
    #[error("no such node")]
    NoSuchNode,
    #[error("no such item")]
    NoSuchItem,
    #[error("only the owner may do this")]
    Forbidden,
    #[error("a presence subscription is required")]
    PresenceRequired,
    #[error("the node is not open to you")]
    ClosedNode,
    #[error("the node's configuration does not match the publish-options")]
    PreconditionNotMet,
    #[error("{0}")]
    BadForm(&'static str),
    #[error("unsupported option value: {0}")]
    BadOption(String),
    #[error("{0} not supported")]
    Unsupported(&'static str),
    #[error("over the account's {what} limit of {cap}")]
    Budget { what: &'static str, cap: u64 },
    #[error("the node exists")]
    NodeExists,
    #[error("no quorum in reach: try again")]
    NoQuorum,
    #[error("not committed")]
    Internal,
    #[error("outcome unknown")]
    Unknown,
}

fn app(name: &str) -> Element {
    Element::new(name, ns::PUBSUB_ERRORS)
}

impl PepError {
    /// The stanza error (RFC 6120 §8.3 condition plus XEP-0060 §7.1.3 /
    /// §6.5.9 application condition).
    pub fn stanza(&self) -> StanzaError {
        use StanzaCondition as C;
        let text = self.to_string();
        match self {
            PepError::BadRequest(_) => StanzaError::with_text(C::BadRequest, text),
            PepError::NodeRequired => {
                StanzaError::new(C::BadRequest).with_app(app("nodeid-required"))
            }
            PepError::InvalidPayload => {
                StanzaError::with_text(C::BadRequest, text).with_app(app("invalid-payload"))
            }
            PepError::PayloadRequired => {
                StanzaError::new(C::BadRequest).with_app(app("payload-required"))
            }
            PepError::PayloadTooBig(..) => {
                StanzaError::with_text(C::NotAcceptable, text).with_app(app("payload-too-big"))
            }
            PepError::NoSuchNode | PepError::NoSuchItem => StanzaError::new(C::ItemNotFound),
            PepError::Forbidden => StanzaError::with_text(C::Forbidden, text),
            PepError::PresenceRequired => {
                StanzaError::new(C::NotAuthorized).with_app(app("presence-subscription-required"))
            }
            PepError::ClosedNode => StanzaError::new(C::NotAllowed).with_app(app("closed-node")),
            PepError::PreconditionNotMet => {
                StanzaError::with_text(C::Conflict, text).with_app(app("precondition-not-met"))
            }
            PepError::BadForm(_) => StanzaError::with_text(C::BadRequest, text),
            // §8.2.5: an invalid configuration is not-acceptable.
            PepError::BadOption(_) => StanzaError::with_text(C::NotAcceptable, text),
            PepError::Unsupported(feature) => StanzaError::new(C::FeatureNotImplemented)
                .with_app(app("unsupported").with_attr("feature", *feature)),
            PepError::Budget { .. } => StanzaError::with_text(C::ResourceConstraint, text),
            // §8.1.3: a node that exists already.
            PepError::NodeExists => StanzaError::with_text(C::Conflict, text),
            PepError::NoQuorum => StanzaError::with_text(C::RemoteServerTimeout, text),
            PepError::Internal => StanzaError::new(C::InternalServerError),
            PepError::Unknown => StanzaError::with_text(
                C::RemoteServerTimeout,
                "the outcome is not known: sending the request again is safe",
            ),
        }
    }
}

/// The proposer's caps for a publish or configure.
pub fn limits(ctx: &Ctx<'_>) -> PepLimits {
    PepLimits {
        max_items: ctx.services.pep.max_items_per_node,
        max_nodes: ctx.services.pep.max_nodes,
        max_bytes: ctx.services.pep.max_bytes_per_account,
    }
}

/// Commits an idempotent command, proposing it again (at most three times
/// in all) while its outcome is unknown; an outcome still unknown is
/// reported as such, never as success or failure.
pub async fn commit(ctx: &Ctx<'_>, cmd: Command) -> Result<Response, PepError> {
    for _ in 0..3 {
        match ctx.cluster.write(cmd.clone()).await {
            Ok(a) => return Ok(a.response),
            Err(ProposeError::Unknown(e)) => {
                warn!(error = %e, "PEP write outcome unknown, retrying")
            }
            Err(e) => {
                warn!(error = %e, "PEP write not committed");
                return Err(PepError::Internal);
            }
        }
    }
    Err(PepError::Unknown)
}

/// Confirms a raft read index before a read, as XEP-0313 queries do
/// (`im::mam`): whatever was acknowledged anywhere before the read began
/// is in this node's state when it answers (an item published and
/// acknowledged on another node a moment ago, or one whose node died
/// right after).
pub async fn read_index(ctx: &Ctx<'_>) -> Result<(), PepError> {
    // A leader that just died is replaced within an election: the read
    // waits for that (up to 5 s) rather than failing at once.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = tokio::time::timeout(
            left,
            ctx.cluster
                .propose(starling_raft::cluster::Proposal::ReadIndex),
        )
        .await;
        match outcome {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "PEP read: no read index yet");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "PEP read: no read index");
                return Err(PepError::NoQuorum);
            }
            Err(_) => return Err(PepError::NoQuorum),
        }
    }
}

/// A `<pubsub/>` or `<pubsub xmlns='…#owner'/>` iq addressed to `owner`'s
/// bare JID (the user's own, or another account's: only reads are open to
/// others).
pub async fn handle(ctx: &Ctx<'_>, me: &Me<'_>, el: Element, owner: &BareJid) -> Effects {
    match dispatch(ctx, me, &el, owner).await {
        Ok(effects) => effects,
        Err(e) => error_reply(ctx.domain, me, &el, e.stanza()),
    }
}

async fn dispatch(
    ctx: &Ctx<'_>,
    me: &Me<'_>,
    el: &Element,
    owner: &BareJid,
) -> Result<Effects, PepError> {
    let ty = el.attr("type").unwrap_or_default();
    let pubsub = el
        .children()
        .next()
        .ok_or(PepError::BadRequest("empty iq"))?;
    let mine = owner == me.bare;
    let mut ops = pubsub.children();
    let op = ops
        .next()
        .ok_or(PepError::BadRequest("no pubsub operation"))?;
    // §7.1.5 `<publish-options/>` beside `<publish/>`; §8.1.3
    // `<configure/>` beside `<create/>`.
    let options = ops.find(|c| matches!(c.name(), "publish-options" | "configure"));
    match (pubsub.ns(), op.name(), ty) {
        (ns::PUBSUB, "items", "get") => {
            read_index(ctx).await?;
            items(ctx, me, el, owner, op)
        }
        (ns::PUBSUB, "publish", "set") if mine => publish(ctx, me, el, op, options).await,
        (ns::PUBSUB, "retract", "set") if mine => retract(ctx, me, el, op).await,
        (ns::PUBSUB, "create", "set") if mine => create(ctx, me, el, op, options).await,
        (ns::PUBSUB_OWNER, "configure", _) if mine => configure(ctx, me, el, op).await,
        (ns::PUBSUB_OWNER, "delete", "set") if mine => delete(ctx, me, el, op).await,
        (ns::PUBSUB, "publish" | "retract" | "create", "set")
        | (ns::PUBSUB_OWNER, "configure" | "delete", _) => Err(PepError::Forbidden),
        // Explicit subscriptions are not offered: PEP delivers by presence
        // and caps (XEP-0163 §4.3).
        (ns::PUBSUB, "subscribe" | "unsubscribe" | "subscriptions" | "options", _) => {
            Err(PepError::Unsupported("subscribe"))
        }
        (ns::PUBSUB_OWNER, "subscriptions" | "affiliations" | "purge", _) => {
            Err(PepError::Unsupported("manage-subscriptions"))
        }
        _ => Err(PepError::BadRequest("unknown pubsub request")),
    }
}

fn node_of(op: &Element) -> Result<String, PepError> {
    op.attr("node")
        .filter(|n| !n.is_empty() && n.len() <= 1024)
        .map(str::to_string)
        .ok_or(PepError::NodeRequired)
}

/// The node's config, if it exists.
fn node_config(ctx: &Ctx<'_>, owner: &str, node: &str) -> Option<PepNodeConfig> {
    let state = ctx.cluster.state().read();
    state
        .data
        .pep_nodes
        .get(&(owner.to_string(), node.to_string()))
        .map(|n| n.config.clone())
}

/// §7.1: publish an item; §7.1.5 publish-options; §7.1.4 auto-create.
async fn publish(
    ctx: &Ctx<'_>,
    me: &Me<'_>,
    iq: &Element,
    op: &Element,
    options: Option<&Element>,
) -> Result<Effects, PepError> {
    let node = node_of(op)?;
    let mut items = op.children().filter(|c| c.name() == "item");
    let item = items.next();
    if items.next().is_some() {
        return Err(PepError::BadRequest("one item per publish"));
    }
    let payload = match item.map(|i| i.children().collect::<Vec<_>>()) {
        Some(p) if p.len() == 1 => p[0].to_standalone_xml(),
        Some(p) if p.len() > 1 => return Err(PepError::InvalidPayload),
        _ => return Err(PepError::PayloadRequired),
    };
    let max = ctx.services.pep.max_item_bytes;
    if payload.len() > max {
        return Err(PepError::PayloadTooBig(payload.len(), max));
    }
    let id = match item.and_then(|i| i.attr("id")).filter(|i| !i.is_empty()) {
        Some(i) if i.len() > 1024 => return Err(PepError::BadRequest("item id too long")),
        Some(i) => i.to_string(),
        None => crate::xmpp::id::random_id(),
    };
    let cap = ctx.services.pep.max_items_per_node;
    let overlay = options
        .and_then(|o| o.get_child("x", ns::XDATA))
        .map(|x| config::parse_form(x, ns::PUBSUB_PUBLISH_OPTIONS, false))
        .transpose()
        .map_err(|e| match e {
            // §7.1.5: an option the node cannot have is a failed
            // precondition.
            PepError::BadOption(_) => PepError::PreconditionNotMet,
            e => e,
        })?;
    let owner = me.bare.to_string();
    let existing = node_config(ctx, &owner, &node);
    let (create, require) = match (&existing, &overlay) {
        (Some(c), Some(o)) if !o.matches(c, cap) => return Err(PepError::PreconditionNotMet),
        (Some(c), Some(_)) => (c.clone(), Some(c.clone())),
        (None, Some(o)) => {
            let c = o.apply(&config::default_config(), cap);
            (c.clone(), Some(c))
        }
        (_, None) => (config::default_config(), None),
    };
    let payload_el = item.and_then(|i| i.children().next().cloned());
    let resp = commit(
        ctx,
        Command::PepPublish {
            owner: owner.clone(),
            node: node.clone(),
            item_id: id.clone(),
            item: PepItem {
                seq: 0,
                payload,
                publisher: me.full.to_string(),
                stamp_ms: now_ms(),
            },
            create,
            require,
            limits: limits(ctx),
        },
    )
    .await?;
    match resp {
        Response::PepPublished { .. } => {}
        other => return Err(refusal(other)),
    }
    let reply = iq_result(me, iq).with_child(
        Element::new("pubsub", ns::PUBSUB).with_child(
            Element::new("publish", ns::PUBSUB)
                .with_attr("node", node.clone())
                .with_child(Element::new("item", ns::PUBSUB).with_attr("id", id.clone())),
        ),
    );
    let mut effects = Effects::write(reply);
    let mut item_el = Element::new("item", ns::PUBSUB_EVENT).with_attr("id", id);
    if let Some(p) = payload_el {
        item_el.push(p);
    }
    let event = Element::new("items", ns::PUBSUB_EVENT)
        .with_attr("node", node.clone())
        .with_child(item_el);
    let targets = notify::recipients(ctx, &owner, &node);
    effects.push(Effect::Deliver(notify::events(&owner, &targets, &event)));
    Ok(effects)
}

/// The error of a refused PEP command.
fn refusal(resp: Response) -> PepError {
    match resp {
        Response::PepPreconditionNotMet => PepError::PreconditionNotMet,
        Response::PepNodeExists => PepError::NodeExists,
        Response::PepNoSuchNode => PepError::NoSuchNode,
        Response::OverBudget {
            budget: Budget::PepNodes,
            cap,
        } => PepError::Budget { what: "nodes", cap },
        Response::OverBudget {
            budget: Budget::PepBytes,
            cap,
        } => PepError::Budget {
            what: "PEP bytes",
            cap,
        },
        other => {
            warn!(?other, "unexpected PEP result");
            PepError::Internal
        }
    }
}

/// §7.2: retract an item; notified when asked (`notify`) or configured.
async fn retract(
    ctx: &Ctx<'_>,
    me: &Me<'_>,
    iq: &Element,
    op: &Element,
) -> Result<Effects, PepError> {
    let node = node_of(op)?;
    let id = op
        .get_child("item", ns::PUBSUB)
        .and_then(|i| i.attr("id"))
        .filter(|i| !i.is_empty())
        .ok_or(PepError::BadRequest("item id required"))?
        .to_string();
    let owner = me.bare.to_string();
    let config = node_config(ctx, &owner, &node).ok_or(PepError::NoSuchNode)?;
    let resp = commit(
        ctx,
        Command::PepRetract {
            owner: owner.clone(),
            node: node.clone(),
            item_id: id.clone(),
        },
    )
    .await?;
    match resp {
        Response::PepRetracted { existed: true } => {}
        Response::PepRetracted { existed: false } => return Err(PepError::NoSuchItem),
        other => return Err(refusal(other)),
    }
    let mut effects = Effects::write(iq_result(me, iq));
    let asked = op.attr("notify").map(|v| v == "1" || v == "true");
    if asked.unwrap_or(config.notify_retract) {
        let event = Element::new("items", ns::PUBSUB_EVENT)
            .with_attr("node", node.clone())
            .with_child(Element::new("retract", ns::PUBSUB_EVENT).with_attr("id", id));
        let targets = notify::recipients(ctx, &owner, &node);
        effects.push(Effect::Deliver(notify::events(&owner, &targets, &event)));
    }
    Ok(effects)
}

/// §6.5: items of a node, all, the last `max_items`, or those named.
fn items(
    ctx: &Ctx<'_>,
    me: &Me<'_>,
    iq: &Element,
    owner: &BareJid,
    op: &Element,
) -> Result<Effects, PepError> {
    let node = node_of(op)?;
    let owner_s = owner.to_string();
    let state = ctx.cluster.state().read();
    let data = &state.data;
    let n = data
        .pep_nodes
        .get(&(owner_s.clone(), node.clone()))
        .ok_or(PepError::NoSuchNode)?;
    let subscribed = data
        .roster
        .get(&(owner_s.clone(), me.bare.to_string()))
        .is_some_and(|i| i.has_from());
    config::may_read(n.config.access, me.bare.as_str(), &owner_s, subscribed)?;
    let wanted: Vec<&str> = op
        .children()
        .filter(|c| c.name() == "item")
        .filter_map(|c| c.attr("id"))
        .collect();
    let all = data.pep_items_of(&owner_s, &node);
    let max = op
        .attr("max_items")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let chosen: Vec<_> = if wanted.is_empty() {
        let skip = all.len().saturating_sub(max);
        all.into_iter().skip(skip).collect()
    } else {
        all.into_iter()
            .filter(|(id, _)| wanted.contains(&id.as_str()))
            .collect()
    };
    let mut items = Element::new("items", ns::PUBSUB).with_attr("node", node);
    for (id, item) in chosen {
        items.push(notify::item_element(ns::PUBSUB, &id, item));
    }
    drop(state);
    let mut reply =
        iq_result(me, iq).with_child(Element::new("pubsub", ns::PUBSUB).with_child(items));
    if !mine_or_none(iq, me) {
        reply.set_attr("from", owner.to_string());
    }
    Ok(Effects::write(reply))
}

fn mine_or_none(iq: &Element, me: &Me<'_>) -> bool {
    iq.attr("to").is_none_or(|t| t == me.bare.as_str())
}

/// §8.1: create a node (with its configuration, §8.1.3); `conflict` if it
/// exists.
async fn create(
    ctx: &Ctx<'_>,
    me: &Me<'_>,
    iq: &Element,
    op: &Element,
    options: Option<&Element>,
) -> Result<Effects, PepError> {
    let node = node_of(op)?;
    let owner = me.bare.to_string();
    if node_config(ctx, &owner, &node).is_some() {
        return Err(PepError::NodeExists);
    }
    let cap = ctx.services.pep.max_items_per_node;
    // §8.1.3: <configure><x/></configure> beside <create/>.
    let overlay = match options.and_then(|o| o.get_child("x", ns::XDATA)) {
        Some(x) => config::parse_form(x, ns::PUBSUB_NODE_CONFIG, false)?,
        None => config::Overlay::default(),
    };
    let config = overlay.apply(&config::default_config(), cap);
    let resp = commit(
        ctx,
        Command::PepCreate {
            owner,
            node,
            config,
            created_ms: now_ms(),
            limits: limits(ctx),
        },
    )
    .await?;
    if !matches!(resp, Response::PepPublished { .. }) {
        return Err(refusal(resp));
    }
    Ok(Effects::write(iq_result(me, iq)))
}

/// §8.2: the configuration form (get), or a new configuration (set).
async fn configure(
    ctx: &Ctx<'_>,
    me: &Me<'_>,
    iq: &Element,
    op: &Element,
) -> Result<Effects, PepError> {
    let node = node_of(op)?;
    let owner = me.bare.to_string();
    let current = node_config(ctx, &owner, &node).ok_or(PepError::NoSuchNode)?;
    if iq.attr("type") == Some("get") {
        let form = config::config_form(&current);
        return Ok(Effects::write(
            iq_result(me, iq).with_child(
                Element::new("pubsub", ns::PUBSUB_OWNER).with_child(
                    Element::new("configure", ns::PUBSUB_OWNER)
                        .with_attr("node", node)
                        .with_child(form),
                ),
            ),
        ));
    }
    let x = op
        .get_child("x", ns::XDATA)
        .ok_or(PepError::BadForm("a configuration form is expected"))?;
    if x.attr("type") == Some("cancel") {
        return Ok(Effects::write(iq_result(me, iq)));
    }
    let overlay = config::parse_form(x, ns::PUBSUB_NODE_CONFIG, false)?;
    let config = overlay.apply(&current, ctx.services.pep.max_items_per_node);
    let resp = commit(
        ctx,
        Command::PepConfigure {
            owner,
            node,
            config,
            limits: limits(ctx),
        },
    )
    .await?;
    match resp {
        Response::PepConfigured { .. } => Ok(Effects::write(iq_result(me, iq))),
        other => Err(refusal(other)),
    }
}

/// §8.4: delete a node and its items; subscribers are told (§8.4.2).
async fn delete(
    ctx: &Ctx<'_>,
    me: &Me<'_>,
    iq: &Element,
    op: &Element,
) -> Result<Effects, PepError> {
    let node = node_of(op)?;
    let owner = me.bare.to_string();
    // Who would be told, read before the node goes.
    let targets = notify::recipients(ctx, &owner, &node);
    let resp = commit(
        ctx,
        Command::PepDeleteNode {
            owner: owner.clone(),
            node: node.clone(),
        },
    )
    .await?;
    match resp {
        Response::PepNodeDeleted { .. } => {}
        other => return Err(refusal(other)),
    }
    let event = Element::new("delete", ns::PUBSUB_EVENT).with_attr("node", node);
    let mut effects = Effects::write(iq_result(me, iq));
    effects.push(Effect::Deliver(notify::events(&owner, &targets, &event)));
    Ok(effects)
}
