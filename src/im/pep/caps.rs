//! XEP-0115 entity capabilities, for PEP's filtered notifications
//! (XEP-0163 §4.3.1): which nodes a client version wants (`node+notify`
//! features). A session's available presence carries `<c hash node ver/>`;
//! a `ver` nobody has told the cluster about yet is asked of that client
//! once (disco#info to `node#ver`, §6.2), its answer verified against the
//! `ver` (§5.4: the hash of the §5.1 verification string) and, if it
//! matches, its `+notify` nodes replicated ([`Command::SetCaps`]) so every
//! node filters alike. Unverified answers are not used (anyone could claim
//! any `ver`); clients without hashed caps get no notifications (only
//! what they fetch).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha1::Digest as _;
use starling_raft::command::{Command, Response};
use tracing::{debug, warn};

use super::super::{Ctx, Effect, Effects, Me};
use super::notify;
use crate::xmpp::{ns, Element};

/// Most disco#info queries waiting for an answer on one node.
const MAX_PENDING: usize = 4096;
/// How long an answer is waited for.
const PENDING_FOR: Duration = Duration::from_secs(60);
/// Most `+notify` nodes remembered per `ver`.
const MAX_NOTIFY: usize = 128;

/// A client's caps from its presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    pub hash: String,
    pub node: String,
    pub ver: String,
}

impl Caps {
    /// The caps table key: "hash ver".
    pub fn key(&self) -> String {
        format!("{} {}", self.hash, self.ver)
    }
}

/// The `<c/>` of a presence, if it has one with a hash (§4).
pub fn of_presence(p: &Element) -> Option<Caps> {
    let c = p.get_child("c", ns::CAPS)?;
    Some(Caps {
        hash: c.attr("hash")?.to_string(),
        node: c.attr("node").unwrap_or_default().to_string(),
        ver: c
            .attr("ver")
            .filter(|v| !v.is_empty() && v.len() <= 256)?
            .to_string(),
    })
}

/// The caps key of a serialized presence (as the session table holds it).
pub fn key_of_presence_xml(xml: &str) -> Option<String> {
    // Most presences have no caps: skip the parse then.
    if !xml.contains(ns::CAPS) {
        return None;
    }
    let p = crate::xmpp::parse_stanza(xml).ok()?;
    of_presence(&p).map(|c| c.key())
}

struct Pending {
    full: String,
    caps: Caps,
    at: Instant,
}

/// The disco#info queries this node sent and waits for.
#[derive(Default)]
pub struct CapsQueries(Mutex<HashMap<String, Pending>>);

impl CapsQueries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a query; false when too many are waiting or this `ver` is
    /// being asked already.
    fn add(&self, id: &str, full: &str, caps: &Caps) -> bool {
        let mut m = self.lock();
        let now = Instant::now();
        m.retain(|_, p| now.duration_since(p.at) < PENDING_FOR);
        if m.len() >= MAX_PENDING || m.values().any(|p| p.caps == *caps) {
            return false;
        }
        m.insert(
            id.to_string(),
            Pending {
                full: full.to_string(),
                caps: caps.clone(),
                at: now,
            },
        );
        true
    }

    fn take(&self, id: &str) -> Option<Pending> {
        self.lock().remove(id)
    }
}

/// An available presence from the session: if its caps are known and it
/// is the session's first (`initial`), the last items it wants (§4.3.2);
/// if they are not known, the disco#info query to its client.
pub fn on_presence(ctx: &Ctx<'_>, me: &Me<'_>, presence: &Element, initial: bool) -> Effects {
    let Some(caps) = of_presence(presence) else {
        return Effects::none();
    };
    {
        let state = ctx.cluster.state().read();
        let xml = presence.to_standalone_xml();
        if let Some(key) = notify::caps_key_of(&state.data, me.full.as_str(), Some(&xml)) {
            if !initial {
                return Effects::none();
            }
            let items = notify::last_items(&state.data, me.bare.as_str(), me.full.as_str(), &key);
            return Effects(items.into_iter().map(Effect::Write).collect());
        }
    }
    if hasher(&caps.hash).is_none() {
        return Effects::none();
    }
    let id = format!("caps-{}", crate::xmpp::id::random_id());
    if !ctx.services.caps.add(&id, me.full.as_str(), &caps) {
        return Effects::none();
    }
    // §6.2: ask the client about node#ver.
    Effects::write(
        Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", id)
            .with_attr("from", ctx.domain)
            .with_attr("to", me.full.to_string())
            .with_child(
                Element::new("query", ns::DISCO_INFO)
                    .with_attr("node", format!("{}#{}", caps.node, caps.ver)),
            ),
    )
}

/// A result or error iq to the server: the answer to a caps query if its
/// id is one, verified and stored; then the last items the session
/// wants. `None`: not a caps answer.
pub async fn on_reply(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element) -> Option<Effects> {
    let id = iq.attr("id")?;
    if !id.starts_with("caps-") {
        return None;
    }
    let pending = ctx.services.caps.take(id)?;
    if pending.full != me.full.as_str() || iq.attr("type") != Some("result") {
        return Some(Effects::none());
    }
    let query = iq.get_child("query", ns::DISCO_INFO)?;
    let computed = hasher(&pending.caps.hash).map(|h| h(verification_string(query).as_bytes()));
    // §5.4: an answer that does not hash to its `ver` is not cached under
    // it (anyone could claim any `ver`); as Prosody does, it still says
    // what this one session wants, kept for its full JID only (removed
    // with its binding).
    let key = if computed.as_deref() == Some(pending.caps.ver.as_str()) {
        pending.caps.key()
    } else {
        debug!(ver = %pending.caps.ver, "caps answer does not match its ver: kept for this session only");
        starling_raft::pep::session_caps_key(me.full.as_str())
    };
    let notify: Vec<String> = query
        .children()
        .filter(|c| c.is("feature", ns::DISCO_INFO))
        .filter_map(|f| f.attr("var")?.strip_suffix("+notify").map(str::to_string))
        .take(MAX_NOTIFY)
        .collect();
    let cmd = Command::SetCaps {
        ver: key.clone(),
        notify,
        max_entries: ctx.services.pep.max_caps,
    };
    match super::commit(ctx, cmd).await {
        Ok(Response::CapsSet { stored: true }) => {}
        Ok(other) => {
            warn!(?other, "caps not stored");
            return Some(Effects::none());
        }
        Err(e) => {
            warn!(error = %e, "caps not stored");
            return Some(Effects::none());
        }
    }
    let state = ctx.cluster.state().read();
    let items = notify::last_items(&state.data, me.bare.as_str(), me.full.as_str(), &key);
    Some(Effects(items.into_iter().map(Effect::Write).collect()))
}

type Hasher = fn(&[u8]) -> String;

/// The hash functions of §5.1 this server verifies.
fn hasher(name: &str) -> Option<Hasher> {
    use base64::engine::general_purpose::STANDARD as B64;
    match name {
        "sha-1" => Some(|s| B64.encode(sha1::Sha1::digest(s))),
        "sha-256" => Some(|s| B64.encode(sha2::Sha256::digest(s))),
        _ => None,
    }
}

/// §5.1: the verification string of a disco#info answer.
pub fn verification_string(query: &Element) -> String {
    let mut identities: Vec<String> = query
        .children()
        .filter(|c| c.is("identity", ns::DISCO_INFO))
        .map(|i| {
            format!(
                "{}/{}/{}/{}<",
                i.attr("category").unwrap_or_default(),
                i.attr("type").unwrap_or_default(),
                i.attr("xml:lang").unwrap_or_default(),
                i.attr("name").unwrap_or_default()
            )
        })
        .collect();
    identities.sort();
    let mut features: Vec<String> = query
        .children()
        .filter(|c| c.is("feature", ns::DISCO_INFO))
        .filter_map(|f| f.attr("var").map(|v| format!("{v}<")))
        .collect();
    features.sort();
    let mut forms: Vec<(String, String)> = query
        .children()
        .filter(|c| c.is("x", ns::XDATA))
        .filter_map(|x| {
            let values = |f: &Element| -> Vec<String> {
                let mut v: Vec<String> = f
                    .children()
                    .filter(|v| v.is("value", ns::XDATA))
                    .map(|v| v.text())
                    .collect();
                v.sort();
                v
            };
            let fields: Vec<&Element> = x.children().filter(|c| c.is("field", ns::XDATA)).collect();
            let form_type = fields
                .iter()
                .find(|f| f.attr("var") == Some("FORM_TYPE"))
                .map(|f| values(f).concat())?;
            let mut rest: Vec<(String, Vec<String>)> = fields
                .iter()
                .filter(|f| f.attr("var") != Some("FORM_TYPE"))
                .map(|f| (f.attr("var").unwrap_or_default().to_string(), values(f)))
                .collect();
            rest.sort();
            let mut s = format!("{form_type}<");
            for (var, vals) in rest {
                s.push_str(&var);
                s.push('<');
                for v in vals {
                    s.push_str(&v);
                    s.push('<');
                }
            }
            Some((form_type, s))
        })
        .collect();
    forms.sort();
    let mut out = identities.concat();
    out.push_str(&features.concat());
    for (_, f) in forms {
        out.push_str(&f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xep_0115_examples_verify() {
        // §5.2, the simple example.
        let q = crate::xmpp::parse_stanza(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/></query>",
        )
        .expect("parses");
        let h = hasher("sha-1").expect("sha-1");
        assert_eq!(
            h(verification_string(&q).as_bytes()),
            "QgayPKawpkPSDYmwT/WM94uAlu0="
        );
        // §5.3, the complex example (languages, an extended form).
        let q = crate::xmpp::parse_stanza(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field></x></query>",
        )
        .expect("parses");
        assert_eq!(
            h(verification_string(&q).as_bytes()),
            "q07IKJEyjvHSyhy//CH0CxmKi8w="
        );
    }

    #[test]
    fn caps_come_from_the_presence() {
        let p = crate::xmpp::parse_stanza(
            "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/></presence>",
        )
        .expect("parses");
        assert_eq!(
            of_presence(&p).map(|c| c.key()).as_deref(),
            Some("sha-1 v=")
        );
        assert_eq!(
            key_of_presence_xml(&p.to_standalone_xml()).as_deref(),
            Some("sha-1 v=")
        );
        assert_eq!(
            key_of_presence_xml("<presence xmlns='jabber:client'/>"),
            None
        );
    }
}
