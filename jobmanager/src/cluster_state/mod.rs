//! The durable cluster state: what the Raft state machine holds and applies
//! committed [`Command`]s to.
//!
//! Pure by design: no tokio, tonic, axum or redb here, and no clock: every time
//! arrives inside the command, so every replica computes the same state from
//! the same log. Invariants:
//! - a terminal job (FINISHED, CANCELED, FAILED) never changes again;
//! - a job's placements belong to its current `attempt`;
//! - only non-terminal jobs hold slots.

mod apply;
mod checkpoints;

pub use apply::{Command, Rejection, RejectionKind, Response};
pub use checkpoints::{CheckpointCatalog, CompletedCheckpoint, SnapshotEntry};

use eddy_sdk::FailureClass;
use eddy_sdk::ids::{
    Attempt, CheckpointId, JobId, NodeId, SlotIndex, SubtaskIndex, TaskManagerId, VertexId,
};
use eddy_sdk::rest::{JobState, SubtaskMetricsInfo, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where one subtask of one vertex runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Placement {
    pub vertex: VertexId,
    pub index: SubtaskIndex,
    pub tm_id: TaskManagerId,
    pub slot: SlotIndex,
}

/// Why a job failed: its class and the error chain, outermost first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
    pub chain: Vec<String>,
    pub taskmanager: Option<TaskManagerId>,
    pub vertex: Option<VertexId>,
    pub time_ms: i64,
}

/// What the JobManager did about a failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FailureAction {
    /// Redeploy after `backoff_ms`, from this checkpoint (none: from the
    /// start, or from the savepoint the job was submitted with).
    Restart {
        backoff_ms: u64,
        restore_checkpoint: Option<u64>,
    },
    /// The job failed for good.
    Fail,
}

/// One entry of a job's exception history (`GET /v1/jobs/{id}/exceptions`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExceptionRecord {
    pub failure: Failure,
    /// The attempt that failed.
    pub attempt: Attempt,
    pub action: FailureAction,
    /// Set when the checkpoint the attempt restored from turned out damaged
    /// (corrupt or missing files) and was dropped from the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged_checkpoint: Option<u64>,
}

/// How many failures a job's record keeps (oldest dropped first).
pub const EXCEPTION_HISTORY: usize = 64;

/// A savepoint (or retained checkpoint) a job was submitted to start from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSource {
    /// The storage location holding the snapshots (the savepoint directory).
    pub location: String,
    pub checkpoint: CheckpointId,
    /// `(node, manifest path relative to location)` of every snapshot.
    pub snapshots: Vec<(NodeId, String)>,
}

/// One job as the cluster remembers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub name: String,
    /// The job spec as JSON (`JobSpec::to_json`), sent as-is to TaskManagers.
    pub spec_json: String,
    pub state: JobState,
    /// Slots the job needs (the widest vertex's parallelism).
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// Incremented every time the job's tasks are (re)scheduled.
    pub attempt: Attempt,
    pub submitted_at_ms: i64,
    pub start_time_ms: Option<i64>,
    pub end_time_ms: Option<i64>,
    /// Why the job is in its state, in words (e.g. waiting for slots).
    pub status_message: Option<String>,
    pub failure: Option<Failure>,
    /// Placements of the current attempt (empty until scheduled).
    pub placements: Vec<Placement>,
    /// The last status of every subtask, recorded when the job ended, so its
    /// final figures outlive the TaskManagers' reports and a restart.
    #[serde(default)]
    pub final_tasks: Vec<FinalTask>,
    /// Failures, oldest first (at most [`EXCEPTION_HISTORY`]).
    #[serde(default)]
    pub exceptions: Vec<ExceptionRecord>,
    /// The restart strategy's memory of recent failures.
    #[serde(default)]
    pub restart: crate::restart::Tracker,
    /// RESTARTING: when the job is redeployed (leader wall clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at_ms: Option<i64>,
    /// Where the job's state starts when its catalog has no checkpoint yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreSource>,
}

/// One subtask's last reported state and metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalTask {
    pub vertex: VertexId,
    pub index: SubtaskIndex,
    pub state: TaskState,
    pub metrics: SubtaskMetricsInfo,
}

impl JobRecord {
    /// Whether this job holds its placements' slots.
    pub fn holds_slots(&self) -> bool {
        !self.state.is_terminal() && !self.placements.is_empty()
    }

    /// The TaskManagers this job's placements use.
    pub fn taskmanagers(&self) -> BTreeSet<TaskManagerId> {
        self.placements.iter().map(|p| p.tm_id.clone()).collect()
    }
}

/// Everything the JobManager group agrees on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub jobs: BTreeMap<JobId, JobRecord>,
    /// The REST URL each JobManager announced when it became leader, in logs
    /// written before the Raft membership carried REST URLs: a fallback for
    /// a member whose membership entry has none yet.
    pub jobmanager_rest_urls: BTreeMap<u64, String>,
    /// Each job's checkpoint catalog (`checkpoints`).
    #[serde(default)]
    pub checkpoints: BTreeMap<JobId, CheckpointCatalog>,
}

impl ClusterState {
    pub fn job(&self, id: &JobId) -> Option<&JobRecord> {
        self.jobs.get(id)
    }

    /// Slots held by non-terminal jobs, per TaskManager.
    pub fn slots_in_use(&self) -> BTreeMap<TaskManagerId, BTreeSet<SlotIndex>> {
        let mut out: BTreeMap<TaskManagerId, BTreeSet<SlotIndex>> = BTreeMap::new();
        for job in self.jobs.values().filter(|j| j.holds_slots()) {
            for p in &job.placements {
                out.entry(p.tm_id.clone()).or_default().insert(p.slot);
            }
        }
        out
    }

    /// Non-terminal jobs with a subtask on `tm`.
    pub fn active_jobs_on(&self, tm: &TaskManagerId) -> Vec<&JobRecord> {
        self.jobs
            .values()
            .filter(|j| j.holds_slots() && j.placements.iter().any(|p| &p.tm_id == tm))
            .collect()
    }

    /// Number of jobs per state.
    pub fn count_by_state(&self) -> BTreeMap<&'static str, u32> {
        let mut out = BTreeMap::new();
        for job in self.jobs.values() {
            *out.entry(job.state.as_str()).or_insert(0) += 1;
        }
        out
    }
}
