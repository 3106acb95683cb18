//! XEP-0388 Extensible SASL Profile (SASL2, `urn:xmpp:sasl:2`) with its
//! inline features: XEP-0386 Bind 2 (`urn:xmpp:bind:0`) and XEP-0198
//! stream management (enable inside the bind request, resumption inside
//! `<authenticate/>`, XEP-0198 §"SASL2 And BIND2 Interaction").
//!
//! This file is the protocol without I/O: what `<authenticate/>` asks for
//! ([`Authenticate::parse`]), the resource a Bind 2 request gets, and the
//! elements the server sends (the stream feature, challenges, `<success/>`,
//! `<failure/>`, the features that follow success). `flow.rs` runs it over
//! a connection with the same mechanisms (`c2s::sasl`), throttling
//! (`c2s::auth_limit`) and freshness gate as RFC 6120 SASL (`c2s::auth`),
//! and the same binding and resumption paths (`c2s::session`,
//! `c2s::handoff`). XEP-0484 FAST tokens, a SASL2 inline feature and
//! their own mechanism, are `fast.rs`.
pub mod fast;
pub(super) mod flow;

use super::sasl::{decode_payload, Mechanism, SaslFailure};
use crate::xmpp::element::escape_into;
use crate::xmpp::{ns, Element};

/// Longest `<tag/>` (XEP-0386) kept in a resource; longer ones are cut.
const MAX_TAG_CHARS: usize = 32;
/// Longest user-agent field kept (only logged for now).
const MAX_AGENT_CHARS: usize = 128;

/// XEP-0388 §"Initiation": what the client sent in `<authenticate/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    pub mechanism: Mech,
    /// The decoded `<initial-response/>`; `None` when absent (§"SASL Data
    /// Encoding": "To indicate the absence of an initial response ... the
    /// element is simply not included"), `Some(vec![])` when empty.
    pub initial: Option<Vec<u8>>,
    pub user_agent: Option<UserAgent>,
    /// XEP-0198 `<resume/>` inline: `Err` when it lacks `h` or `previd`.
    pub resume: Option<Result<ResumeRequest, ()>>,
    /// XEP-0386 `<bind/>`.
    pub bind: Option<BindRequest>,
    /// XEP-0484 `<request-token mechanism/>`: the mechanism named.
    pub request_token: Option<String>,
    /// XEP-0484 `<fast/>` of a token login.
    pub fast: Option<fast::FastUse>,
}

/// The mechanism of an `<authenticate/>`: a password mechanism of
/// `c2s::sasl`, or XEP-0484 FAST's HT-SHA-256-NONE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    Password(Mechanism),
    Fast,
}

/// XEP-0388 `<user-agent/>`: "The 'id' attribute is RECOMMENDED, and if
/// present contains a unique stable identifier for the client
/// installation".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserAgent {
    pub id: Option<String>,
    pub software: Option<String>,
    pub device: Option<String>,
}

/// XEP-0198 `<resume previd h/>` inside `<authenticate/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    pub previd: String,
    pub h: u32,
}

/// XEP-0386 §"Performing the bind": the tag and the features to enable
/// for the new session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindRequest {
    pub tag: Option<String>,
    /// XEP-0198 `<enable/>`: `Some(resume)` when asked.
    pub sm: Option<bool>,
    /// XEP-0280 `<enable/>`.
    pub carbons: bool,
    /// XEP-0352: "If the client included a XEP-0352 <active/> or
    /// <inactive/> element, the session must begin in that state."
    pub inactive: bool,
}

impl Authenticate {
    /// Parses `<authenticate xmlns='urn:xmpp:sasl:2'/>`. §"Initiation": "If
    /// the 'mechanism' attribute contains a string not previously announced
    /// by the server in the stream feature, the server MUST fail the
    /// authentication."
    pub fn parse(el: &Element) -> Result<Authenticate, SaslFailure> {
        let mechanism = match el.attr("mechanism") {
            Some(fast::HT_SHA_256_NONE) => Mech::Fast,
            Some(m) => {
                Mech::Password(Mechanism::from_name(m).ok_or(SaslFailure::InvalidMechanism)?)
            }
            None => return Err(SaslFailure::InvalidMechanism),
        };
        let initial = match el.get_child("initial-response", ns::SASL2) {
            // An empty element is an empty response (§"SASL Data
            // Encoding": `<element/>` is the empty string), not "=".
            Some(r) if r.text().trim().is_empty() => Some(Vec::new()),
            Some(r) => decode_payload(&r.text())?,
            None => None,
        };
        let user_agent = el.get_child("user-agent", ns::SASL2).map(|ua| {
            let field = |name: &str| {
                ua.get_child(name, ns::SASL2)
                    .map(|c| cut(c.text().trim(), MAX_AGENT_CHARS))
                    .filter(|t| !t.is_empty())
            };
            UserAgent {
                id: ua.attr("id").map(|id| cut(id, MAX_AGENT_CHARS)),
                software: field("software"),
                device: field("device"),
            }
        });
        let resume = el.get_child("resume", ns::SM).map(|r| {
            let h = r.attr("h").and_then(|h| h.parse::<u32>().ok());
            match (r.attr("previd"), h) {
                (Some(previd), Some(h)) if !previd.is_empty() => Ok(ResumeRequest {
                    previd: previd.to_string(),
                    h,
                }),
                _ => Err(()),
            }
        });
        let bind = el.get_child("bind", ns::BIND2).map(|b| BindRequest {
            tag: b
                .get_child("tag", ns::BIND2)
                .map(|t| t.text().trim().to_string())
                .filter(|t| !t.is_empty()),
            sm: b
                .get_child("enable", ns::SM)
                .map(|e| matches!(e.attr("resume"), Some("true" | "1"))),
            carbons: b.has_child("enable", ns::CARBONS),
            inactive: b.has_child("inactive", ns::CSI),
        });
        let request_token = el
            .get_child("request-token", fast::NS)
            .map(|r| r.attr("mechanism").unwrap_or_default().to_string());
        let fast = el.get_child("fast", fast::NS).map(|f| fast::FastUse {
            invalidate: matches!(f.attr("invalidate"), Some("true" | "1")),
        });
        Ok(Authenticate {
            mechanism,
            initial,
            user_agent,
            resume,
            bind,
            request_token,
            fast,
        })
    }
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// XEP-0386 §"Resource identifier generation": "The RECOMMENDED format is
/// to include the client tag as a prefix of the server-generated
/// identifier, separated by a single '/' character". `random` is the
/// server-generated part; a tag is cut to a sane length, and one that
/// cannot be part of a resource is left out (the caller checks the full
/// JID; [`resource`] with `None` is always valid).
pub fn resource(tag: Option<&str>, random: &str) -> String {
    match tag {
        Some(t) => format!("{}/{random}", cut(t, MAX_TAG_CHARS)),
        None => random.to_string(),
    }
}

/// The `<authentication/>` stream feature (§"SASL mechanism negotiation"),
/// with the inline features this server processes: XEP-0198 resumption,
/// and Bind 2 with the features it can enable inline.
/// The -PLUS mechanisms only where the connection has `bindings`.
pub fn feature(bindings: &super::sasl::ChannelBindings) -> String {
    let mut f = format!("<authentication xmlns='{}'>", ns::SASL2);
    for m in Mechanism::offered(bindings) {
        f.push_str(&format!("<mechanism>{}</mechanism>", m.name()));
    }
    f.push_str(&format!(
        "<inline>{}<sm xmlns='{}'/><bind xmlns='{}'><inline>",
        fast::feature(),
        ns::SM,
        ns::BIND2
    ));
    for var in [ns::SM, ns::CARBONS, ns::CSI] {
        f.push_str(&format!("<feature var='{var}'/>"));
    }
    f.push_str("</inline></bind></inline></authentication>");
    f
}

/// §"Challenges and Responses".
pub fn challenge(data: &[u8]) -> String {
    format!("<challenge xmlns='{}'>{}</challenge>", ns::SASL2, b64(data))
}

/// §"Failure": "It MUST contain one of the SASL error codes from RFC 6120
/// Section 6.5", in the RFC 6120 SASL namespace, and MAY contain a text.
pub fn failure(f: SaslFailure, text: Option<&str>) -> String {
    let mut s = format!(
        "<failure xmlns='{}'><{} xmlns='{}'/>",
        ns::SASL2,
        f.condition(),
        ns::SASL
    );
    if let Some(t) = text {
        s.push_str("<text xml:lang='en'>");
        escape_into(&mut s, t, false);
        s.push_str("</text>");
    }
    s.push_str("</failure>");
    s
}

/// §"Success": the negotiated identity ("a bare JID, unless resource
/// binding has occurred, in which case it is a full JID"), the mechanism's
/// additional data when it has any, then the results of the inline
/// features (`inline`, already serialized).
pub fn success(additional: &[u8], authz: &str, inline: &str) -> String {
    let mut s = format!("<success xmlns='{}'>", ns::SASL2);
    if !additional.is_empty() {
        s.push_str(&format!(
            "<additional-data>{}</additional-data>",
            b64(additional)
        ));
    }
    s.push_str("<authorization-identifier>");
    escape_into(&mut s, authz, false);
    s.push_str("</authorization-identifier>");
    s.push_str(inline);
    s.push_str("</success>");
    s
}

/// XEP-0386: `<bound/>`, with the XEP-0198 answer when SM was asked for
/// ("The <bound/> response MUST contain the resulting XEP-0198
/// <enabled/> (or <failed/>) element").
pub fn bound(sm: Option<&str>) -> String {
    match sm {
        Some(sm) => format!("<bound xmlns='{}'>{sm}</bound>", ns::BIND2),
        None => format!("<bound xmlns='{}'/>", ns::BIND2),
    }
}

/// XEP-0198 `<failed/>` with a stanza error condition.
pub fn sm_failed(condition: &str) -> String {
    format!(
        "<failed xmlns='{}'><{condition} xmlns='{}'/></failed>",
        ns::SM,
        ns::STANZA_ERRORS
    )
}

/// XEP-0388 §"Success": "The <success> element is immediately followed by
/// a <features> element ... containing the applicable stream features of
/// the newly authenticated stream. Note that no stream restart occurs."
/// These are the features of a stream Bind 2 already bound: no binding;
/// stream management unless it is on already.
pub fn bound_features(sm_enabled: bool) -> String {
    let mut f = String::from("<stream:features>");
    if !sm_enabled {
        f.push_str(&format!("<sm xmlns='{}'/>", ns::SM));
    }
    f.push_str(&format!("<csi xmlns='{}'/>", ns::CSI));
    f.push_str(&format!("<sub xmlns='{}'/>", ns::PRE_APPROVAL));
    f.push_str("</stream:features>");
    f
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// How a resumption is answered: `<resumed/>` alone (XEP-0198 §5), or
/// inside SASL2's `<success/>` (XEP-0198 §"Inline Stream Resumption":
/// "the stream is considered re-established immediately after the
/// <success/> element instead and stream features MUST NOT be sent").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeReply {
    Sm,
    /// `extra`: other results of inline features (a FAST token).
    Sasl2 {
        additional: Vec<u8>,
        extra: String,
    },
}

impl ResumeReply {
    /// The answer to send for `resumed` (the `<resumed/>` element) of the
    /// session of `full`.
    pub fn wrap(&self, resumed: &str, full: &str) -> String {
        match self {
            ResumeReply::Sm => resumed.to_string(),
            ResumeReply::Sasl2 { additional, extra } => {
                success(additional, full, &format!("{extra}{resumed}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::parse_stanza;

    fn parse(xml: &str) -> Result<Authenticate, SaslFailure> {
        Authenticate::parse(&parse_stanza(xml).unwrap())
    }

    #[test]
    fn an_authenticate_with_everything_inline() {
        let a = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'>\
             <initial-response>biwsbj11c2VyLHI9YWJj</initial-response>\
             <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'>\
             <software>AwesomeXMPP</software><device>Kiva's Phone</device></user-agent>\
             <resume xmlns='urn:xmpp:sm:3' h='7' previd='abc'/>\
             <bind xmlns='urn:xmpp:bind:0'><tag>Awesome</tag>\
             <enable xmlns='urn:xmpp:sm:3' resume='true'/>\
             <enable xmlns='urn:xmpp:carbons:2'/><inactive xmlns='urn:xmpp:csi:0'/></bind>\
             </authenticate>",
        )
        .unwrap();
        assert_eq!(a.mechanism, Mech::Password(Mechanism::ScramSha256));
        assert_eq!(a.initial.as_deref(), Some(&b"n,,n=user,r=abc"[..]));
        let ua = a.user_agent.unwrap();
        assert_eq!(
            ua.id.as_deref(),
            Some("d4565fa7-4d72-4749-b3d3-740edbf87770")
        );
        assert_eq!(ua.software.as_deref(), Some("AwesomeXMPP"));
        assert_eq!(ua.device.as_deref(), Some("Kiva's Phone"));
        assert_eq!(
            a.resume,
            Some(Ok(ResumeRequest {
                previd: "abc".into(),
                h: 7
            }))
        );
        assert_eq!(
            a.bind,
            Some(BindRequest {
                tag: Some("Awesome".into()),
                sm: Some(true),
                carbons: true,
                inactive: true,
            })
        );
    }

    #[test]
    fn a_bare_authenticate() {
        let a = parse("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'/>").unwrap();
        assert_eq!(a.mechanism, Mech::Password(Mechanism::Plain));
        assert_eq!(a.initial, None);
        assert_eq!(a.user_agent, None);
        assert_eq!(a.resume, None);
        assert_eq!(a.bind, None);
        assert_eq!((a.request_token, a.fast), (None, None));
        // A FAST login, a token request.
        let a = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
             <fast xmlns='urn:xmpp:fast:0' count='3' invalidate='true'/>\
             <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/></authenticate>",
        )
        .unwrap();
        assert_eq!(a.mechanism, Mech::Fast);
        assert_eq!(a.fast, Some(fast::FastUse { invalidate: true }));
        assert_eq!(a.request_token.as_deref(), Some("HT-SHA-256-NONE"));
        // An empty initial response is present and empty.
        let a = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response/></authenticate>",
        )
        .unwrap();
        assert_eq!(a.initial, Some(Vec::new()));
        // A bind without anything in it.
        let a = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><bind xmlns='urn:xmpp:bind:0'/></authenticate>",
        )
        .unwrap();
        assert_eq!(a.bind, Some(BindRequest::default()));
    }

    #[test]
    fn bad_requests_fail_with_their_rfc_6120_condition() {
        assert_eq!(
            parse("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='DIGEST-MD5'/>"),
            Err(SaslFailure::InvalidMechanism)
        );
        assert_eq!(
            parse("<authenticate xmlns='urn:xmpp:sasl:2'/>"),
            Err(SaslFailure::InvalidMechanism)
        );
        assert_eq!(
            parse(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>!!</initial-response></authenticate>"
            ),
            Err(SaslFailure::IncorrectEncoding)
        );
        // A resume without its count is refused by SM, not by SASL.
        let a = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><resume xmlns='urn:xmpp:sm:3' previd='x'/></authenticate>",
        )
        .unwrap();
        assert_eq!(a.resume, Some(Err(())));
        // Elements in other namespaces are not inline requests.
        let a = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><bind xmlns='urn:xmpp:bind2:1'/><resume xmlns='urn:xmpp:sm:2' h='1' previd='x'/></authenticate>",
        )
        .unwrap();
        assert_eq!((a.bind, a.resume), (None, None));
    }

    #[test]
    fn resources_carry_the_tag_as_a_prefix() {
        assert_eq!(
            resource(Some("Conversations"), "r4nd"),
            "Conversations/r4nd"
        );
        assert_eq!(resource(None, "r4nd"), "r4nd");
        let long = "x".repeat(100);
        assert_eq!(resource(Some(&long), "r"), format!("{}/r", "x".repeat(32)));
    }

    #[test]
    fn what_the_server_sends_parses_and_says_what_it_should() {
        let mechs_of = |f: &Element| -> Vec<String> {
            f.children()
                .filter(|c| c.name() == "mechanism")
                .map(|c| c.text())
                .collect()
        };
        let tls = crate::c2s::sasl::ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        };
        let with_tls = parse_stanza(&feature(&tls)).unwrap();
        assert!(mechs_of(&with_tls).contains(&"SCRAM-SHA-256-PLUS".to_string()));
        let f = parse_stanza(&feature(&Default::default())).unwrap();
        assert!(f.is("authentication", ns::SASL2));
        let mechs = mechs_of(&f);
        assert!(mechs.contains(&"SCRAM-SHA-256".to_string()), "{mechs:?}");
        assert!(!mechs.iter().any(|m| m.ends_with("-PLUS")), "{mechs:?}");
        let inline = f.get_child("inline", ns::SASL2).unwrap();
        assert!(inline.has_child("sm", ns::SM));
        let fast = inline.get_child("fast", fast::NS).unwrap();
        assert_eq!(
            fast.get_child("mechanism", fast::NS).unwrap().text(),
            "HT-SHA-256-NONE"
        );
        let vars: Vec<&str> = inline
            .get_child("bind", ns::BIND2)
            .and_then(|b| b.get_child("inline", ns::BIND2))
            .unwrap()
            .children()
            .filter_map(|c| c.attr("var"))
            .collect();
        assert_eq!(vars, [ns::SM, ns::CARBONS, ns::CSI]);

        let s = parse_stanza(&success(
            b"v=abc",
            "a@x/t/1",
            &bound(Some("<enabled xmlns='urn:xmpp:sm:3' id='i'/>")),
        ))
        .unwrap();
        assert_eq!(
            s.get_child("additional-data", ns::SASL2).unwrap().text(),
            "dj1hYmM="
        );
        assert_eq!(
            s.get_child("authorization-identifier", ns::SASL2)
                .unwrap()
                .text(),
            "a@x/t/1"
        );
        assert!(s
            .get_child("bound", ns::BIND2)
            .unwrap()
            .has_child("enabled", ns::SM));
        // PLAIN has no additional data: the element is left out.
        let s = parse_stanza(&success(b"", "a@x", "")).unwrap();
        assert!(!s.has_child("additional-data", ns::SASL2));

        let e = parse_stanza(&failure(SaslFailure::NotAuthorized, Some("a < b"))).unwrap();
        assert!(e.is("failure", ns::SASL2));
        assert!(e.has_child("not-authorized", ns::SASL));
        assert_eq!(e.get_child("text", ns::SASL2).unwrap().text(), "a < b");

        let c = parse_stanza(&challenge(b"r=1")).unwrap();
        assert_eq!(c.text(), "cj0x");

        let resumed = "<resumed xmlns='urn:xmpp:sm:3' h='1' previd='p'/>";
        assert_eq!(ResumeReply::Sm.wrap(resumed, "a@x/r"), resumed);
        let w = parse_stanza(
            &ResumeReply::Sasl2 {
                additional: vec![],
                extra: String::new(),
            }
            .wrap(resumed, "a@x/r"),
        )
        .unwrap();
        assert!(w.is("success", ns::SASL2) && w.has_child("resumed", ns::SM));

        assert!(!bound_features(true).contains("urn:xmpp:sm:3"));
        assert!(bound_features(false).contains("<sm xmlns='urn:xmpp:sm:3'/>"));
    }
}
