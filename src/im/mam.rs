//! XEP-0313 Message Archive Management (`urn:xmpp:mam:2`), the protocol
//! side for an account's own archive: the query (§4: the XEP-0004 form
//! with `with`, `start`, `end`, and the `after-id`, `before-id`, `ids`
//! extras; XEP-0059 RSM paging with `max`, `after`, `before`), its
//! results (`<result>` messages with the XEP-0297 forwarded message and
//! its XEP-0203 delay, then `<fin>` with `complete` and the RSM set), the
//! form discovery (§4.1.5: a `get` of the query) and the preferences
//! (§6: `<prefs default>` with `<always/>` and `<never/>`).
//!
//! What is archived and how it is written is the router's
//! (`router::archiver`); the archive is replicated state
//! (`starling_raft::archive`), so every node answers from its own copy.
//!
//! # Reads see the writes acknowledged before them
//! A message is acknowledged to its sender (XEP-0198) only once its
//! archive entry is committed, but committed is not yet applied on the
//! node that answers a query. So a query first confirms a raft read index
//! (`Proposal::ReadIndex`: the leader confirms its leadership with a round
//! of heartbeats, and this node applies up to its commit index) and only
//! then reads its local state: whatever was acknowledged before the query
//! began is in the answer, on any node. It costs one round trip to the
//! leader per query, not a log entry. A node that cannot confirm one (cut
//! off from the majority) answers `remote-server-timeout` (type `wait`)
//! rather than a possibly stale page.
//!
//! The parsing and the building are pure functions tested below; the
//! handler adds only the read index, the state read and the raft write of
//! the preferences.
use std::time::Duration;

use starling_raft::archive::{ArchiveQuery, Page, PageRequest, QueryError};
use starling_raft::command::{ArchiveDefault, ArchivePrefs, Command, Response};
use tracing::warn;

use super::{error_reply, iq_result, Ctx, Effects, Me};
use crate::clock::datetime;
use crate::router::archiver::ArchiveConfig;
use crate::xmpp::jid::Jid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

/// Longest a query waits for its read index.
const READ_INDEX_LIMIT: Duration = Duration::from_secs(5);

/// The form fields a query understands (§4.1.1, and the `after-id`,
/// `before-id` and `ids` fields of XEP-0313 0.7+).
const FIELDS: &[(&str, &str)] = &[
    ("with", "jid-single"),
    ("start", "text-single"),
    ("end", "text-single"),
    ("after-id", "text-single"),
    ("before-id", "text-single"),
    ("ids", "text-multi"),
];

/// The paging limits of a query (from `[archive]`).
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    pub default: usize,
    pub max: usize,
}

impl PageLimits {
    pub fn of(c: Option<&ArchiveConfig>) -> PageLimits {
        match c {
            Some(c) => PageLimits {
                default: c.default_page,
                max: c.max_page,
            },
            None => PageLimits {
                default: 50,
                max: 250,
            },
        }
    }
}

pub async fn handle(ctx: &Ctx<'_>, me: &Me<'_>, el: Element) -> Effects {
    let Some(child) = el.children().next() else {
        return Effects::none();
    };
    let config = ctx.router.archive_config();
    match (child.name(), el.attr("type")) {
        ("query", Some("get")) => Effects::write(iq_result(me, &el).with_child(form())),
        ("query", Some("set")) => {
            let parsed = match parse_query(child, PageLimits::of(config)) {
                Ok(p) => p,
                Err(e) => return error_reply(ctx.domain, me, &el, e),
            };
            if let Err(e) = read_index(ctx).await {
                return error_reply(ctx.domain, me, &el, e);
            }
            let page = {
                let state = ctx.cluster.state().read();
                state.data.archive_page(me.bare.as_str(), &parsed.query)
            };
            match page {
                Ok(page) => results(me, &el, parsed.query_id.as_deref(), &page),
                Err(QueryError::UnknownId(id)) => error_reply(
                    ctx.domain,
                    me,
                    &el,
                    StanzaError::with_text(
                        StanzaCondition::ItemNotFound,
                        format!("no message {id} in the archive"),
                    ),
                ),
            }
        }
        ("prefs", Some("get")) => {
            // A change made on another node just before is seen here too.
            if let Err(e) = read_index(ctx).await {
                return error_reply(ctx.domain, me, &el, e);
            }
            let default = config.map_or(ArchiveDefault::Always, |c| c.default);
            let prefs = {
                let state = ctx.cluster.state().read();
                state
                    .data
                    .archive_prefs_of(me.bare.as_str())
                    .cloned()
                    .unwrap_or_else(|| ArchivePrefs::with_default(default))
            };
            Effects::write(iq_result(me, &el).with_child(prefs_element(&prefs)))
        }
        ("prefs", Some("set")) => match parse_prefs(child) {
            Ok(prefs) => set_prefs(ctx, me, &el, prefs).await,
            Err(e) => error_reply(ctx.domain, me, &el, e),
        },
        _ => error_reply(
            ctx.domain,
            me,
            &el,
            StanzaError::new(StanzaCondition::BadRequest),
        ),
    }
}

/// Confirms a read index (see the module doc).
async fn read_index(ctx: &Ctx<'_>) -> Result<(), StanzaError> {
    confirm_read_index(ctx.cluster).await
}

/// Confirms a read index on `cluster`: what was committed anywhere before
/// is applied here when this returns (also for XEP-0045 room archives).
pub async fn confirm_read_index(cluster: &starling_raft::ClusterHandle) -> Result<(), StanzaError> {
    let unavailable = || {
        StanzaError::with_text(
            StanzaCondition::RemoteServerTimeout,
            "the archive cannot be read here now (no quorum in reach); try again",
        )
    };
    match tokio::time::timeout(
        READ_INDEX_LIMIT,
        cluster.propose(starling_raft::cluster::Proposal::ReadIndex),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            warn!(error = %e, "archive query: no read index");
            Err(unavailable())
        }
        Err(_) => Err(unavailable()),
    }
}

async fn set_prefs(ctx: &Ctx<'_>, me: &Me<'_>, el: &Element, prefs: ArchivePrefs) -> Effects {
    let cmd = Command::SetArchivePrefs {
        owner: me.bare.to_string(),
        prefs: prefs.clone(),
    };
    let err = match ctx.cluster.write(cmd).await {
        Ok(a) => match a.response {
            Response::ArchivePrefsSet => {
                return Effects::write(iq_result(me, el).with_child(prefs_element(&prefs)))
            }
            Response::OverBudget { cap, .. } => StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                format!("at most {cap} JIDs in <always/> and in <never/>"),
            ),
            other => {
                warn!(?other, "unexpected archive preferences result");
                StanzaError::new(StanzaCondition::InternalServerError)
            }
        },
        Err(e) => {
            warn!(error = %e, "archive preferences not committed");
            StanzaError::new(StanzaCondition::InternalServerError)
        }
    };
    error_reply(ctx.domain, me, el, err)
}

/// A query, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    /// The `queryid` the results carry.
    pub query_id: Option<String>,
    pub query: ArchiveQuery,
}

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::with_text(StanzaCondition::BadRequest, text)
}

/// A JID field value, normalized.
fn jid_value(v: &str) -> Result<String, StanzaError> {
    Jid::new(v.trim())
        .map(|j| j.to_string())
        .map_err(|_| bad(format!("'{v}' is not a JID")))
}

/// An XEP-0082 date-time as Unix ms (`Z` or a `±hh:mm` offset, optional
/// fractions of a second).
pub fn parse_datetime(s: &str) -> Option<u64> {
    let s = s.trim();
    let (base, offset_ms): (String, i64) = if let Some(b) = s.strip_suffix('Z') {
        (format!("{b}Z"), 0)
    } else {
        let split = s.len().checked_sub(6)?;
        let (b, off) = s.split_at(split);
        let sign = match off.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return None,
        };
        let (h, m) = off[1..].split_once(':')?;
        let mins = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
        (format!("{b}Z"), sign * mins * 60_000)
    };
    let t = humantime::parse_rfc3339_weak(&base).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    u64::try_from(ms - offset_ms).ok()
}

/// §4.1: the query's form and RSM set. Errors: `bad-request` for a form
/// that is not a MAM form, a field this server does not support, or a
/// value it cannot read; `feature-not-implemented` for RSM `<index/>`
/// (paging by position).
pub fn parse_query(query: &Element, limits: PageLimits) -> Result<ParsedQuery, StanzaError> {
    let mut q = ArchiveQuery::default();
    if let Some(form) = query.get_child("x", ns::XDATA) {
        if form.attr("type").is_some_and(|t| t != "submit") {
            return Err(bad("the form must be of type 'submit'"));
        }
        for field in form.children().filter(|c| c.is("field", ns::XDATA)) {
            let var = field.attr("var").unwrap_or("");
            let values: Vec<String> = field
                .children()
                .filter(|c| c.is("value", ns::XDATA))
                .map(|v| v.text())
                .collect();
            let one = || {
                values
                    .first()
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            };
            match var {
                "FORM_TYPE" => {
                    if one().as_deref() != Some(ns::MAM) {
                        return Err(bad(format!("FORM_TYPE must be {}", ns::MAM)));
                    }
                }
                "with" => q.with = one().map(|v| jid_value(&v)).transpose()?,
                "start" | "end" => {
                    let ms = one()
                        .map(|v| {
                            parse_datetime(&v)
                                .ok_or_else(|| bad(format!("'{v}' is not an XEP-0082 date-time")))
                        })
                        .transpose()?;
                    if var == "start" {
                        q.start_ms = ms;
                    } else {
                        q.end_ms = ms;
                    }
                }
                "after-id" => q.after_id = one(),
                "before-id" => q.before_id = one(),
                "ids" => {
                    q.ids = Some(
                        values
                            .iter()
                            .map(|v| v.trim().to_string())
                            .filter(|v| !v.is_empty())
                            .collect(),
                    )
                }
                other => return Err(bad(format!("field '{other}' is not supported"))),
            }
        }
    }
    let mut page = PageRequest {
        max: limits.default,
        ..Default::default()
    };
    if let Some(set) = query.get_child("set", ns::RSM) {
        if set.has_child("index", ns::RSM) {
            return Err(StanzaError::with_text(
                StanzaCondition::FeatureNotImplemented,
                "paging by index is not supported; use after and before",
            ));
        }
        if let Some(m) = set.get_child("max", ns::RSM) {
            let max: usize = m
                .text()
                .trim()
                .parse()
                .map_err(|_| bad("RSM max must be a non-negative integer"))?;
            page.max = max.min(limits.max);
        }
        if let Some(a) = set.get_child("after", ns::RSM) {
            let id = a.text().trim().to_string();
            if id.is_empty() {
                return Err(bad("RSM after needs an id"));
            }
            page.after = Some(id);
        }
        // XEP-0059 §2.5: an empty <before/> asks for the last page.
        page.before = set
            .get_child("before", ns::RSM)
            .map(|b| b.text().trim().to_string());
        if page.after.is_some() && page.before.is_some() {
            return Err(bad("RSM after and before together are not supported"));
        }
    }
    q.page = page;
    Ok(ParsedQuery {
        query_id: query.attr("queryid").map(str::to_string),
        query: q,
    })
}

/// §4.1.5: the fields a query may use.
pub fn form() -> Element {
    let mut x = Element::new("x", ns::XDATA)
        .with_attr("type", "form")
        .with_child(
            Element::new("field", ns::XDATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", ns::XDATA).with_text(ns::MAM)),
        );
    for (var, ty) in FIELDS {
        x.push(
            Element::new("field", ns::XDATA)
                .with_attr("var", *var)
                .with_attr("type", *ty),
        );
    }
    Element::new("query", ns::MAM).with_child(x)
}

/// §4.2: one `<result>` message per item, then the iq result with `<fin>`.
pub fn results(me: &Me<'_>, iq: &Element, query_id: Option<&str>, page: &Page) -> Effects {
    let mut out = Effects::none();
    let (messages, fin) = result_stanzas(me.full.as_str(), None, query_id, page);
    for m in messages {
        out.push(super::Effect::Write(m));
    }
    out.push(super::Effect::Write(iq_result(me, iq).with_child(fin)));
    out
}

/// The `<result>` messages of a page for `to` (from `from`: none for the
/// account's own archive, the room for an XEP-0045 room's), and `<fin>`.
pub fn result_stanzas(
    to: &str,
    from: Option<&str>,
    query_id: Option<&str>,
    page: &Page,
) -> (Vec<Element>, Element) {
    let mut out = Vec::new();
    for m in &page.items {
        let original = match crate::xmpp::parse_stanza(&m.stanza) {
            Ok(el) => el,
            Err(e) => {
                warn!(id = %m.id, error = %e, "an archived message does not parse; left out");
                continue;
            }
        };
        let result = Element::new("result", ns::MAM)
            .with_opt_attr("queryid", query_id)
            .with_attr("id", m.id.clone())
            .with_child(
                Element::new("forwarded", ns::FORWARD)
                    .with_child(
                        Element::new("delay", ns::DELAY).with_attr("stamp", datetime(m.stamp_ms)),
                    )
                    .with_child(original),
            );
        out.push(
            Element::new("message", ns::CLIENT)
                .with_opt_attr("from", from)
                .with_attr("to", to)
                .with_attr("id", crate::xmpp::id::random_id())
                .with_child(result),
        );
    }
    let mut set = Element::new("set", ns::RSM);
    if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
        set.push(
            Element::new("first", ns::RSM)
                .with_attr("index", page.first_index.to_string())
                .with_text(first.id.clone()),
        );
        set.push(Element::new("last", ns::RSM).with_text(last.id.clone()));
    }
    set.push(Element::new("count", ns::RSM).with_text(page.count.to_string()));
    let fin = Element::new("fin", ns::MAM)
        .with_opt_attr("queryid", query_id)
        .with_attr("complete", if page.complete { "true" } else { "false" })
        .with_child(set);
    (out, fin)
}

/// §6: `<prefs>` as set: `default` and the two lists of bare JIDs.
pub fn parse_prefs(prefs: &Element) -> Result<ArchivePrefs, StanzaError> {
    let default = prefs
        .attr("default")
        .and_then(ArchiveDefault::parse)
        .ok_or_else(|| bad("default must be 'always', 'never' or 'roster'"))?;
    let list = |name: &str| -> Result<Vec<String>, StanzaError> {
        let mut out: Vec<String> = Vec::new();
        if let Some(l) = prefs.get_child(name, ns::MAM) {
            for j in l.children().filter(|c| c.is("jid", ns::MAM)) {
                let jid = Jid::new(j.text().trim())
                    .map_err(|_| StanzaError::new(StanzaCondition::JidMalformed))?
                    .to_bare()
                    .to_string();
                if !out.contains(&jid) {
                    out.push(jid);
                }
            }
        }
        Ok(out)
    };
    Ok(ArchivePrefs {
        default,
        always: list("always")?,
        never: list("never")?,
    })
}

/// §6: the `<prefs>` element of `prefs`.
pub fn prefs_element(prefs: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        let mut e = Element::new(name, ns::MAM);
        for j in jids {
            e.push(Element::new("jid", ns::MAM).with_text(j.clone()));
        }
        e
    };
    Element::new("prefs", ns::MAM)
        .with_attr("default", prefs.default.as_str())
        .with_child(list("always", &prefs.always))
        .with_child(list("never", &prefs.never))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use starling_raft::archive::ArchivedMessage;

    use super::*;
    use crate::xmpp::jid::{BareJid, FullJid};

    const LIMITS: PageLimits = PageLimits {
        default: 50,
        max: 100,
    };

    fn query(xml: &str) -> Result<ParsedQuery, StanzaError> {
        let el = crate::xmpp::parse_stanza(&format!(
            "<iq xmlns='jabber:client' type='set' id='q'>{xml}</iq>"
        ))
        .expect("xml");
        let q = el.children().next().expect("query").clone();
        parse_query(&q, LIMITS)
    }

    fn form(fields: &str) -> String {
        format!(
            "<query xmlns='urn:xmpp:mam:2' queryid='f1'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x></query>"
        )
    }

    fn condition(r: Result<ParsedQuery, StanzaError>) -> StanzaCondition {
        r.expect_err("an error").condition
    }

    #[test]
    fn queries_parse_with_their_form_and_rsm() {
        let q = query(&form(
            "<field var='with'><value>Juliet@Capulet.lit</value></field>\
             <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
             <field var='end'><value>2010-07-07T13:23:54.250+02:00</value></field>",
        ))
        .expect("query");
        assert_eq!(q.query_id.as_deref(), Some("f1"));
        assert_eq!(q.query.with.as_deref(), Some("juliet@capulet.lit"));
        assert_eq!(q.query.start_ms, Some(1_275_868_800_000));
        assert_eq!(q.query.end_ms, Some(1_278_501_834_250));
        assert_eq!(q.query.page.max, 50);
        let q = query(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>\
             <max>1000</max><after>abc</after></set></query>",
        )
        .expect("query");
        assert_eq!(q.query.page.max, 100, "capped");
        assert_eq!(q.query.page.after.as_deref(), Some("abc"));
        let q = query(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>\
             <max>2</max><before/></set></query>",
        )
        .expect("query");
        assert_eq!(q.query.page.before.as_deref(), Some(""), "the last page");
        let q = query(&form(
            "<field var='ids'><value>a</value><value>b</value></field>\
             <field var='after-id'><value>x</value></field>",
        ))
        .expect("query");
        assert_eq!(q.query.ids, Some(vec!["a".into(), "b".into()]));
        assert_eq!(q.query.after_id.as_deref(), Some("x"));
    }

    #[test]
    fn bad_queries_are_refused_with_the_right_condition() {
        use StanzaCondition::*;
        let bad_type = "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x></query>";
        assert_eq!(condition(query(bad_type)), BadRequest);
        let unknown = form("<field var='colour'><value>red</value></field>");
        assert_eq!(condition(query(&unknown)), BadRequest);
        let date = form("<field var='start'><value>yesterday</value></field>");
        assert_eq!(condition(query(&date)), BadRequest);
        let jid = form("<field var='with'><value>a@b@c</value></field>");
        assert_eq!(condition(query(&jid)), BadRequest);
        let max = "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>\
             <max>-1</max></set></query>";
        assert_eq!(condition(query(max)), BadRequest);
        let index = "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>\
             <index>3</index></set></query>";
        assert_eq!(condition(query(index)), FeatureNotImplemented);
    }

    #[test]
    fn results_forward_the_messages_and_end_with_fin() {
        let full = FullJid::new("a@x/p").expect("jid");
        let bare: BareJid = full.to_bare();
        let directed = HashSet::new();
        let me = Me {
            full: &full,
            bare: &bare,
            available: true,
            directed: &directed,
        };
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "q1");
        let m = |id: &str| {
            ArchivedMessage {
            id: id.into(),
            with: "b@x/l".into(),
            stamp_ms: 1_000,
            stanza: format!(
                "<message xmlns='jabber:client' from='b@x/l' to='a@x' type='chat'><body>{id}</body></message>"
            ),
            sender_id: None,
            outgoing: false,
        }
        };
        let page = Page {
            items: vec![m("m1"), m("m2")],
            complete: false,
            count: 5,
            first_index: 1,
        };
        let out = results(&me, &iq, Some("f"), &page).0;
        assert_eq!(out.len(), 3);
        let super::super::Effect::Write(first) = &out[0] else {
            panic!("{:?}", out[0])
        };
        let r = first.get_child("result", ns::MAM).expect("result");
        assert_eq!((r.attr("queryid"), r.attr("id")), (Some("f"), Some("m1")));
        let fwd = r.get_child("forwarded", ns::FORWARD).expect("forwarded");
        assert_eq!(
            fwd.get_child("delay", ns::DELAY)
                .and_then(|d| d.attr("stamp")),
            Some("1970-01-01T00:00:01.000Z")
        );
        assert!(fwd.get_child("message", ns::CLIENT).is_some());
        let super::super::Effect::Write(done) = &out[2] else {
            panic!("{:?}", out[2])
        };
        let fin = done.get_child("fin", ns::MAM).expect("fin");
        assert_eq!(fin.attr("complete"), Some("false"));
        let set = fin.get_child("set", ns::RSM).expect("set");
        let first = set.get_child("first", ns::RSM).expect("first");
        assert_eq!(
            (first.text(), first.attr("index")),
            ("m1".to_string(), Some("1"))
        );
        assert_eq!(
            set.get_child("last", ns::RSM).map(|e| e.text()),
            Some("m2".into())
        );
        assert_eq!(
            set.get_child("count", ns::RSM).map(|e| e.text()),
            Some("5".into())
        );
    }

    #[test]
    fn prefs_round_trip() {
        let el = crate::xmpp::parse_stanza(
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>B@x/r</jid></always>\
             <never><jid>c@x</jid><jid>c@x</jid></never></prefs>",
        )
        .expect("xml");
        let p = parse_prefs(&el).expect("prefs");
        assert_eq!(p.default, ArchiveDefault::Roster);
        assert_eq!(
            (p.always.clone(), p.never.clone()),
            (vec!["b@x".to_string()], vec!["c@x".to_string()])
        );
        assert_eq!(parse_prefs(&prefs_element(&p)).expect("again"), p);
        let bad = crate::xmpp::parse_stanza("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>")
            .expect("xml");
        assert_eq!(
            parse_prefs(&bad).map_err(|e| e.condition),
            Err(StanzaCondition::BadRequest)
        );
    }
}
