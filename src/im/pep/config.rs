//! PEP node configuration as XEP-0004 forms: the XEP-0060 §7.1.5
//! publish-options precondition, the §8.2 owner configuration form (what
//! it shows and what a submitted one changes), and the access checks of
//! §4.5 / §6.5.9 for the models PEP offers (`presence`, `open`,
//! `whitelist`; XEP-0163 §3.1: `presence` by default).
use starling_raft::command::{PepAccess, PepNodeConfig};

use super::PepError;
use crate::xmpp::{ns, Element};

/// The fields a form sets; the others are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub access: Option<PepAccess>,
    /// `max_items`; `u32::MAX` for `max` (lowered to the server's cap).
    pub max_items: Option<u32>,
    pub persist: Option<bool>,
    pub send_last: Option<bool>,
    pub notify_retract: Option<bool>,
}

/// XEP-0163 §3.1 auto-create: `presence` access, one item kept.
pub fn default_config() -> PepNodeConfig {
    PepNodeConfig::default()
}

impl Overlay {
    /// `base` with the fields this form sets, `max_items` within `cap`.
    pub fn apply(&self, base: &PepNodeConfig, cap: u32) -> PepNodeConfig {
        let mut c = base.clone();
        if let Some(a) = self.access {
            c.access = a;
        }
        if let Some(m) = self.max_items {
            c.max_items = m.clamp(1, cap);
        }
        if let Some(p) = self.persist {
            c.persist = p;
        }
        if let Some(s) = self.send_last {
            c.send_last = s;
        }
        if let Some(n) = self.notify_retract {
            c.notify_retract = n;
        }
        c
    }

    /// §7.1.5: whether `config` already has every value this form asks
    /// for (`max` matches the server's cap).
    pub fn matches(&self, config: &PepNodeConfig, cap: u32) -> bool {
        self.apply(config, cap) == *config
    }
}

fn bool_value(v: &str) -> Option<bool> {
    match v {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Parses a submitted form of type `form_type` (publish-options or
/// node_config). A field this server does not know is refused when
/// `strict` (a configuration it cannot honour, §8.2.5), ignored otherwise.
/// A known field with a value it cannot take is `not-acceptable`.
pub fn parse_form(x: &Element, form_type: &str, strict: bool) -> Result<Overlay, PepError> {
    if !x.is("x", ns::XDATA) || x.attr("type").is_some_and(|t| t != "submit") {
        return Err(PepError::BadForm("a submitted data form is expected"));
    }
    let mut o = Overlay::default();
    for f in x.children().filter(|c| c.is("field", ns::XDATA)) {
        let var = f.attr("var").unwrap_or_default();
        let values: Vec<String> = f
            .children()
            .filter(|v| v.is("value", ns::XDATA))
            .map(|v| v.text())
            .collect();
        let one = values.first().map(String::as_str).unwrap_or_default();
        let bad = || PepError::BadOption(var.to_string());
        match var {
            "FORM_TYPE" if one != form_type => {
                return Err(PepError::BadForm("the form has another FORM_TYPE"));
            }
            "FORM_TYPE" => {}
            "pubsub#access_model" => {
                o.access = Some(match one {
                    "presence" => PepAccess::Presence,
                    "open" => PepAccess::Open,
                    "whitelist" => PepAccess::Whitelist,
                    _ => return Err(bad()),
                })
            }
            "pubsub#max_items" => {
                o.max_items = Some(if one == "max" {
                    u32::MAX
                } else {
                    one.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(bad)?
                })
            }
            "pubsub#persist_items" => o.persist = Some(bool_value(one).ok_or_else(bad)?),
            "pubsub#notify_retract" => o.notify_retract = Some(bool_value(one).ok_or_else(bad)?),
            "pubsub#send_last_published_item" => {
                o.send_last = Some(match one {
                    "never" => false,
                    "on_sub" | "on_sub_and_presence" => true,
                    _ => return Err(bad()),
                })
            }
            // Fields whose only value here is the default: accepted when
            // they ask for it.
            "pubsub#deliver_notifications"
            | "pubsub#deliver_payloads"
            | "pubsub#presence_based_delivery"
                if bool_value(one).is_some() => {}
            "pubsub#publish_model" if one == "publishers" => {}
            "pubsub#notify_delete" | "pubsub#notify_config" | "pubsub#notify_sub"
                if bool_value(one).is_some() => {}
            _ if strict => return Err(bad()),
            _ => {}
        }
    }
    Ok(o)
}

fn field(var: &str, kind: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::XDATA)
        .with_attr("var", var)
        .with_attr("type", kind);
    for v in values {
        f.push(Element::new("value", ns::XDATA).with_text(*v));
    }
    f
}

/// §8.2.1: the configuration form of a node, with its current values.
pub fn config_form(config: &PepNodeConfig) -> Element {
    let access = match config.access {
        PepAccess::Presence => "presence",
        PepAccess::Open => "open",
        PepAccess::Whitelist => "whitelist",
    };
    let b = |v: bool| if v { "1" } else { "0" };
    let mut access_field = field("pubsub#access_model", "list-single", &[access]);
    for opt in ["presence", "open", "whitelist"] {
        access_field.push(
            Element::new("option", ns::XDATA)
                .with_child(Element::new("value", ns::XDATA).with_text(opt)),
        );
    }
    Element::new("x", ns::XDATA)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", "hidden", &[ns::PUBSUB_NODE_CONFIG]))
        .with_child(access_field)
        .with_child(field(
            "pubsub#max_items",
            "text-single",
            &[&config.max_items.to_string()],
        ))
        .with_child(field(
            "pubsub#persist_items",
            "boolean",
            &[b(config.persist)],
        ))
        .with_child(field(
            "pubsub#send_last_published_item",
            "list-single",
            &[if config.send_last {
                "on_sub_and_presence"
            } else {
                "never"
            }],
        ))
        .with_child(field(
            "pubsub#notify_retract",
            "boolean",
            &[b(config.notify_retract)],
        ))
}

/// Whether `requester` (a bare JID) may read `owner`'s node of `access`:
/// `Ok`, or the XEP-0060 §6.5.9 error. `subscribed`: `requester` receives
/// `owner`'s presence (a from/both subscription in `owner`'s roster).
pub fn may_read(
    access: PepAccess,
    requester: &str,
    owner: &str,
    subscribed: bool,
) -> Result<(), PepError> {
    if requester == owner {
        return Ok(());
    }
    match access {
        PepAccess::Open => Ok(()),
        PepAccess::Presence if subscribed => Ok(()),
        // §6.5.9.3: not-authorized + presence-subscription-required.
        PepAccess::Presence => Err(PepError::PresenceRequired),
        // §6.5.9.4 (whitelist: the owner is the only one on it here):
        // not-allowed + closed-node.
        PepAccess::Whitelist => Err(PepError::ClosedNode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &str) -> Element {
        crate::xmpp::parse_stanza(&format!(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{}</value></field>{fields}</x>",
            ns::PUBSUB_PUBLISH_OPTIONS
        ))
        .expect("form")
    }

    #[test]
    fn publish_options_of_bookmarks_and_omemo_parse_and_match() {
        let bookmarks = form(
            "<field var='pubsub#persist_items'><value>true</value></field>\
             <field var='pubsub#max_items'><value>max</value></field>\
             <field var='pubsub#send_last_published_item'><value>never</value></field>\
             <field var='pubsub#access_model'><value>whitelist</value></field>",
        );
        let o = parse_form(&bookmarks, ns::PUBSUB_PUBLISH_OPTIONS, false).expect("parses");
        let c = o.apply(&default_config(), 256);
        assert_eq!(c.access, PepAccess::Whitelist);
        assert_eq!(c.max_items, 256);
        assert!(!c.send_last && c.persist);
        assert!(o.matches(&c, 256));
        assert!(!o.matches(&default_config(), 256));
        let open = form("<field var='pubsub#access_model'><value>open</value></field>");
        let o = parse_form(&open, ns::PUBSUB_PUBLISH_OPTIONS, false).expect("parses");
        assert!(!o.matches(&default_config(), 256));
        let bad = form("<field var='pubsub#access_model'><value>roster</value></field>");
        assert!(matches!(
            parse_form(&bad, ns::PUBSUB_PUBLISH_OPTIONS, false),
            Err(PepError::BadOption(_))
        ));
        let unknown = form("<field var='pubsub#title'><value>t</value></field>");
        assert!(parse_form(&unknown, ns::PUBSUB_PUBLISH_OPTIONS, false).is_ok());
    }

    #[test]
    fn access_models_decide_who_reads() {
        assert!(may_read(PepAccess::Whitelist, "a@x", "a@x", false).is_ok());
        assert!(may_read(PepAccess::Open, "b@x", "a@x", false).is_ok());
        assert!(may_read(PepAccess::Presence, "b@x", "a@x", true).is_ok());
        assert!(matches!(
            may_read(PepAccess::Presence, "b@x", "a@x", false),
            Err(PepError::PresenceRequired)
        ));
        assert!(matches!(
            may_read(PepAccess::Whitelist, "b@x", "a@x", true),
            Err(PepError::ClosedNode)
        ));
    }
}
