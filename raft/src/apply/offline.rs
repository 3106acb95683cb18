//! Offline queue commands (RFC 6121 §8.5.2.1.1 storage, XEP-0160 flow):
//! enqueue, ack by sequence number, remove by message id.
use crate::state::{StateData, MAX_DONE};

/// Keeps at most [`MAX_DONE`] removed ids of `to`: past it, the oldest
/// quarter goes (by the log index of their removal, so every node prunes
/// the same rows).
pub(super) fn prune_done(data: &mut StateData, to: &str) {
    let start = (to.to_string(), String::new());
    let mut mine: Vec<((String, String), u64)> = data
        .offline_done
        .range(start..)
        .take_while(|((o, _), _)| o == to)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if mine.len() <= MAX_DONE {
        return;
    }
    mine.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let t = &mut data.tracker;
    for (k, _) in mine.into_iter().take(MAX_DONE / 4) {
        data.offline_done.remove(&k, t);
    }
}

/// Removes queue entries of `to` with seq <= `up_to`, and their id index rows.
pub(super) fn remove_queue(data: &mut StateData, to: &str, up_to: u64) -> u32 {
    let doomed: Vec<(u64, String)> = data
        .queue(to)
        .take_while(|(seq, _)| *seq <= up_to)
        .map(|(seq, m)| (seq, m.id.clone()))
        .collect();
    let t = &mut data.tracker;
    for (seq, id) in &doomed {
        data.offline.remove(&(to.to_string(), *seq), t);
        data.offline_ids.remove(&(to.to_string(), id.clone()), t);
    }
    doomed.len() as u32
}
