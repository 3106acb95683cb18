//! Offline queue commands (XEP-0160 offline message storage): enqueue,
//! ack by sequence number, remove by message id. An enqueue is refused,
//! with nothing changed, past its account's message cap or byte cap or the
//! byte cap of all queues together (the caps are in the command).
use crate::command::{Budget, ByteCaps, Enqueue, OfflineMessage, Response};
use crate::state::{StateData, MAX_DONE};

/// [`crate::Command::EnqueueOffline`]: a message id queued already, or
/// removed already, is a retry and is not queued again (and answered as
/// queued, whatever the budgets say now).
pub(super) fn enqueue(
    data: &mut StateData,
    to: String,
    message: OfflineMessage,
    max_queue: u32,
    max_bytes: ByteCaps,
) -> Response {
    if data.users.get(&to).is_none() {
        return Response::NoSuchUser;
    }
    if data
        .offline_done
        .get(&(to.clone(), message.id.clone()))
        .is_some()
    {
        // Delivered and removed already: a late retry.
        return Response::Queued {
            seq: 0,
            duplicate: true,
        };
    }
    if let Some(seq) = data.offline_ids.get(&(to.clone(), message.id.clone())) {
        return Response::Queued {
            seq: *seq,
            duplicate: true,
        };
    }
    if data.queue_depth(&to) >= max_queue as usize {
        return Response::QueueFull { cap: max_queue };
    }
    let size = message.stanza.len() as u64;
    if data.queue_bytes(&to).saturating_add(size) > max_bytes.per_user {
        return Response::OverBudget {
            budget: Budget::QueueBytes,
            cap: max_bytes.per_user,
        };
    }
    if data.total_queue_bytes().saturating_add(size) > max_bytes.total {
        return Response::OverBudget {
            budget: Budget::TotalQueueBytes,
            cap: max_bytes.total,
        };
    }
    let t = &mut data.tracker;
    let seq = data.offline_next.get(&to).copied().unwrap_or(1);
    data.offline_next.insert(to.clone(), seq + 1, t);
    data.offline_ids
        .insert((to.clone(), message.id.clone()), seq, t);
    data.offline.insert((to, seq), message, t);
    Response::Queued {
        seq,
        duplicate: false,
    }
}

/// [`crate::Command::EnqueueMany`]: each in order, one result each.
pub(super) fn enqueue_many(data: &mut StateData, items: Vec<Enqueue>) -> Response {
    Response::Batch {
        responses: items
            .into_iter()
            .map(|i| enqueue(data, i.to, i.message, i.max_queue, i.max_bytes))
            .collect(),
    }
}

/// [`crate::Command::AckOffline`].
pub(super) fn ack(data: &mut StateData, to: String, up_to: u64) -> Response {
    Response::Acked {
        removed: remove_queue(data, &to, up_to),
    }
}

/// [`crate::Command::RemoveOffline`]: every id is remembered as removed
/// (queued or not), at most [`MAX_DONE`] per account.
pub(super) fn remove(data: &mut StateData, to: String, ids: Vec<String>) -> Response {
    let t = &mut data.tracker;
    let mut removed = 0;
    for id in ids {
        let key = (to.clone(), id);
        if let Some(seq) = data.offline_ids.remove(&key, t) {
            data.offline.remove(&(to.clone(), seq), t);
            removed += 1;
        }
        data.offline_done.insert(key, data.entry_index, t);
    }
    prune_done(data, &to);
    Response::Acked { removed }
}

/// Keeps at most [`MAX_DONE`] removed ids of `to`: past it, the oldest
/// quarter goes (by the log index of their removal, so every node prunes
/// the same rows).
fn prune_done(data: &mut StateData, to: &str) {
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
