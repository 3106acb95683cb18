//! A small owned XML element tree for stanzas, with namespace-aware
//! serialization.
//!
//! Elements carry their *resolved* namespace, never a prefix: the framer
//! resolves `xmlns` / `xmlns:p` declarations (including the ones inherited
//! from the stream header, RFC 6120 §4.8.3) when it cuts a stanza out of the
//! stream, so a stanza can be forwarded to another stream or another node
//! and re-serialized correctly there. Serialization writes an `xmlns`
//! attribute only where an element's namespace differs from its parent's.

/// A child of an element: a nested element or character data (unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An XML element with its resolved namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    name: String,
    ns: String,
    /// Attributes in document order, values unescaped. Names are as written
    /// (`type`, `xml:lang`, or `p:local` with its `xmlns:p` kept beside it).
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Element {
    /// A new empty element `name` in namespace `ns`.
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Local name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolved namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Whether this is `name` in namespace `ns`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// Change the namespace of this element and of every descendant that
    /// shared it (used when a stanza moves between stream namespaces).
    pub fn set_ns_deep(&mut self, from: &str, to: &str) {
        if self.ns == from {
            self.ns = to.to_string();
        }
        for c in &mut self.children {
            if let Node::Element(e) = c {
                e.set_ns_deep(from, to);
            }
        }
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Set (or replace) an attribute.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        if let Some(slot) = self.attrs.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = value;
        } else {
            self.attrs.push((name, value));
        }
    }

    /// Remove an attribute, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let i = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(i).1)
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: set the attribute only when `value` is `Some`.
    pub fn with_opt_attr(self, name: &str, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.with_attr(name, v),
            None => self,
        }
    }

    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        if let Some(Node::Text(t)) = self.children.last_mut() {
            t.push_str(&text);
        } else {
            self.children.push(Node::Text(text));
        }
    }

    pub fn push_node(&mut self, node: Node) {
        match node {
            Node::Element(e) => self.push(e),
            Node::Text(t) => self.push_text(t),
        }
    }

    /// Builder form of [`Element::push`].
    pub fn with_child(mut self, child: Element) -> Self {
        self.push(child);
        self
    }

    /// Builder form of [`Element::push_text`].
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text);
        self
    }

    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// Child elements, in order.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child `name` in `ns`.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.is(name, ns))
    }

    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.is(name, ns) => Some(e),
            _ => None,
        })
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// Remove every child element matching `f`.
    pub fn remove_children(&mut self, f: impl Fn(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => !f(e),
            Node::Text(_) => true,
        });
    }

    /// Concatenated character data of the direct text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialize as a fragment whose parent's default namespace is
    /// `parent_ns` (`jabber:client` inside a client stream).
    pub fn write_to(&self, out: &mut String, parent_ns: &str) {
        out.push('<');
        out.push_str(&self.name);
        if self.ns != parent_ns {
            out.push_str(" xmlns=\"");
            escape_into(out, &self.ns, true);
            out.push('"');
        }
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for c in &self.children {
            match c {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => escape_into(out, t, false),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// Serialize with `parent_ns` as the inherited default namespace.
    pub fn to_xml(&self, parent_ns: &str) -> String {
        let mut out = String::with_capacity(128);
        self.write_to(&mut out, parent_ns);
        out
    }

    /// Serialize standalone (the namespace is always declared).
    pub fn to_standalone_xml(&self) -> String {
        self.to_xml("")
    }
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_standalone_xml())
    }
}

/// Escape character data or an attribute value.
pub fn escape_into(out: &mut String, s: &str, attr: bool) {
    // Every character that needs escaping is ASCII, so the scan is over
    // bytes and the runs between them are copied whole (this runs for
    // every stanza written; char by char it was the hottest function).
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'"' if attr => "&quot;",
            b'\'' if attr => "&apos;",
            // A literal CR would be normalized away when parsed again.
            b'\r' => "&#13;",
            b'\n' if attr => "&#10;",
            b'\t' if attr => "&#9;",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(rep);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Escape a string into a new `String`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s, true);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_namespaces_only_where_they_change() {
        let msg = Element::new("message", "jabber:client")
            .with_attr("to", "bob@example.com")
            .with_attr("type", "chat")
            .with_child(Element::new("body", "jabber:client").with_text("a < b & \"c\""))
            .with_child(Element::new(
                "active",
                "http://jabber.org/protocol/chatstates",
            ));
        assert_eq!(
            msg.to_xml("jabber:client"),
            "<message to=\"bob@example.com\" type=\"chat\"><body>a &lt; b &amp; \"c\"</body>\
             <active xmlns=\"http://jabber.org/protocol/chatstates\"/></message>"
        );
        assert!(msg
            .to_standalone_xml()
            .starts_with("<message xmlns=\"jabber:client\""));
    }

    #[test]
    fn attribute_values_are_escaped() {
        let e = Element::new("x", "u").with_attr("a", "<'\"&\n>");
        assert_eq!(e.to_xml("u"), "<x a=\"&lt;&apos;&quot;&amp;&#10;&gt;\"/>");
    }

    #[test]
    fn escaping_keeps_text_and_replaces_only_markup() {
        let mut out = String::new();
        escape_into(&mut out, "héllo <b> & 'q' \"d\"\r\n\tñ", false);
        assert_eq!(out, "héllo &lt;b&gt; &amp; 'q' \"d\"&#13;\n\tñ");
        out.clear();
        escape_into(&mut out, "\t€\n'", true);
        assert_eq!(out, "&#9;€&#10;&apos;");
        assert_eq!(escape(""), "");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn accessors() {
        let mut e = Element::new("iq", "jabber:client").with_attr("type", "get");
        e.set_attr("type", "set");
        assert_eq!(e.attr("type"), Some("set"));
        e.push(Element::new("query", "jabber:iq:roster"));
        assert!(e.has_child("query", "jabber:iq:roster"));
        assert!(!e.has_child("query", "jabber:client"));
        e.push_text("a");
        e.push_text("b");
        assert_eq!(e.text(), "ab");
        e.remove_children(|c| c.name() == "query");
        assert_eq!(e.children().count(), 0);
        assert_eq!(e.remove_attr("type").as_deref(), Some("set"));
    }
}
