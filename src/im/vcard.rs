//! XEP-0054 vcard-temp: each account's vCard, replicated
//! ([`Command::SetVcard`]), set by its owner, read by anyone (§3.1, as
//! Prosody and ejabberd do), at most `pep.max_vcard_bytes`
//! (`not-acceptable` beyond). And XEP-0153 §4.1: the SHA-1 of the vCard's
//! photo, added to an available presence that carries no
//! `vcard-temp:x:update` of its own, so contacts learn of the avatar.
use sha1::Digest as _;
use starling_raft::command::{Command, Response};

use super::{error_reply, iq_result, Ctx, Effects, Me};
use crate::xmpp::jid::BareJid;
use crate::xmpp::{ns, Element, StanzaCondition, StanzaError};

fn stored(ctx: &Ctx<'_>, owner: &str) -> Option<Element> {
    let state = ctx.cluster.state().read();
    let xml = state.data.vcards.get(&owner.to_string())?.clone();
    drop(state);
    crate::xmpp::parse_stanza(&xml).ok()
}

/// §3.1: no vCard is answered with an empty one.
fn reply(me: &Me<'_>, iq: &Element, vcard: Option<Element>) -> Element {
    iq_result(me, iq).with_child(vcard.unwrap_or_else(|| Element::new("vCard", ns::VCARD)))
}

/// The user's own vCard: get (§3.1) or set (§3.2).
pub async fn handle(ctx: &Ctx<'_>, me: &Me<'_>, iq: Element) -> Effects {
    let Some(vcard) = iq.children().next() else {
        return Effects::none();
    };
    if iq.attr("type") == Some("get") {
        if let Err(e) = super::pep::read_index(ctx).await {
            return error_reply(ctx.domain, me, &iq, e.stanza());
        }
        return Effects::write(reply(me, &iq, stored(ctx, me.bare.as_str())));
    }
    let xml = vcard.to_standalone_xml();
    let max = ctx.services.pep.max_vcard_bytes;
    if xml.len() > max {
        return error_reply(
            ctx.domain,
            me,
            &iq,
            StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                format!("the vCard is {} bytes, more than {max}", xml.len()),
            ),
        );
    }
    // An empty vCard removes it.
    let value = (vcard.children().next().is_some()).then_some(xml);
    let cmd = Command::SetVcard {
        owner: me.bare.to_string(),
        vcard: value,
    };
    match super::pep::commit(ctx, cmd).await {
        Ok(Response::VcardSet) => Effects::write(iq_result(me, &iq)),
        Ok(_) => error_reply(
            ctx.domain,
            me,
            &iq,
            StanzaError::new(StanzaCondition::InternalServerError),
        ),
        Err(e) => error_reply(ctx.domain, me, &iq, e.stanza()),
    }
}

/// Another (existing) account's vCard (§3.3), after a read index (a
/// vCard set a moment ago on another node is seen).
pub async fn get_other(ctx: &Ctx<'_>, me: &Me<'_>, iq: &Element, owner: &BareJid) -> Effects {
    if let Err(e) = super::pep::read_index(ctx).await {
        return error_reply(ctx.domain, me, iq, e.stanza());
    }
    let mut r = reply(me, iq, stored(ctx, owner.as_str()));
    r.set_attr("from", owner.to_string());
    Effects::write(r)
}

/// XEP-0153 §4.1: the hex SHA-1 of the vCard's PHOTO/BINVAL, if any.
pub fn photo_hash(vcard: &Element) -> Option<String> {
    let binval = vcard
        .get_child("PHOTO", ns::VCARD)?
        .get_child("BINVAL", ns::VCARD)?
        .text();
    let clean: String = binval.chars().filter(|c| !c.is_whitespace()).collect();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean)
        .ok()?;
    Some(
        sha1::Sha1::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// XEP-0153 §4.1: an available presence without its own update element
/// gets one with the stored photo's hash (none without a photo).
pub fn add_photo_update(ctx: &Ctx<'_>, owner: &str, presence: &mut Element) {
    if presence.has_child("x", ns::VCARD_UPDATE) {
        return;
    }
    let Some(hash) = stored(ctx, owner).as_ref().and_then(photo_hash) else {
        return;
    };
    presence.push(
        Element::new("x", ns::VCARD_UPDATE)
            .with_child(Element::new("photo", ns::VCARD_UPDATE).with_text(hash)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_photo_hash_is_the_sha1_of_the_decoded_binval() {
        let v = crate::xmpp::parse_stanza(
            "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVs\nbG8=</BINVAL></PHOTO></vCard>",
        )
        .expect("parses");
        // SHA-1 of "hello".
        assert_eq!(
            photo_hash(&v).as_deref(),
            Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")
        );
        let none = crate::xmpp::parse_stanza("<vCard xmlns='vcard-temp'><FN>x</FN></vCard>")
            .expect("parses");
        assert_eq!(photo_hash(&none), None);
    }
}
