//! The sending side of one link to a peer: the task that opens the `Link`
//! stream, numbers and sends envelopes, matches their acks, tells custody
//! which copies a peer confirmed, and on a broken link hands what was not
//! acknowledged to the fallback (custody copies committed to their queue,
//! other stanzas routed again without the peer's sessions).
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_proto::mesh::mesh_client::MeshClient;
use starling_proto::mesh::{Ack, Envelope, Kind};
use starling_raft::network::MAX_MESSAGE_BYTES;
use starling_raft::NodeId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use super::wire::{Key, Notice};
use super::{
    Host, MeshLinks, Outgoing, DONE_BATCH, DONE_BATCH_KEYS, DONE_UNACKED, OPEN_TIMEOUT, RETRY_AFTER,
};

/// Hands the stanzas of `items` to the fallback (the peer is unreachable):
/// a copy in custody is committed to its queue, another stanza is routed
/// again without the peer's sessions.
pub(super) async fn fail_all(
    host: &dyn Host,
    node: NodeId,
    items: impl IntoIterator<Item = Outgoing>,
) {
    let mut unconfirmed = Vec::new();
    for item in items {
        match item {
            Outgoing::Custody { tag: t, .. } | Outgoing::Hold { tag: t, .. } => {
                unconfirmed.push(t.key)
            }
            Outgoing::Stanza { el, .. } => host.undeliverable(el, node).await,
            _ => {}
        }
    }
    if !unconfirmed.is_empty() {
        host.custody_unconfirmed(unconfirmed, node);
    }
}

/// The custody keys among acknowledged items.
pub(super) fn confirmed_keys(items: impl Iterator<Item = Outgoing>) -> Vec<Key> {
    items
        .filter_map(|i| match i {
            Outgoing::Custody { tag: t, .. } | Outgoing::Hold { tag: t, .. } => Some(t.key),
            _ => None,
        })
        .collect()
}

/// Custody notices (`DONE`) a peer could not be sent, kept for when it is
/// back: a lost "delivered" makes the peer commit its copy after its
/// timeout and the client get the message twice. Bounded in count and age.
#[derive(Default)]
struct Deferred(VecDeque<Outgoing>);

/// Most deferred notices per peer, and how long one is kept.
const DEFERRED_MAX: usize = 1024;
const DEFERRED_AGE: Duration = Duration::from_secs(60);

impl Deferred {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn pop(&mut self) -> Option<Outgoing> {
        self.0.pop_front()
    }

    /// Puts back a notice just taken out (the peer is still down), unless
    /// it is too old to matter.
    fn keep(&mut self, item: Outgoing) {
        if matches!(&item, Outgoing::Done { since, .. } if since.elapsed() < DEFERRED_AGE) {
            self.0.push_front(item);
        }
    }

    /// As [`fail_all`], keeping the notices (what they say was delivered
    /// is removed through raft now: see `Host::custody_undelivered_notice`).
    async fn fail(
        &mut self,
        host: &dyn Host,
        node: NodeId,
        items: impl IntoIterator<Item = Outgoing>,
    ) {
        let mut rest = Vec::new();
        for item in items {
            if let Outgoing::Done { notice, .. } = &item {
                host.custody_undelivered_notice(notice);
            }
            match item {
                Outgoing::Done { since, .. } if since.elapsed() < DEFERRED_AGE => {
                    if self.0.len() >= DEFERRED_MAX {
                        self.0.pop_front();
                    }
                    self.0.push_back(item);
                }
                other => rest.push(other),
            }
        }
        fail_all(host, node, rest).await;
    }
}

pub(super) async fn run_link(
    mesh: MeshLinks,
    host: Arc<dyn Host>,
    node: NodeId,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let mut down_until: Option<Instant> = None;
    // Custody notices the peer could not take yet: sent when it is back.
    let mut deferred = Deferred::default();
    loop {
        // Wait for work before (re)connecting; retry deferred notices.
        let mut retry = false;
        let first = if deferred.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(RETRY_AFTER, rx.recv()).await {
                Ok(item) => item,
                Err(_) => {
                    retry = true;
                    deferred.pop()
                }
            }
        };
        let Some(first) = first else {
            return;
        };
        mesh.set_down(node, down_until);
        if down_until.is_some_and(|t| Instant::now() < t) {
            if retry {
                deferred.keep(first);
            } else {
                deferred.fail(host.as_ref(), node, [first]).await;
            }
            continue;
        }
        let addr = match mesh.0.cluster.member_node(node) {
            Some(n) => n.raft_addr,
            None => {
                // Not a member (any more): nothing to keep for it.
                fail_all(host.as_ref(), node, [first]).await;
                continue;
            }
        };
        let channel = match mesh.0.peers.channel(&addr) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "bad peer address");
                fail_all(host.as_ref(), node, [first]).await;
                continue;
            }
        };
        let mut client = MeshClient::with_interceptor(channel, mesh.0.peers.add_secret())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (out_tx, out_rx) = mpsc::channel::<Envelope>(1024);
        let mut unacked: VecDeque<(u64, Instant, Outgoing)> = VecDeque::new();
        let mut seq = 0u64;
        // The peer's acks received and acted on (every envelope says so).
        let mut acks_seen = 0u64;
        let mut push =
            |item: Outgoing, unacked: &mut VecDeque<(u64, Instant, Outgoing)>, acks_seen: u64| {
                seq += 1;
                // What the receiver must have applied first: archive
                // batches excluded (`ClusterHandle::causal_index`).
                let causal = mesh.0.cluster.causal_index();
                let mut env = envelope(seq, mesh.0.node, causal, &item);
                env.acks_seen = acks_seen;
                if unacked.is_empty() {
                    mesh.set_oldest(node, Some(Instant::now()));
                }
                unacked.push_back((seq, Instant::now(), item));
                env
            };
        let env = push(first, &mut unacked, acks_seen);
        if out_tx.send(env).await.is_err() {
            deferred
                .fail(host.as_ref(), node, unacked.into_iter().map(|(_, _, i)| i))
                .await;
            continue;
        }
        let opened =
            tokio::time::timeout(OPEN_TIMEOUT, client.link(ReceiverStream::new(out_rx))).await;
        let mut acks = match opened {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(e)) => {
                debug!(error = %e, "mesh link refused");
                down_until = Some(Instant::now() + RETRY_AFTER);
                deferred
                    .fail(host.as_ref(), node, unacked.into_iter().map(|(_, _, i)| i))
                    .await;
                continue;
            }
            Err(_) => {
                debug!("mesh link open timed out");
                down_until = Some(Instant::now() + RETRY_AFTER);
                deferred
                    .fail(host.as_ref(), node, unacked.into_iter().map(|(_, _, i)| i))
                    .await;
                continue;
            }
        };
        info!("mesh link up");
        let mut flushed = true;
        while let Some(item) = deferred.pop() {
            let env = push(item, &mut unacked, acks_seen);
            if out_tx.send(env).await.is_err() {
                flushed = false;
                break;
            }
        }
        if !flushed {
            down_until = Some(Instant::now() + RETRY_AFTER);
            deferred
                .fail(host.as_ref(), node, unacked.into_iter().map(|(_, _, i)| i))
                .await;
            continue;
        }
        // Notices waiting for [`DONE_BATCH`] to pass.
        let mut batch: Option<(Notice, Instant)> = None;
        // The peer waits for `acks_seen` and the next envelope is to carry it.
        let mut seen_owed = false;
        // Unacknowledged notices up to this seq were handed to raft.
        let mut tombstoned_up_to = 0u64;
        let mut check = tokio::time::interval(DONE_UNACKED / 2);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let flush_at = tokio::time::sleep(DONE_BATCH);
        tokio::pin!(flush_at);
        loop {
            tokio::select! {
                item = rx.recv() => {
                    let Some(item) = item else { return };
                    let item = match item {
                        Outgoing::Done { notice, since } => {
                            let urgent = notice.is_urgent();
                            let (b, _) = batch.get_or_insert_with(|| {
                                flush_at.as_mut().reset((Instant::now() + DONE_BATCH).into());
                                (Notice::default(), since)
                            });
                            b.merge(notice);
                            if !urgent && b.len() < DONE_BATCH_KEYS {
                                if seen_owed {
                                    seen_owed = false;
                                    let env = push(Outgoing::Seen, &mut unacked, acks_seen);
                                    if out_tx.send(env).await.is_err() {
                                        break;
                                    }
                                }
                                continue;
                            }
                            let Some((notice, since)) = batch.take() else { continue };
                            Outgoing::Done { notice, since }
                        }
                        other => other,
                    };
                    seen_owed = false;
                    let env = push(item, &mut unacked, acks_seen);
                    if out_tx.send(env).await.is_err() {
                        break;
                    }
                }
                _ = check.tick(), if !unacked.is_empty() => {
                    for (s, at, item) in unacked.iter() {
                        if at.elapsed() < DONE_UNACKED {
                            break;
                        }
                        if *s > tombstoned_up_to {
                            tombstoned_up_to = *s;
                            if let Outgoing::Done { notice, .. } = item {
                                host.custody_undelivered_notice(notice);
                            }
                        }
                    }
                }
                _ = &mut flush_at, if batch.is_some() => {
                    let Some((notice, since)) = batch.take() else { continue };
                    seen_owed = false;
                    let env = push(Outgoing::Done { notice, since }, &mut unacked, acks_seen);
                    if out_tx.send(env).await.is_err() {
                        break;
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(Ack { up_to })) => {
                        let n = unacked.iter().take_while(|(s, _, _)| *s <= up_to).count();
                        let acked: Vec<Outgoing> = unacked.drain(..n).map(|(_, _, i)| i).collect();
                        let waits = acked.iter().any(|i| {
                            matches!(i, Outgoing::Custody { tag, .. } if tag.safe_on_ack)
                        });
                        let keys = confirmed_keys(acked.into_iter().filter_map(|i| match i {
                            Outgoing::Hint { ack: Some(tx), .. } => {
                                let _ = tx.send(());
                                None
                            }
                            other => Some(other),
                        }));
                        mesh.set_oldest(node, unacked.front().map(|u| u.1));
                        let late = if keys.is_empty() {
                            Vec::new()
                        } else {
                            host.custody_confirmed(keys, node)
                        };
                        if !late.is_empty() {
                            // Before `acks_seen` says they arrived: the
                            // peer must not write these on it.
                            let notice = Notice { late, ..Notice::default() };
                            let item = Outgoing::Done { notice, since: Instant::now() };
                            let env = push(item, &mut unacked, acks_seen);
                            if out_tx.send(env).await.is_err() {
                                break;
                            }
                        }
                        // Acted on: every later envelope says so. When the
                        // peer waits for it to write copies, the next item
                        // carries it, or one that says only that goes now
                        // (nothing queued, or a notice that waits for its
                        // batch).
                        acks_seen = acks_seen.max(up_to);
                        if waits && !rx.is_empty() {
                            seen_owed = true;
                        } else if waits {
                            seen_owed = false;
                            let env = push(Outgoing::Seen, &mut unacked, acks_seen);
                            if out_tx.send(env).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
        warn!(unacked = unacked.len(), "mesh link down");
        down_until = Some(Instant::now() + RETRY_AFTER);
        mesh.set_down(node, down_until);
        let batched = batch.map(|(notice, since)| Outgoing::Done { notice, since });
        deferred
            .fail(
                host.as_ref(),
                node,
                unacked.into_iter().map(|(_, _, i)| i).chain(batched),
            )
            .await;
        // What the peer confirmed earlier may have died with it.
        host.custody_peer_down(node);
    }
}

fn envelope(seq: u64, from_node: NodeId, applied_index: u64, item: &Outgoing) -> Envelope {
    let none = (Vec::new(), String::new());
    let (kind, to, session, xml, (holders, queue_id)) = match item {
        Outgoing::Stanza { to, session, el } => (
            Kind::Stanza,
            to.clone(),
            *session,
            el.to_standalone_xml(),
            none,
        ),
        Outgoing::Custody {
            to,
            session,
            tag,
            xml,
        } => (
            Kind::Stanza,
            to.clone(),
            *session,
            xml.clone(),
            (tag.holders.clone(), tag.key.1.clone()),
        ),
        Outgoing::Hold { tag, xml } => (
            Kind::Hold,
            tag.key.0.clone(),
            0,
            xml.clone(),
            (tag.holders.clone(), tag.key.1.clone()),
        ),
        Outgoing::Done { notice, .. } => (
            Kind::Done,
            String::new(),
            0,
            serde_json::to_string(notice).unwrap_or_default(),
            none,
        ),
        Outgoing::Hint {
            bare, acked, json, ..
        } => (Kind::Hint, bare.clone(), *acked, json.clone(), none),
        Outgoing::Kick { to, session } => (Kind::Kick, to.clone(), *session, String::new(), none),
        Outgoing::AuthBlock { key, secs } => {
            (Kind::AuthBlock, key.to_string(), *secs, String::new(), none)
        }
        Outgoing::Seen => (Kind::Seen, String::new(), 0, String::new(), none),
    };
    let safe_on_ack = matches!(item, Outgoing::Custody { tag, .. } if tag.safe_on_ack);
    Envelope {
        seq,
        kind: kind as i32,
        to,
        session,
        xml,
        from_node,
        applied_index,
        holders,
        queue_id,
        acks_seen: 0,
        safe_on_ack,
    }
}
