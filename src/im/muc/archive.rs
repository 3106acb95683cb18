//! XEP-0313 on a room's JID (XEP-0045 rooms archived by the service, §5 of
//! XEP-0313 "Archives for MUC rooms"), when the archive is on
//! (`[archive] enabled`): each groupchat message with a body goes to the
//! room's replicated archive through the node's archiver (batched with the
//! one-to-one entries, beside the live path: no raft write of its own), and
//! occupants, members, or anyone for an open room, page through it from
//! any node (a read index first, as for an account's archive).
use starling_raft::command::{ArchiveEntry, ArchivedMessage};
use starling_raft::muc::Affiliation;

use super::{MucError, Service};
use crate::clock::now_ms;
use crate::im::mam;
use crate::router::archiver::ArchiveJob;
use crate::xmpp::jid::bare_of;
use crate::xmpp::{ns, Element};

/// Hands the room's broadcast `el` (stanza id `id`, from occupant `nick`)
/// to the archiver, if the archive is on.
pub(super) fn archive(svc: &Service, room_jid: &str, nick: &str, id: &str, el: &Element) {
    let Some(archiver) = svc.router.archiver() else {
        return;
    };
    if el.get_child("body", ns::CLIENT).is_none() {
        return;
    }
    archiver.submit(ArchiveJob {
        entries: vec![ArchiveEntry {
            owner: room_jid.to_string(),
            message: ArchivedMessage {
                id: id.to_string(),
                with: format!("{room_jid}/{nick}"),
                stamp_ms: now_ms(),
                stanza: el.to_standalone_xml(),
                sender_id: None,
                outgoing: false,
            },
        }],
        retractions: Vec::new(),
        // A groupchat message is acknowledged once routed (see the module
        // doc of `im::muc`): nobody waits for its archive commit.
        done: None,
    });
}

/// Who may read a room's archive: its occupants and members, and anyone
/// for a room anyone may enter (open, no password).
fn may_read(svc: &Service, room_jid: &str, from: &str) -> Result<(), MucError> {
    let room = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    let aff = svc.affiliation(room_jid, bare_of(from));
    if aff == Affiliation::Outcast {
        return Err(MucError::Forbidden);
    }
    let open = !room.config.members_only && room.config.password.is_none();
    if open || aff >= Affiliation::Member || room.nick_of(from).is_some() {
        Ok(())
    } else {
        Err(MucError::Forbidden)
    }
}

/// An XEP-0313 iq to the room: the form (get) or a query (set). Returns
/// the iq's payload (the form, or `<fin>`) after sending the results.
pub(super) async fn query(
    svc: &Service,
    el: &Element,
    room_jid: &str,
    from: &str,
    query: &Element,
) -> Result<Element, MucError> {
    if svc.router.archiver().is_none() {
        return Err(MucError::ServiceUnavailable);
    }
    may_read(svc, room_jid, from)?;
    if el.attr("type") == Some("get") {
        return Ok(mam::form());
    }
    let parsed = mam::parse_query(query, mam::PageLimits::of(svc.router.archive_config()))
        .map_err(|_| MucError::BadRequest)?;
    mam::confirm_read_index(svc.router.cluster())
        .await
        .map_err(|_| MucError::Unavailable)?;
    let page = {
        let state = svc.router.cluster().state().read();
        state.data.archive_page(room_jid, &parsed.query)
    }
    .map_err(|_| MucError::NoRoom)?;
    let (messages, fin) =
        mam::result_stanzas(from, Some(room_jid), parsed.query_id.as_deref(), &page);
    for m in messages {
        svc.send(m).await;
    }
    Ok(fin)
}
