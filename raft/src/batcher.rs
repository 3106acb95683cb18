//! The proposal batcher: the task that groups commands proposed at about
//! the same time into one [`Command::Batch`] log entry (group commit).
use std::sync::Arc;

use openraft::error::RaftError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::command::{Command, Response};
use crate::proposal::{write_error, Applied, ProposeError};
use crate::types::Raft;

/// Most commands in one batched log entry.
const MAX_BATCH_COMMANDS: usize = 512;
/// Largest estimated size of one batched log entry.
/// (Kept at the append budget, `network::APPEND_BUDGET_BYTES`, so one entry
/// fits in one append.)
const MAX_BATCH_BYTES: usize = crate::network::APPEND_BUDGET_BYTES;
/// Batches submitted to raft and not yet committed, at most. While all are
/// in flight, new commands queue up and form the next, larger batch: group
/// commit that adapts to load (a lone writer still gets a batch of one).
const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// A command waiting for the batcher.
pub(crate) struct Pending {
    pub(crate) cmd: Command,
    pub(crate) tx: oneshot::Sender<Result<Applied, ProposeError>>,
}

/// Collects concurrently proposed commands into [`Command::Batch`] entries.
///
/// openraft 0.9 appends (and so fsyncs) each client write on its own; one
/// entry per batch makes that one fsync per batch. Batches are handed to
/// raft in arrival order, so commands from one caller keep their order.
pub(crate) async fn batcher(raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let permits = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.cmd.size_hint();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.size_hint();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (cmd, txs) = if batch.len() == 1 {
            let p = batch.remove(0);
            (p.cmd, vec![p.tx])
        } else {
            let (cmds, txs): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.tx)).unzip();
            (Command::Batch { commands: cmds }, txs)
        };
        let single = txs.len() == 1;
        // Enqueue into raft here, in order; wait for commit elsewhere.
        let rx_commit = match raft.client_write_ff(cmd).await {
            Ok(rx) => rx,
            Err(fatal) => {
                for tx in txs {
                    let _ = tx.send(Err(ProposeError::Fatal(fatal.to_string())));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = match rx_commit.await {
                Err(_) => Err(ProposeError::Unknown("raft dropped the proposal".into())),
                Ok(Err(e)) => Err(write_error(RaftError::APIError(e))),
                Ok(Ok(r)) => Ok(r),
            };
            match outcome {
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Ok(r) if single => {
                    let applied = Applied {
                        log_index: r.log_id.index,
                        response: r.data,
                        voters: vec![],
                        learners: vec![],
                    };
                    for tx in txs {
                        let _ = tx.send(Ok(applied.clone()));
                    }
                }
                Ok(r) => {
                    let responses = match r.data {
                        Response::Batch { responses } if responses.len() == txs.len() => responses,
                        other => {
                            let e = ProposeError::Fatal(format!("batch answered with {other:?}"));
                            for tx in txs {
                                let _ = tx.send(Err(e.clone()));
                            }
                            return;
                        }
                    };
                    for (tx, response) in txs.into_iter().zip(responses) {
                        let _ = tx.send(Ok(Applied {
                            log_index: r.log_id.index,
                            response,
                            voters: vec![],
                            learners: vec![],
                        }));
                    }
                }
            }
        });
    }
}
