//! XEP-0313 on a room's JID (XEP-0045 rooms archived by the service, §5 of
//! XEP-0313 "Archives for MUC rooms"), when the archive is on
//! (`[archive] enabled`): each groupchat message with a body goes to the
//! room's replicated archive through the node's archiver (batched with the
//! one-to-one entries, beside the live path: no raft write of its own), and
//! occupants, members, or anyone for an open room, page through it from
//! any node (a read index first, as for an account's archive).
use starling_raft::command::{ArchiveEntry, ArchiveRetraction, ArchivedMessage};
use starling_raft::muc::{Affiliation, Room};

use super::{MucError, Service};
use crate::clock::now_ms;
use crate::im::mam;
use crate::router::archiver::ArchiveJob;
use crate::router::Guarded;
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

/// XEP-0425 §"Tombstones": a moderator's retraction of message `id`
/// (`retract`, as broadcast) replaces it in the room's archive, if the
/// archive is on, and returns once that is committed. The tombstone keeps
/// the original's `from` and occupant id (from this node's history, else
/// from the archive here), its content replaced by `<retracted/>` with
/// the moderation inside.
pub(super) async fn retract(
    svc: &Service,
    room: &Room,
    room_jid: &str,
    id: &str,
    retract: &Element,
) -> Result<(), MucError> {
    let Some(archiver) = svc.router.archiver() else {
        return Ok(());
    };
    let original: Option<Element> = svc
        .history_of(room_jid, &room.salt)
        .into_iter()
        .find(|h| h.id == id)
        .map(|h| h.el)
        .or_else(|| {
            let state = svc.router.cluster().state().read();
            let ar = state.data.archive.read();
            let seq = ar.archive_seq(room_jid, id)?;
            let stanza = ar
                .archive_of(room_jid)
                .find(|(s, _)| *s == seq)
                .map(|(_, m)| m.stanza.clone())?;
            crate::xmpp::parse_stanza(&stanza).ok()
        });
    let mut retracted =
        Element::new("retracted", ns::RETRACT).with_attr("stamp", crate::clock::datetime(now_ms()));
    for c in retract.children() {
        retracted.push(c.clone());
    }
    let mut tombstone = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_attr(
            "from",
            original
                .as_ref()
                .and_then(|o| o.attr("from"))
                .unwrap_or(room_jid),
        )
        .with_child(retracted);
    if let Some(occ) = original
        .as_ref()
        .and_then(|o| o.get_child("occupant-id", ns::OCCUPANT_ID))
    {
        tombstone.push(occ.clone());
    }
    let outcome = archiver
        .commit_now(vec![ArchiveRetraction {
            by: room_jid.to_string(),
            peer: String::new(),
            sender_id: String::new(),
            tombstone: tombstone.to_standalone_xml(),
            archive_id: Some(id.to_string()),
        }])
        .await;
    match outcome {
        Guarded::Safe => Ok(()),
        // Only when the node stops before the outcome is known (the
        // commit is retried until then): the answer is the same as for
        // the room's other writes the cluster did not confirm, a `wait`
        // error a client may retry (the retraction is idempotent).
        Guarded::Unknown | Guarded::Refused(_) => Err(MucError::Unavailable),
    }
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
