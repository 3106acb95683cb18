//! RFC 6120 error conditions: stream errors (§4.9) end the stream, stanza
//! errors (§8.3) answer one stanza.
use super::element::Element;
use super::ns;

macro_rules! conditions {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }
        impl $name {
            /// The element name of the condition.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            /// Parse an element name into a condition.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

conditions! {
    /// RFC 6120 §4.9.3 stream error conditions.
    StreamCondition {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostGone => "host-gone",
        HostUnknown => "host-unknown",
        ImproperAddressing => "improper-addressing",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        InvalidXml => "invalid-xml",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        RemoteConnectionFailed => "remote-connection-failed",
        Reset => "reset",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SeeOtherHost => "see-other-host",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedFeature => "unsupported-feature",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
}

conditions! {
    /// RFC 6120 §8.3.3 stanza error conditions.
    StanzaCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

impl StanzaCondition {
    /// The error type RFC 6120 §8.3.3 gives for each condition.
    pub fn default_type(&self) -> &'static str {
        use StanzaCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => "modify",
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => "auth",
            InternalServerError | RecipientUnavailable | RemoteServerTimeout
            | ResourceConstraint | UnexpectedRequest => "wait",
            Conflict
            | FeatureNotImplemented
            | Gone
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition => "cancel",
        }
    }
}

/// A stream error (RFC 6120 §4.9): sent, then the stream is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream error {condition}{}", text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StreamError {
    pub condition: StreamCondition,
    pub text: Option<String>,
    /// An application-specific condition (RFC 6120 §4.9.4), after the
    /// defined one and the text.
    pub app: Option<Box<Element>>,
}

impl StreamError {
    pub fn new(condition: StreamCondition) -> Self {
        StreamError {
            condition,
            text: None,
            app: None,
        }
    }

    /// The same error with an application-specific condition element.
    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(Box::new(app));
        self
    }

    pub fn with_text(condition: StreamCondition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
            app: None,
        }
    }

    /// `<stream:error>` as it goes on the wire (the `stream` prefix is bound
    /// by our stream header).
    pub fn to_xml(&self) -> String {
        let mut out = format!(
            "<stream:error><{} xmlns='{}'/>",
            self.condition.as_str(),
            ns::STREAM_ERRORS
        );
        if let Some(t) = &self.text {
            out.push_str(&format!(
                "<text xmlns='{}' xml:lang='en'>{}</text>",
                ns::STREAM_ERRORS,
                super::element::escape(t)
            ));
        }
        if let Some(app) = &self.app {
            out.push_str(&app.to_standalone_xml());
        }
        out.push_str("</stream:error>");
        out
    }
}

/// A stanza error (RFC 6120 §8.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stanza error {condition}{}", text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StanzaError {
    pub condition: StanzaCondition,
    pub text: Option<String>,
    /// The error type when not the condition's default (RFC 6120 §8.3.2),
    /// e.g. `wait` for a limit that lifts with time.
    pub kind: Option<&'static str>,
    /// An application-specific condition (RFC 6120 §8.3.2), e.g. XEP-0191's
    /// `<blocked/>`.
    pub app: Option<Box<Element>>,
}

impl StanzaError {
    pub fn new(condition: StanzaCondition) -> Self {
        StanzaError {
            condition,
            text: None,
            kind: None,
            app: None,
        }
    }

    pub fn with_text(condition: StanzaCondition, text: impl Into<String>) -> Self {
        StanzaError {
            condition,
            text: Some(text.into()),
            kind: None,
            app: None,
        }
    }

    /// The same error with type `kind` (`auth`, `cancel`, `continue`,
    /// `modify` or `wait`) instead of the condition's default.
    pub fn of_type(mut self, kind: &'static str) -> Self {
        self.kind = Some(kind);
        self
    }

    /// The same error with an application-specific condition element.
    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(Box::new(app));
        self
    }

    /// The `<error/>` child.
    pub fn element(&self, by: Option<&str>) -> Element {
        let mut e = Element::new("error", ns::CLIENT)
            .with_attr("type", self.kind.unwrap_or(self.condition.default_type()))
            .with_opt_attr("by", by)
            .with_child(Element::new(self.condition.as_str(), ns::STANZA_ERRORS));
        if let Some(t) = &self.text {
            e.push(
                Element::new("text", ns::STANZA_ERRORS)
                    .with_attr("xml:lang", "en")
                    .with_text(t.clone()),
            );
        }
        if let Some(app) = &self.app {
            e.push((**app).clone());
        }
        e
    }

    /// The error reply to `stanza` (RFC 6120 §8.3.1): same kind and id,
    /// `to` and `from` swapped, `type='error'`. `None` when `stanza` is
    /// itself an error: errors are never answered with errors (§8.3.1).
    pub fn reply_to(&self, stanza: &Element) -> Option<Element> {
        if stanza.attr("type") == Some("error") {
            return None;
        }
        let mut reply = Element::new(stanza.name(), stanza.ns())
            .with_opt_attr("id", stanza.attr("id"))
            .with_opt_attr("to", stanza.attr("from"))
            .with_opt_attr("from", stanza.attr("to"))
            .with_attr("type", "error");
        // §8.3.1: the original payload MAY be included; for messages and
        // presence it helps the sender see what failed, for iq it is the
        // query. Bodies are kept short by the stanza size limit anyway.
        for c in stanza.children() {
            reply.push(c.clone());
        }
        reply.push(self.element(None));
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_error_xml() {
        let e = StreamError::with_text(StreamCondition::Conflict, "replaced by a new <session>");
        assert_eq!(
            e.to_xml(),
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>replaced by a new &lt;session&gt;</text>\
             </stream:error>"
        );
    }

    #[test]
    fn stanza_error_reply_swaps_addresses() {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("id", "q1")
            .with_attr("from", "a@x/r")
            .with_attr("to", "x")
            .with_attr("type", "get")
            .with_child(Element::new("query", "urn:unknown"));
        let r = StanzaError::new(StanzaCondition::ServiceUnavailable)
            .reply_to(&iq)
            .expect("reply");
        assert_eq!(r.attr("to"), Some("a@x/r"));
        assert_eq!(r.attr("from"), Some("x"));
        assert_eq!(r.attr("type"), Some("error"));
        assert_eq!(r.attr("id"), Some("q1"));
        let err = r.get_child("error", ns::CLIENT).expect("error child");
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.has_child("service-unavailable", ns::STANZA_ERRORS));
        // Errors are not answered.
        assert!(StanzaError::new(StanzaCondition::BadRequest)
            .reply_to(&r)
            .is_none());
    }

    #[test]
    fn every_condition_round_trips() {
        for c in [
            StreamCondition::NotWellFormed,
            StreamCondition::UnsupportedVersion,
        ] {
            assert_eq!(StreamCondition::from_name(c.as_str()), Some(c));
        }
        assert_eq!(StanzaCondition::ItemNotFound.default_type(), "cancel");
        assert_eq!(StanzaCondition::BadRequest.default_type(), "modify");
        assert_eq!(StanzaCondition::NotAuthorized.default_type(), "auth");
        assert_eq!(StanzaCondition::RecipientUnavailable.default_type(), "wait");
    }
}
