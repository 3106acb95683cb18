//! Test-only builders for hand-made histories: one short function per
//! `Entry` kind, with the fields the checkers care about as arguments and
//! plausible values for the rest. Times are in milliseconds to keep the
//! tests readable; entries carry microseconds.
use crate::history::{Entry, MemberState, RegF, RegOutcome, RosterItem, Via};

pub fn ms(t: u64) -> u64 {
    t * 1000
}

/// A send by process `p` of message `id` at `t` ms, in `session` at `seq`.
pub fn send_s(t: u64, id: &str, p: &str, session: u64, seq: u64) -> Entry {
    Entry::Send {
        t_us: ms(t),
        process: p.to_string(),
        id: id.to_string(),
        from: format!("{p}@example.test"),
        to: "sink@example.test".to_string(),
        node: 1,
        session,
        seq,
    }
}

/// A send by `q-0` in session 0; `seq` is not meaningful.
pub fn send(t: u64, id: &str) -> Entry {
    send_s(t, id, "q-0", 0, 0)
}

pub fn ok(t: u64, id: &str) -> Entry {
    Entry::SendOk {
        t_us: ms(t),
        id: id.to_string(),
    }
}

pub fn fail(t: u64, id: &str) -> Entry {
    Entry::SendFail {
        t_us: ms(t),
        id: id.to_string(),
        condition: "service-unavailable".to_string(),
    }
}

pub fn info(t: u64, id: &str) -> Entry {
    Entry::SendInfo {
        t_us: ms(t),
        id: id.to_string(),
        reason: "stream closed".to_string(),
    }
}

pub fn bounce(t: u64, id: &str) -> Entry {
    Entry::Bounce {
        t_us: ms(t),
        id: id.to_string(),
        condition: "recipient-unavailable".to_string(),
    }
}

/// A receipt of `id` at `t` ms carrying stanza-id `sid`.
pub fn recv_sid(t: u64, id: &str, sid: Option<&str>) -> Entry {
    Entry::Recv {
        t_us: ms(t),
        process: "r-0".to_string(),
        id: id.to_string(),
        from: "q-0@example.test".to_string(),
        to: "sink@example.test".to_string(),
        stanza_id: sid.map(str::to_string),
        node: 2,
        delayed: false,
    }
}

/// A receipt of `id` at `t` ms with stanza-id `sid-<id>`.
pub fn recv(t: u64, id: &str) -> Entry {
    let sid = format!("sid-{id}");
    recv_sid(t, id, Some(&sid))
}

/// `n` clean messages `m0..m{n-1}` sent by `q-0`, acknowledged and received
/// once each, ~1 ms apart, starting at `t0` ms.
pub fn clean_messages(t0: u64, n: u64) -> Vec<Entry> {
    let mut h = Vec::new();
    for i in 0..n {
        let id = format!("m{i}");
        let t = t0 + i;
        h.push(send_s(t, &id, "q-0", 0, i));
        h.push(ok(t + 1, &id));
        h.push(recv(t + 2, &id));
    }
    h
}

pub fn reg_invoke(t: u64, op: u64, f: RegF, key: &str) -> Entry {
    Entry::RegInvoke {
        t_us: ms(t),
        op,
        process: format!("reg-{op}"),
        f,
        key: key.to_string(),
        via: Via::Admin,
        node: 1,
    }
}

pub fn reg_done(t: u64, op: u64, outcome: RegOutcome) -> Entry {
    Entry::RegDone {
        t_us: ms(t),
        op,
        outcome,
    }
}

/// An invocation and completion of op `op` on `key`, from `t0` to `t1` ms.
pub fn reg(t0: u64, t1: u64, op: u64, f: RegF, key: &str, outcome: RegOutcome) -> [Entry; 2] {
    [reg_invoke(t0, op, f, key), reg_done(t1, op, outcome)]
}

pub fn unknown(why: &str) -> RegOutcome {
    RegOutcome::Unknown(why.to_string())
}

pub fn roster_send(from: &str, to: &str) -> Entry {
    Entry::RosterSend {
        t_us: ms(1),
        process: format!("ro-{from}"),
        kind: "subscribe".to_string(),
        from: format!("{from}@example.test"),
        to: format!("{to}@example.test"),
        node: 1,
    }
}

/// `owner`'s final roster; each item is (contact, subscription, ask).
pub fn roster_final(owner: &str, items: &[(&str, &str, bool)]) -> Entry {
    Entry::RosterFinal {
        t_us: ms(100),
        owner: format!("{owner}@example.test"),
        node: 1,
        items: items
            .iter()
            .map(|(jid, sub, ask)| RosterItem {
                jid: format!("{jid}@example.test"),
                subscription: sub.to_string(),
                ask: *ask,
            })
            .collect(),
    }
}

pub fn nemesis(t: u64, fault: u64, start: bool) -> Entry {
    Entry::Nemesis {
        t_us: ms(t),
        fault,
        start,
        kind: "kill".to_string(),
        nodes: vec![2],
        detail: String::new(),
    }
}

pub fn convergence(t: u64, converged: bool) -> Entry {
    Entry::Convergence {
        t_us: ms(t),
        converged,
        waited_ms: 12,
        members: vec![MemberState {
            id: 1,
            reachable: true,
            role: "leader".to_string(),
            applied_index: 7,
            state_digest: "abc".to_string(),
        }],
    }
}
