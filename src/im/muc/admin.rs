//! Iqs to a room: roles and affiliations (`muc#admin`, XEP-0045 §8, §9),
//! the configuration form and destruction (`muc#owner`, §10), XEP-0425
//! moderation, and those to an occupant (XEP-0410 self-ping). Who may do
//! what is decided by pure functions ([`may_set_role`],
//! [`may_set_affiliation`]) of the actor's and the target's standing.
use starling_raft::command::{Command, Response};
use starling_raft::muc::{Affiliation, AffiliationChange, Role, Room, RoomConfig};

use super::presence::broadcast_occupant;
use super::stanzas::{self, PresenceFacts};
use super::{disco, message, MucError, Service};
use crate::xmpp::jid::{bare_of, Jid};
use crate::xmpp::{ns, Element};

pub(super) async fn room_iq(svc: &Service, el: Element, to: Jid) {
    let ty = el.attr("type").unwrap_or_default().to_string();
    if !matches!(ty.as_str(), "get" | "set") {
        return;
    }
    let room_jid = to.to_bare().to_string();
    let from = el.attr("from").unwrap_or_default().to_string();
    let Some(child) = el.children().next().cloned() else {
        return svc.refuse(&el, MucError::BadRequest).await;
    };
    let result: Result<Option<Element>, MucError> = if let Some(nick) = to.resource() {
        disco::occupant_iq(svc, &el, &room_jid, nick.as_str(), &from)
    } else {
        match (child.name(), child.ns(), ty.as_str()) {
            ("query", ns::DISCO_INFO, "get") => disco::room_info(svc, &room_jid).map(Some),
            ("query", ns::DISCO_ITEMS, "get") => disco::room_items(svc, &room_jid).map(Some),
            ("ping", ns::PING, "get") => svc.room(&room_jid).map(|_| None).ok_or(MucError::NoRoom),
            ("query", ns::MUC_OWNER, "get") => owner_get(svc, &room_jid, &from).map(Some),
            ("query", ns::MUC_OWNER, "set") => {
                owner_set(svc, &room_jid, &from, &child).await.map(|_| None)
            }
            ("query", ns::MUC_ADMIN, "get") => admin_get(svc, &room_jid, &from, &child).map(Some),
            ("query", ns::MUC_ADMIN, "set") => {
                admin_set(svc, &room_jid, &from, &child).await.map(|_| None)
            }
            ("query", ns::MAM, _) => super::archive::query(svc, &el, &room_jid, &from, &child)
                .await
                .map(Some),
            ("moderate", ns::MODERATE, "set") => message::moderate(svc, &room_jid, &from, &child)
                .await
                .map(|_| None),
            _ => Err(MucError::Unsupported),
        }
    };
    match result {
        Ok(payload) => {
            let mut reply = Element::new("iq", ns::CLIENT)
                .with_attr("type", "result")
                .with_opt_attr("id", el.attr("id"))
                .with_opt_attr("from", el.attr("to"))
                .with_attr("to", from);
            if let Some(p) = payload {
                reply.push(p);
            }
            svc.send(reply).await;
        }
        Err(e) => svc.refuse(&el, e).await,
    }
}

/// §8.2-§8.6, §9.6-§9.7: may an actor with `actor` standing give `role`
/// to an occupant whose affiliation is `target`?
pub fn may_set_role(
    actor_role: Role,
    actor: Affiliation,
    target: Affiliation,
    role: Option<Role>,
) -> Result<(), MucError> {
    if actor_role != Role::Moderator {
        return Err(MucError::Forbidden);
    }
    // §8.2: a moderator cannot kick (or demote) an admin or owner, nor one
    // of higher affiliation than their own.
    if target > actor || target >= Affiliation::Admin && actor < Affiliation::Owner {
        return Err(MucError::NotAllowed);
    }
    // §9.6: granting or revoking moderator is for admins and owners.
    if role == Some(Role::Moderator) && actor < Affiliation::Admin {
        return Err(MucError::Forbidden);
    }
    Ok(())
}

/// §9.1-§9.5, §10.3-§10.8: may `actor` set `target`'s affiliation to `to`?
pub fn may_set_affiliation(
    actor: Affiliation,
    target: Affiliation,
    to: Affiliation,
) -> Result<(), MucError> {
    if actor < Affiliation::Admin {
        return Err(MucError::Forbidden);
    }
    // Owners and admins are owners' to make and unmake (§10.3-§10.8).
    if actor < Affiliation::Owner && (to >= Affiliation::Admin || target >= Affiliation::Admin) {
        return Err(MucError::NotAllowed);
    }
    Ok(())
}

fn standing(svc: &Service, room: &Room, room_jid: &str, from: &str) -> (Role, Affiliation) {
    let role = room
        .occupants
        .values()
        .find(|o| o.full == from)
        .map_or(Role::Visitor, |o| o.role);
    (role, svc.affiliation(room_jid, bare_of(from)))
}

fn admin_get(
    svc: &Service,
    room_jid: &str,
    from: &str,
    query: &Element,
) -> Result<Element, MucError> {
    let room = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    let (role, aff) = standing(svc, &room, room_jid, from);
    let item = query
        .get_child("item", ns::MUC_ADMIN)
        .ok_or(MucError::BadRequest)?;
    let mut q = Element::new("query", ns::MUC_ADMIN);
    if let Some(a) = item.attr("affiliation") {
        let wanted = Affiliation::parse(a).ok_or(MucError::BadRequest)?;
        // §9.5, §10.5: admins see the lists (and owners every one).
        if aff < Affiliation::Admin {
            return Err(MucError::Forbidden);
        }
        let state = svc.router.cluster().state().read();
        for (jid, rec) in state.data.muc_affiliations_of(room_jid) {
            if rec.affiliation == wanted {
                q.push(
                    Element::new("item", ns::MUC_ADMIN)
                        .with_attr("affiliation", a)
                        .with_attr("jid", jid.clone()),
                );
            }
        }
    } else if let Some(r) = item.attr("role") {
        if role != Role::Moderator {
            return Err(MucError::Forbidden);
        }
        for (nick, o) in &room.occupants {
            if o.role.as_str() == r {
                q.push(
                    Element::new("item", ns::MUC_ADMIN)
                        .with_attr("role", r)
                        .with_attr("nick", nick.clone())
                        .with_attr("jid", o.full.clone()),
                );
            }
        }
    } else {
        return Err(MucError::BadRequest);
    }
    Ok(q)
}

/// §8, §9: role changes (by nick) and affiliation changes (by JID).
async fn admin_set(
    svc: &Service,
    room_jid: &str,
    from: &str,
    query: &Element,
) -> Result<(), MucError> {
    let before = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    let (role, aff) = standing(svc, &before, room_jid, from);
    let mut changes = Vec::new();
    let mut roles = Vec::new();
    for item in query.children().filter(|c| c.is("item", ns::MUC_ADMIN)) {
        let reason = item.get_child("reason", ns::MUC_ADMIN).map(|r| r.text());
        if let Some(a) = item.attr("affiliation") {
            let to = Affiliation::parse(a).ok_or(MucError::BadRequest)?;
            let jid = match (item.attr("jid"), item.attr("nick")) {
                (Some(j), _) => Jid::new(j)
                    .map_err(|_| MucError::BadRequest)?
                    .to_bare()
                    .to_string(),
                (None, Some(n)) => {
                    bare_of(&before.occupants.get(n).ok_or(MucError::NoRoom)?.full).to_string()
                }
                _ => return Err(MucError::BadRequest),
            };
            may_set_affiliation(aff, svc.affiliation(room_jid, &jid), to)?;
            // §10.7: the last owner stays.
            if jid == bare_of(from) && to < Affiliation::Owner && aff == Affiliation::Owner {
                let owners = svc
                    .router
                    .cluster()
                    .state()
                    .read()
                    .data
                    .muc_affiliations_of(room_jid)
                    .filter(|(_, r)| r.affiliation == Affiliation::Owner)
                    .count();
                if owners <= 1 {
                    return Err(MucError::NotAllowed);
                }
            }
            changes.push(AffiliationChange {
                jid,
                affiliation: to,
                reason,
            });
        } else if let (Some(r), Some(nick)) = (item.attr("role"), item.attr("nick")) {
            let new = match r {
                "none" => None,
                "visitor" => Some(Role::Visitor),
                "participant" => Some(Role::Participant),
                "moderator" => Some(Role::Moderator),
                _ => return Err(MucError::BadRequest),
            };
            let target = before.occupants.get(nick).ok_or(MucError::NoRoom)?;
            may_set_role(
                role,
                aff,
                svc.affiliation(room_jid, bare_of(&target.full)),
                new,
            )?;
            roles.push((nick.to_string(), new, reason));
        } else {
            return Err(MucError::BadRequest);
        }
    }
    if !changes.is_empty() {
        let cmd = Command::MucSetAffiliations {
            room: room_jid.to_string(),
            changes: changes.clone(),
        };
        expect_done(svc.propose(cmd).await?)?;
    }
    for (nick, new, _) in &roles {
        let cmd = Command::MucSetRole {
            room: room_jid.to_string(),
            nick: nick.clone(),
            role: *new,
        };
        expect_done(svc.propose(cmd).await?)?;
    }
    announce_changes(svc, room_jid, &before, &changes, &roles).await;
    Ok(())
}

fn expect_done(r: Response) -> Result<(), MucError> {
    match r {
        Response::MucDone => Ok(()),
        Response::MucRefused { reason } => Err(reason.into()),
        _ => Err(MucError::Unavailable),
    }
}

/// What occupants see of changes: the removed get unavailable presence
/// with 307 (kicked), 301 (banned), 321 (affiliation) or 322 (members
/// only); the others their new item.
async fn announce_changes(
    svc: &Service,
    room_jid: &str,
    before: &Room,
    changes: &[AffiliationChange],
    roles: &[(String, Option<Role>, Option<String>)],
) {
    let after = svc.room(room_jid);
    for (nick, o) in &before.occupants {
        let still = after
            .as_ref()
            .and_then(|r| r.occupants.get(nick))
            .filter(|n| n.full == o.full);
        let bare = bare_of(&o.full);
        let change = changes.iter().find(|c| c.jid == bare);
        let role_change = roles.iter().find(|(n, _, _)| n == nick);
        match still {
            None => {
                let code = match (change, role_change) {
                    (Some(c), _) if c.affiliation == Affiliation::Outcast => stanzas::BANNED,
                    (Some(_), _) => stanzas::AFFILIATION_CHANGE,
                    (None, Some(_)) => stanzas::KICKED,
                    (None, None) => stanzas::MEMBERS_ONLY,
                };
                let reason = change
                    .and_then(|c| c.reason.as_deref())
                    .or(role_change.and_then(|(_, _, r)| r.as_deref()));
                let facts = PresenceFacts {
                    codes: vec![code],
                    reason,
                    ..Default::default()
                };
                broadcast_occupant(svc, room_jid, nick, &facts, Some((before, o))).await;
            }
            Some(now) if now.role != o.role || change.is_some() => {
                broadcast_occupant(svc, room_jid, nick, &PresenceFacts::default(), None).await;
            }
            Some(_) => {}
        }
    }
}

const FORM_TYPE: &str = "FORM_TYPE";

fn field(var: &str, ty: &str, label: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::XDATA)
        .with_attr("var", var)
        .with_attr("type", ty)
        .with_attr("label", label);
    for v in values {
        f.push(Element::new("value", ns::XDATA).with_text(*v));
    }
    f
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// §10.2: the configuration form, filled with the room's current values.
fn owner_get(svc: &Service, room_jid: &str, from: &str) -> Result<Element, MucError> {
    let room = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    if svc.affiliation(room_jid, bare_of(from)) != Affiliation::Owner {
        return Err(MucError::Forbidden);
    }
    let c = &room.config;
    let max = c.max_occupants.to_string();
    let hist = c.max_history.to_string();
    let form = Element::new("x", ns::XDATA)
        .with_attr("type", "form")
        .with_child(Element::new("title", ns::XDATA).with_text("Room configuration"))
        .with_child(field(FORM_TYPE, "hidden", "", &[ns::MUC_ROOMCONFIG]))
        .with_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            "Name",
            &[&c.name],
        ))
        .with_child(field(
            "muc#roomconfig_roomdesc",
            "text-single",
            "Description",
            &[&c.description],
        ))
        .with_child(field(
            "muc#roomconfig_persistentroom",
            "boolean",
            "Persistent",
            &[flag(c.persistent)],
        ))
        .with_child(field(
            "muc#roomconfig_publicroom",
            "boolean",
            "Listed in the directory",
            &[flag(c.public)],
        ))
        .with_child(field(
            "muc#roomconfig_membersonly",
            "boolean",
            "Members only",
            &[flag(c.members_only)],
        ))
        .with_child(field(
            "muc#roomconfig_moderatedroom",
            "boolean",
            "Moderated",
            &[flag(c.moderated)],
        ))
        .with_child(field(
            "muc#roomconfig_passwordprotectedroom",
            "boolean",
            "Password required",
            &[flag(c.password.is_some())],
        ))
        .with_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            "Password",
            &[c.password.as_deref().unwrap_or("")],
        ))
        .with_child(field(
            "muc#roomconfig_maxusers",
            "text-single",
            "Most occupants (0: the server's cap)",
            &[&max],
        ))
        .with_child(field(
            "muc#roomconfig_whois",
            "list-single",
            "Who sees real JIDs",
            &[if c.whois_anyone {
                "anyone"
            } else {
                "moderators"
            }],
        ))
        .with_child(field(
            "muc#roomconfig_changesubject",
            "boolean",
            "Participants may change the subject",
            &[flag(c.change_subject)],
        ))
        .with_child(field(
            "muc#roomconfig_allowinvites",
            "boolean",
            "Occupants may invite",
            &[flag(c.allow_invites)],
        ))
        .with_child(field(
            "muc#maxhistoryfetch",
            "text-single",
            "History messages sent on entering",
            &[&hist],
        ));
    Ok(Element::new("query", ns::MUC_OWNER).with_child(form))
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "true")
}

/// Applies a submitted muc#roomconfig form to `c`.
pub fn apply_form(
    c: &mut RoomConfig,
    form: &Element,
    svc_limits: &crate::config::MucSection,
) -> Result<(), MucError> {
    let mut password_on = None;
    for f in form.children().filter(|f| f.is("field", ns::XDATA)) {
        let Some(var) = f.attr("var") else { continue };
        let v = f
            .get_child("value", ns::XDATA)
            .map(|v| v.text())
            .unwrap_or_default();
        let long = v.len() > svc_limits.max_subject_bytes;
        match var {
            "muc#roomconfig_roomname" if !long => c.name = v,
            "muc#roomconfig_roomdesc" if !long => c.description = v,
            "muc#roomconfig_roomname" | "muc#roomconfig_roomdesc" => return Err(MucError::TooLong),
            "muc#roomconfig_persistentroom" => c.persistent = truthy(&v),
            "muc#roomconfig_publicroom" => c.public = truthy(&v),
            "muc#roomconfig_membersonly" => c.members_only = truthy(&v),
            "muc#roomconfig_moderatedroom" => c.moderated = truthy(&v),
            "muc#roomconfig_passwordprotectedroom" => password_on = Some(truthy(&v)),
            "muc#roomconfig_roomsecret" if !long => {
                c.password = (!v.is_empty()).then_some(v);
            }
            "muc#roomconfig_maxusers" => {
                let n: u32 = v.parse().map_err(|_| MucError::BadRequest)?;
                c.max_occupants = n.min(svc_limits.max_occupants);
            }
            "muc#roomconfig_whois" => c.whois_anyone = v == "anyone",
            "muc#roomconfig_changesubject" => c.change_subject = truthy(&v),
            "muc#roomconfig_allowinvites" => c.allow_invites = truthy(&v),
            "muc#maxhistoryfetch" | "muc#roomconfig_historylength" => {
                let n: u32 = v.parse().map_err(|_| MucError::BadRequest)?;
                c.max_history = n.min(svc_limits.max_history);
            }
            _ => {}
        }
    }
    if password_on == Some(false) {
        c.password = None;
    }
    Ok(())
}

/// §10.1.2 (submit or cancel the form of a reserved room), §10.2
/// (configure), §10.9 (destroy).
async fn owner_set(
    svc: &Service,
    room_jid: &str,
    from: &str,
    query: &Element,
) -> Result<(), MucError> {
    let room = svc.room(room_jid).ok_or(MucError::NoRoom)?;
    if svc.affiliation(room_jid, bare_of(from)) != Affiliation::Owner {
        return Err(MucError::Forbidden);
    }
    if let Some(d) = query.get_child("destroy", ns::MUC_OWNER) {
        return destroy(svc, room_jid, &room, d).await;
    }
    let form = query
        .get_child("x", ns::XDATA)
        .ok_or(MucError::BadRequest)?;
    match form.attr("type") {
        Some("cancel") => {
            // §10.1.3: cancelling the initial form destroys a reserved room.
            if room.locked {
                let d = Element::new("destroy", ns::MUC_OWNER);
                return destroy(svc, room_jid, &room, &d).await;
            }
            Ok(())
        }
        Some("submit") => {
            let mut config = room.config.clone();
            apply_form(&mut config, form, &svc.limits)?;
            let cmd = Command::MucConfigure {
                room: room_jid.to_string(),
                config,
                unlock: true,
            };
            expect_done(svc.propose(cmd).await?)?;
            announce_changes(svc, room_jid, &room, &[], &[]).await;
            Ok(())
        }
        _ => Err(MucError::BadRequest),
    }
}

/// §10.9: every occupant gets unavailable presence with `<destroy/>`.
async fn destroy(svc: &Service, room_jid: &str, room: &Room, d: &Element) -> Result<(), MucError> {
    expect_done(
        svc.propose(Command::MucDestroy {
            room: room_jid.to_string(),
        })
        .await?,
    )?;
    svc.drop_history(room_jid);
    for (nick, o) in &room.occupants {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", format!("{room_jid}/{nick}"))
            .with_attr("to", o.full.clone())
            .with_child(
                Element::new("x", ns::MUC_USER)
                    .with_child(
                        Element::new("item", ns::MUC_USER)
                            .with_attr("affiliation", "none")
                            .with_attr("role", "none"),
                    )
                    .with_child({
                        let mut e = Element::new("destroy", ns::MUC_USER);
                        if let Some(r) = d.get_child("reason", ns::MUC_OWNER) {
                            e.push(Element::new("reason", ns::MUC_USER).with_text(r.text()));
                        }
                        e
                    }),
            );
        svc.send(p).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_kick_ban_and_promote() {
        use Affiliation as A;
        // A moderator kicks a participant, not an admin.
        assert!(may_set_role(Role::Moderator, A::None, A::None, None).is_ok());
        assert_eq!(
            may_set_role(Role::Moderator, A::None, A::Admin, None),
            Err(MucError::NotAllowed)
        );
        assert_eq!(
            may_set_role(Role::Participant, A::Member, A::None, None),
            Err(MucError::Forbidden)
        );
        assert_eq!(
            may_set_role(Role::Moderator, A::None, A::None, Some(Role::Moderator)),
            Err(MucError::Forbidden)
        );
        // An admin bans a member, not another admin; an owner does.
        assert!(may_set_affiliation(A::Admin, A::Member, A::Outcast).is_ok());
        assert_eq!(
            may_set_affiliation(A::Admin, A::Admin, A::Outcast),
            Err(MucError::NotAllowed)
        );
        assert!(may_set_affiliation(A::Owner, A::Admin, A::Outcast).is_ok());
        assert_eq!(
            may_set_affiliation(A::Member, A::None, A::Member),
            Err(MucError::Forbidden)
        );
    }
}
