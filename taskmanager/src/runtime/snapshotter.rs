//! A subtask's state backends, off its slot thread.
//!
//! Operators hold their state in memory and report what changed at each
//! barrier; applying those changes to the backends (a RocksDB write batch,
//! a memtable flush and a native checkpoint, or the memory backend's copy)
//! and uploading the result is the snapshot's asynchronous part. It runs
//! here, on a blocking thread, while the slot thread goes on processing:
//! the subtask stops only for its operators to report their changes.
//!
//! Jobs run one at a time in the order they were queued, so the backends see
//! the changes of successive barriers in barrier order even when an aborted
//! checkpoint's snapshot is still running as the next barrier arrives; a
//! commit notice is applied after the snapshot it commits.

use super::checkpoint::{Report, TaskState, Timings};
use eddy_sdk::ids::CheckpointId;
use eddy_sdk::operator::{Barrier, StateChanges};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

enum Job {
    Snapshot {
        barrier: Barrier,
        changes: Vec<StateChanges>,
        alignment: Duration,
        /// The time the slot thread spent on the barrier.
        sync: Duration,
    },
    Complete(CheckpointId),
}

/// The handle the subtask keeps; dropping it lets the worker finish the
/// queued jobs and close the backends.
pub(super) struct Snapshotter {
    jobs: mpsc::UnboundedSender<Job>,
}

/// The worker stopped: a snapshot's blocking part panicked, so the backends
/// are gone and the subtask must fail (the job restarts from a checkpoint).
#[derive(Debug)]
pub(super) struct Stopped;

impl Snapshotter {
    /// Starts the worker on the current runtime; it reports to `reports`.
    pub(super) fn start(state: TaskState, reports: mpsc::UnboundedSender<Report>) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(state, rx, reports).in_current_span());
        Snapshotter { jobs }
    }

    /// Queues the snapshot of checkpoint `barrier` with the nodes' changes.
    pub(super) fn snapshot(
        &self,
        barrier: Barrier,
        changes: Vec<StateChanges>,
        alignment: Duration,
        sync: Duration,
    ) -> Result<(), Stopped> {
        self.jobs
            .send(Job::Snapshot {
                barrier,
                changes,
                alignment,
                sync,
            })
            .map_err(|_| Stopped)
    }

    /// Checkpoint `id` was committed: the backends keep its files as the
    /// base of the next incremental snapshots.
    pub(super) fn complete(&self, id: CheckpointId) -> Result<(), Stopped> {
        self.jobs.send(Job::Complete(id)).map_err(|_| Stopped)
    }
}

async fn run(
    mut state: TaskState,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    reports: mpsc::UnboundedSender<Report>,
) {
    while let Some(job) = jobs.recv().await {
        let (barrier, changes, alignment, sync) = match job {
            Job::Complete(id) => {
                state.complete(id);
                continue;
            }
            Job::Snapshot {
                barrier,
                changes,
                alignment,
                sync,
            } => (barrier, changes, alignment, sync),
        };
        let id = barrier.checkpoint;
        let started = Instant::now();
        let span = tracing::Span::current();
        let blocking = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let prepared = state.snapshot(&barrier, changes);
            (state, prepared)
        })
        .await;
        let prepared = match blocking {
            Ok((back, prepared)) => {
                state = back;
                prepared
            }
            Err(e) => {
                tracing::error!(checkpoint_id = id.0, error = %e, "snapshot worker failed; the subtask fails");
                let _ = reports.send(Report::Decline {
                    checkpoint: id,
                    reason: format!("the snapshot's blocking part failed: {e}"),
                });
                return;
            }
        };
        match prepared {
            Ok(upload) => {
                let reports = reports.clone();
                // Uploads may overlap the next checkpoint's blocking part.
                tokio::spawn(async move {
                    let report = match upload.await {
                        Ok(snapshots) => Report::Ack {
                            checkpoint: id,
                            snapshots,
                            timings: Timings {
                                alignment,
                                sync,
                                upload: started.elapsed(),
                            },
                        },
                        Err(e) => {
                            let reason = eddy_sdk::error::error_chain(&e).join(": ");
                            tracing::warn!(checkpoint_id = id.0, %reason, "snapshot upload failed");
                            Report::Decline {
                                checkpoint: id,
                                reason,
                            }
                        }
                    };
                    let _ = reports.send(report);
                }.in_current_span());
            }
            Err(e) => {
                let reason = eddy_sdk::error::error_chain(&e).join(": ");
                tracing::warn!(checkpoint_id = id.0, %reason, "snapshot failed");
                let _ = reports.send(Report::Decline {
                    checkpoint: id,
                    reason,
                });
            }
        }
    }
}
