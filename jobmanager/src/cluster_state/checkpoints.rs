//! The checkpoint catalog: per job, the completed checkpoints a restart may
//! restore from, the savepoints, and the highest checkpoint id any leader may
//! have handed out. Replicated through Raft so a new leader knows them.
//!
//! Invariants (enforced by apply, which refuses commands that would break
//! them):
//! - checkpoint ids of a job only increase: a completion with an id at or
//!   below the newest completed one is refused as stale;
//! - a completed id was reserved first (`id <= reserved_up_to`), so a new
//!   leader that continues after `reserved_up_to` never reuses an id a former
//!   leader may have triggered (and whose files may lie in `chk-<id>`);
//! - the newest completed checkpoint is never discarded (a restart needs it);
//! - savepoints are never removed by a discard.

use super::ClusterState;
use super::apply::{RejectionKind, Response, reject};
use eddy_sdk::ids::{CheckpointId, JobId, NodeId, SubtaskIndex};
use eddy_sdk::spec::StateBackendKind;
use serde::{Deserialize, Serialize};

/// One operator's snapshot in one subtask of a completed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub node: NodeId,
    /// The subtask index and the parallelism the snapshot was taken at (a
    /// restore at another parallelism maps key groups through them).
    pub index: SubtaskIndex,
    pub parallelism: u32,
    /// Object-store path of the snapshot's `_manifest`.
    pub manifest_path: String,
    /// Bytes of state this snapshot covers.
    pub state_bytes: u64,
    /// Bytes uploaded for it (less than `state_bytes` when incremental).
    pub uploaded_bytes: u64,
}

/// A checkpoint (or savepoint) every expected subtask acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedCheckpoint {
    pub id: CheckpointId,
    /// Leader wall clock (ms since the epoch) at trigger and at completion.
    pub trigger_time_ms: i64,
    pub completed_time_ms: i64,
    /// The storage location (`checkpoint.storage`) the snapshots are under.
    pub storage_root: String,
    pub backend: StateBackendKind,
    /// Sorted by (node, index).
    pub snapshots: Vec<SnapshotEntry>,
    /// Set for a savepoint: the directory the user chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_path: Option<String>,
}

impl CompletedCheckpoint {
    pub fn is_savepoint(&self) -> bool {
        self.savepoint_path.is_some()
    }
    /// Bytes of state over every snapshot.
    pub fn state_bytes(&self) -> u64 {
        self.snapshots.iter().map(|s| s.state_bytes).sum()
    }
    pub fn uploaded_bytes(&self) -> u64 {
        self.snapshots.iter().map(|s| s.uploaded_bytes).sum()
    }
}

/// One job's checkpoints as the cluster remembers them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCatalog {
    /// Every id up to this one may have been triggered by some leader (none
    /// reserved yet: ids start at 1); the next leader starts after it.
    #[serde(default)]
    pub reserved_up_to: Option<CheckpointId>,
    /// Retained completed checkpoints, oldest first.
    #[serde(default)]
    pub completed: Vec<CompletedCheckpoint>,
    /// Savepoints, oldest first; never removed automatically.
    #[serde(default)]
    pub savepoints: Vec<CompletedCheckpoint>,
}

impl CheckpointCatalog {
    /// The newest completed checkpoint or savepoint: what a restart restores.
    pub fn latest(&self) -> Option<&CompletedCheckpoint> {
        let c = self.completed.last();
        let s = self.savepoints.last();
        match (c, s) {
            (Some(c), Some(s)) => Some(if s.id > c.id { s } else { c }),
            (c, s) => c.or(s),
        }
    }
    /// The first id a (new) leader may trigger.
    pub fn next_id(&self) -> CheckpointId {
        CheckpointId(self.reserved_up_to.map_or(1, |r| r.0 + 1))
    }
    /// The highest completed id (checkpoint or savepoint).
    pub fn highest_completed(&self) -> Option<CheckpointId> {
        self.latest().map(|c| c.id)
    }
    pub fn get(&self, id: CheckpointId) -> Option<&CompletedCheckpoint> {
        self.completed
            .iter()
            .chain(&self.savepoints)
            .find(|c| c.id == id)
    }
}

impl ClusterState {
    /// The checkpoint catalog of `job` (none before its first reservation).
    pub fn checkpoint_catalog(&self, job: &JobId) -> Option<&CheckpointCatalog> {
        self.checkpoints.get(job)
    }

    pub(super) fn reserve_checkpoint_ids(&mut self, job: &JobId, up_to: CheckpointId) -> Response {
        if let Err(r) = self.live_job(job) {
            return r;
        }
        let catalog = self.checkpoints.entry(job.clone()).or_default();
        catalog.reserved_up_to = catalog.reserved_up_to.max(Some(up_to));
        Response::Applied
    }

    pub(super) fn checkpoint_completed(
        &mut self,
        job: &JobId,
        checkpoint: &CompletedCheckpoint,
    ) -> Response {
        if let Err(r) = self.live_job(job) {
            return r;
        }
        let catalog = self.checkpoints.entry(job.clone()).or_default();
        let id = checkpoint.id;
        if let Some(highest) = catalog.highest_completed()
            && id <= highest
        {
            return reject(
                RejectionKind::Stale,
                format!("job {job} already completed checkpoint {highest}, not accepting {id}"),
            );
        }
        if Some(id) > catalog.reserved_up_to || id.0 == 0 {
            return reject(
                RejectionKind::Conflict,
                format!("checkpoint {id} of job {job} was never reserved"),
            );
        }
        if checkpoint.is_savepoint() {
            catalog.savepoints.push(checkpoint.clone());
        } else {
            catalog.completed.push(checkpoint.clone());
        }
        Response::Applied
    }

    pub(super) fn checkpoints_discarded(&mut self, job: &JobId, ids: &[CheckpointId]) -> Response {
        if !self.jobs.contains_key(job) {
            return reject(RejectionKind::NotFound, format!("no job {job}"));
        }
        let Some(catalog) = self.checkpoints.get_mut(job) else {
            return Response::Applied;
        };
        if let Some(newest) = catalog.completed.last()
            && ids.contains(&newest.id)
        {
            return reject(
                RejectionKind::Conflict,
                format!(
                    "checkpoint {} is job {job}'s newest and is kept for restarts",
                    newest.id
                ),
            );
        }
        // Savepoints live in their own list: a discard never reaches them.
        catalog.completed.retain(|c| !ids.contains(&c.id));
        Response::Applied
    }
}

#[cfg(test)]
#[path = "checkpoints_tests.rs"]
mod tests;
