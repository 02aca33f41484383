//! What the rest of the JobManager shares with the leader's checkpoint
//! service: the events that feed it (acknowledgements from the RPC service,
//! savepoint requests from REST), the statistics it publishes for
//! `GET /v1/jobs/{id}/checkpoints`, and the status of savepoint operations
//! (`POST /v1/jobs/{id}/savepoints` answers with an operation id).
//!
//! Operations live on the leader that accepted them (as in Flink): after a
//! leader change a client asks again.

use super::{AckTimings, OperatorSnapshot, Stats, SubtaskKey};
use eddy_sdk::ids::{Attempt, CheckpointId, JobId};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// An input of the checkpoint service.
#[derive(Clone, Debug)]
pub enum Event {
    Ack {
        job: JobId,
        attempt: Attempt,
        subtask: SubtaskKey,
        checkpoint: CheckpointId,
        snapshots: Vec<OperatorSnapshot>,
        timings: AckTimings,
    },
    Decline {
        job: JobId,
        attempt: Attempt,
        subtask: SubtaskKey,
        checkpoint: CheckpointId,
        reason: String,
    },
    /// A user asked for a savepoint (and, with `stop`, to stop the job at it).
    Savepoint {
        job: JobId,
        operation: String,
        /// The savepoint's directory (a path or URL).
        target: String,
        stop: bool,
    },
}

/// Where a savepoint operation is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationStatus {
    InProgress,
    Completed,
    Failed,
}

/// A savepoint operation as `GET /v1/jobs/{id}/savepoints/{operation}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub job: JobId,
    pub status: OperationStatus,
    /// The savepoint's directory.
    pub location: String,
    /// Whether the job stops at the savepoint.
    pub stop: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

pub struct Hub {
    events: mpsc::UnboundedSender<Event>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    stats: Mutex<HashMap<JobId, Stats>>,
    operations: Mutex<HashMap<String, Operation>>,
    seq: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        let (events, receiver) = mpsc::unbounded_channel();
        Hub {
            events,
            receiver: Mutex::new(Some(receiver)),
            stats: Mutex::default(),
            operations: Mutex::default(),
            seq: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    pub fn send(&self, event: Event) {
        // The receiver lives as long as the process.
        let _ = self.events.send(event);
    }

    /// The event stream (taken once, by the checkpoint service).
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        lock(&self.receiver).take()
    }

    /// Records a savepoint request and hands it to the service; returns the
    /// operation id.
    pub fn request_savepoint(&self, job: &JobId, target: String, stop: bool) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let operation = format!("sp-{}-{n}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"));
        lock(&self.operations).insert(
            operation.clone(),
            Operation {
                job: job.clone(),
                status: OperationStatus::InProgress,
                location: target.clone(),
                stop,
                checkpoint_id: None,
                failure: None,
            },
        );
        self.send(Event::Savepoint {
            job: job.clone(),
            operation: operation.clone(),
            target,
            stop,
        });
        operation
    }

    pub fn operation(&self, id: &str) -> Option<Operation> {
        lock(&self.operations).get(id).cloned()
    }

    pub fn update_operation(&self, id: &str, f: impl FnOnce(&mut Operation)) {
        if let Some(op) = lock(&self.operations).get_mut(id) {
            f(op);
        }
    }

    pub fn publish_stats(&self, job: &JobId, stats: &Stats) {
        lock(&self.stats).insert(job.clone(), stats.clone());
    }

    /// The statistics the leader's coordinator keeps for `job` (none on a
    /// follower, or before the job's first checkpoint on this leader).
    pub fn stats(&self, job: &JobId) -> Option<Stats> {
        lock(&self.stats).get(job).cloned()
    }
}
