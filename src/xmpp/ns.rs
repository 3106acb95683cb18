//! XML namespaces used by the server (RFC 6120, RFC 6121 and the XEPs).

pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const CLIENT: &str = "jabber:client";
pub const SERVER: &str = "jabber:server";
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// RFC 3921 session establishment, advertised as optional (RFC 6121 does
/// not need it, old clients still ask).
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const ROSTER: &str = "jabber:iq:roster";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const REGISTER: &str = "jabber:iq:register";
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
/// XEP-0445: the stream feature of pre-authenticated registration.
pub const IBR_TOKEN: &str = "urn:xmpp:ibr-token:0";
/// XEP-0445/XEP-0379: the `<preauth token=''/>` element.
pub const PARS: &str = "urn:xmpp:pars:0";
pub const VERSION: &str = "jabber:iq:version";
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0191 block lists, and the application-specific error of a stanza
/// to a JID the sender blocked.
pub const BLOCKING: &str = "urn:xmpp:blocking";
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0440 SASL Channel-Binding Type Capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0388 Extensible SASL Profile (SASL2).
pub const SASL2: &str = "urn:xmpp:sasl:2";
/// XEP-0386 Bind 2, inline in SASL2.
pub const BIND2: &str = "urn:xmpp:bind:0";
pub const CARBONS: &str = "urn:xmpp:carbons:2";
pub const FORWARD: &str = "urn:xmpp:forward:0";
pub const CSI: &str = "urn:xmpp:csi:0";
pub const SID: &str = "urn:xmpp:sid:0";
pub const DELAY: &str = "urn:xmpp:delay";
pub const HINTS: &str = "urn:xmpp:hints";
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
pub const XDATA: &str = "jabber:x:data";
/// XEP-0357 push notifications.
pub const PUSH: &str = "urn:xmpp:push:0";
/// XEP-0357 §7: the form type of a push's summary.
pub const PUSH_SUMMARY: &str = "urn:xmpp:push:summary";
/// XEP-0060 publish-subscribe, and its publish-options form type.
pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const PUBSUB_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// XEP-0313 Message Archive Management.
pub const MAM: &str = "urn:xmpp:mam:2";
/// XEP-0313 0.7: the `after-id`, `before-id` and `ids` fields.
pub const MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0424 Message Retraction.
pub const RETRACT: &str = "urn:xmpp:message-retract:1";
/// XEP-0059 Result Set Management.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0045 multi-user chat and its sub-protocols.
pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const MUC_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const MUC_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
/// XEP-0421 anonymous unique occupant identifiers.
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0425 moderated message retraction.
pub const MODERATE: &str = "urn:xmpp:message-moderate:1";
/// XEP-0249 direct MUC invitations.
pub const CONFERENCE: &str = "jabber:x:conference";
/// XEP-0410 MUC self-ping (an XEP-0199 ping to one's own occupant JID).
pub const MUC_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// XEP-0060: event notifications, owner use cases, error conditions, node
/// configuration form type.
pub const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const PUBSUB_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
/// XEP-0115 entity capabilities.
pub const CAPS: &str = "http://jabber.org/protocol/caps";
/// XEP-0054 vcard-temp, XEP-0153 its presence update.
pub const VCARD: &str = "vcard-temp";
pub const VCARD_UPDATE: &str = "vcard-temp:x:update";
/// XEP-0049 private XML storage.
pub const PRIVATE: &str = "jabber:iq:private";
/// XEP-0048 bookmarks (in private storage), XEP-0402 PEP native bookmarks.
pub const BOOKMARKS: &str = "storage:bookmarks";
pub const BOOKMARKS2: &str = "urn:xmpp:bookmarks:1";
/// XEP-0157 contact addresses: the form type.
pub const SERVERINFO: &str = "http://jabber.org/network/serverinfo";
/// XEP-0455 service outage status: the form type.
pub const SOS: &str = "urn:xmpp:sos:0";
