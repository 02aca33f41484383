//! The checkpoint coordinator of one job: a pure state machine. The leader's
//! driver feeds it events (ticks, acknowledgements, declines, Raft commits,
//! restarts) with an explicit wall-clock `now` in milliseconds, and carries
//! out the [`Action`]s it returns (RPCs to TaskManagers, Raft proposals,
//! object-store deletes). It does no I/O and reads no clock.
//!
//! Invariants (property-tested in `coordinator_tests.rs`):
//! - at most one checkpoint is pending (triggered and not yet committed or
//!   failed), savepoints included;
//! - ids strictly increase and are never reused: they come from blocks
//!   reserved through Raft ([`Action::ReserveIds`]), and a new coordinator
//!   starts after the catalog's reservation;
//! - [`Action::Commit`] is returned only once every expected subtask acked;
//! - after each commit, exactly `retained` checkpoints stay (savepoints are
//!   never discarded), and the newest one is never discarded.

use super::stats::{Entry, Restored, Stats, Status};
use crate::cluster_state::{CheckpointCatalog, CompletedCheckpoint, SnapshotEntry};
use eddy_sdk::ids::{CheckpointId, JobId, NodeId, SubtaskIndex, VertexId};
use eddy_sdk::spec::CheckpointSettings;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How many ids one Raft reservation covers.
pub const ID_BLOCK: u64 = 100;

/// One subtask of the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubtaskKey {
    pub vertex: VertexId,
    pub index: SubtaskIndex,
}

/// The subtasks that must acknowledge each checkpoint, and the stateful
/// operators (nodes) each vertex runs: an ack must carry a snapshot of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Every vertex with its parallelism and its stateful nodes.
    pub vertices: BTreeMap<VertexId, VertexInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VertexInfo {
    pub parallelism: u32,
    pub stateful_nodes: BTreeSet<NodeId>,
}

impl Topology {
    fn subtasks(&self) -> BTreeSet<SubtaskKey> {
        self.vertices
            .iter()
            .flat_map(|(v, info)| {
                (0..info.parallelism).map(|i| SubtaskKey {
                    vertex: *v,
                    index: SubtaskIndex(i),
                })
            })
            .collect()
    }
}

/// One operator's snapshot as a subtask reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorSnapshot {
    pub node: NodeId,
    pub manifest_path: String,
    pub state_bytes: u64,
    pub uploaded_bytes: u64,
}

/// How long a subtask's part of a checkpoint took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckTimings {
    pub alignment_ms: u64,
    pub sync_ms: u64,
    pub async_ms: u64,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Propose `Command::ReserveCheckpointIds { up_to }`, then call
    /// [`Coordinator::on_ids_reserved`]; no trigger happens until then.
    ReserveIds { up_to: CheckpointId },
    /// Send `TriggerCheckpoint` to every TaskManager running a source.
    Trigger {
        id: CheckpointId,
        timestamp_ms: i64,
        /// Set for a savepoint: its directory.
        savepoint_path: Option<String>,
    },
    /// Propose `Command::CheckpointCompleted`, then call
    /// [`Coordinator::on_committed`] (or [`Coordinator::on_commit_failed`]).
    Commit(CompletedCheckpoint),
    /// Send `AbortCheckpoint` to the job's TaskManagers.
    Abort { id: CheckpointId, reason: String },
    /// Send `NotifyCheckpointComplete` to the job's TaskManagers.
    NotifyComplete { id: CheckpointId },
    /// Propose `Command::CheckpointsDiscarded`, then delete their files
    /// (`release_shared` with the retained set).
    Discard { ids: Vec<CheckpointId> },
    /// Too many consecutive checkpoint failures: fail (and restart) the job.
    FailJob { reason: String },
}

/// The checkpoint in flight.
#[derive(Clone, Debug)]
struct Pending {
    id: CheckpointId,
    trigger_ms: i64,
    savepoint_path: Option<String>,
    /// A stop-with-savepoint: once committed, nothing more is triggered.
    stop: bool,
    acks: BTreeMap<SubtaskKey, Vec<OperatorSnapshot>>,
    /// `Commit` was returned; waiting for Raft.
    committing: bool,
}

/// The coordinator of one job. See the module doc.
#[derive(Clone, Debug)]
pub struct Coordinator {
    job: JobId,
    settings: CheckpointSettings,
    topology: Topology,
    expected: BTreeSet<SubtaskKey>,
    next_id: CheckpointId,
    /// Ids up to this one may be used (`None`: nothing reserved yet).
    reserved_up_to: Option<CheckpointId>,
    reserving: bool,
    pending: Option<Pending>,
    /// Savepoints to take (target path, whether the job stops with it).
    savepoints: VecDeque<(String, bool)>,
    /// When the periodic timer last started (trigger, start or restart).
    last_trigger_ms: i64,
    /// When the last checkpoint ended (completed or failed).
    last_end_ms: Option<i64>,
    consecutive_failures: u32,
    /// Retained (non-savepoint) checkpoint ids, oldest first.
    retained: VecDeque<CheckpointId>,
    /// Stopped after `FailJob` until the job restarts.
    failed: bool,
    /// A stop-with-savepoint or the job's final checkpoint committed: the
    /// job's sources are ending, and a later barrier would never be joined
    /// by them. Until the job restarts.
    stopped: bool,
    /// A checkpoint is wanted now, before the interval is over.
    requested: bool,
    /// Ids an earlier leader may have triggered without completing them:
    /// above the catalog's newest checkpoint, below this coordinator's
    /// first id.
    inherited: std::ops::Range<u64>,
    /// Inherited checkpoints already aborted.
    aborted_inherited: BTreeSet<CheckpointId>,
    stats: Stats,
}

impl Coordinator {
    /// A coordinator for a running job, continuing from the Raft catalog
    /// (ids after its reservation; its completed checkpoints retained).
    pub fn new(
        job: JobId,
        settings: CheckpointSettings,
        topology: Topology,
        catalog: Option<&CheckpointCatalog>,
        now_ms: i64,
    ) -> Self {
        let empty = CheckpointCatalog::default();
        let catalog = catalog.unwrap_or(&empty);
        let newest = catalog.highest_completed().map_or(0, |c| c.0);
        // A new leader keeps the job's schedule: the next checkpoint is due
        // one interval after the newest completed one was triggered, so at
        // once when a failover lost the one in flight. (Not later than now:
        // the former leader's clock may run ahead.)
        let last_trigger_ms = catalog
            .completed
            .last()
            .map_or(now_ms, |c| c.trigger_time_ms.min(now_ms));
        Coordinator {
            inherited: newest + 1..catalog.next_id().0,
            aborted_inherited: BTreeSet::new(),
            job,
            settings,
            expected: topology.subtasks(),
            topology,
            next_id: catalog.next_id(),
            reserved_up_to: catalog.reserved_up_to,
            reserving: false,
            pending: None,
            savepoints: VecDeque::new(),
            last_trigger_ms,
            last_end_ms: None,
            consecutive_failures: 0,
            retained: catalog.completed.iter().map(|c| c.id).collect(),
            failed: false,
            stopped: false,
            requested: false,
            stats: Stats::default(),
        }
    }

    pub fn job(&self) -> &JobId {
        &self.job
    }
    /// The resolved settings (storage root and backend go into every trigger).
    pub fn settings(&self) -> &CheckpointSettings {
        &self.settings
    }
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// The id of the checkpoint in flight, if any.
    pub fn pending(&self) -> Option<CheckpointId> {
        self.pending.as_ref().map(|p| p.id)
    }
    /// Savepoints requested and not yet triggered.
    pub fn queued_savepoints(&self) -> usize {
        self.savepoints.len()
    }

    /// When [`Coordinator::tick`] next has something to do on its own: the
    /// pending checkpoint's expiry, or the next periodic trigger (the later
    /// of the interval and the minimum pause). `None` while it waits for an
    /// event instead (ids being reserved, a commit in Raft, a failed or
    /// stopped job). A queued savepoint is due at once, a requested
    /// checkpoint once the minimum pause is over.
    pub fn next_due_ms(&self) -> Option<i64> {
        if self.failed || self.stopped || self.reserving {
            return None;
        }
        if let Some(p) = &self.pending {
            return (!p.committing).then(|| {
                p.trigger_ms
                    .saturating_add(self.settings.timeout.as_millis_i64())
            });
        }
        if !self.savepoints.is_empty() {
            return Some(i64::MIN);
        }
        let pause = self.last_end_ms.map_or(i64::MIN, |end| {
            end.saturating_add(self.settings.min_pause.as_millis_i64())
        });
        if self.requested {
            return Some(pause);
        }
        let interval = self
            .last_trigger_ms
            .saturating_add(self.settings.interval.as_millis_i64());
        Some(interval.max(pause))
    }

    /// Times out the pending checkpoint, or triggers the next one when a
    /// savepoint is queued or the interval and the minimum pause have passed.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.failed || self.stopped {
            return actions;
        }
        if let Some(p) = &self.pending {
            let timeout = self.settings.timeout.as_millis_i64();
            if !p.committing && now_ms.saturating_sub(p.trigger_ms) >= timeout {
                let reason = format!("checkpoint expired after {}", self.settings.timeout);
                self.fail_pending(&reason, now_ms, &mut actions);
            }
            return actions;
        }
        let savepoint = !self.savepoints.is_empty();
        let interval_due = self.requested
            || now_ms.saturating_sub(self.last_trigger_ms)
                >= self.settings.interval.as_millis_i64();
        let pause_over = self.last_end_ms.is_none_or(|end| {
            now_ms.saturating_sub(end) >= self.settings.min_pause.as_millis_i64()
        });
        if !(savepoint || (interval_due && pause_over)) {
            return actions;
        }
        if self.reserved_up_to.is_none_or(|r| self.next_id > r) {
            if !self.reserving {
                self.reserving = true;
                actions.push(Action::ReserveIds {
                    up_to: CheckpointId(self.next_id.0 + ID_BLOCK - 1),
                });
            }
            return actions;
        }
        let id = self.next_id;
        self.next_id = CheckpointId(id.0 + 1);
        self.requested = false;
        let (savepoint_path, stop) = match savepoint.then(|| self.savepoints.pop_front()) {
            Some(Some((path, stop))) => (Some(path), stop),
            _ => (None, false),
        };
        self.last_trigger_ms = now_ms;
        self.pending = Some(Pending {
            id,
            trigger_ms: now_ms,
            savepoint_path: savepoint_path.clone(),
            stop,
            acks: BTreeMap::new(),
            committing: false,
        });
        self.stats.started(Entry {
            id,
            status: Status::InProgress,
            savepoint_path: savepoint_path.clone(),
            trigger_time_ms: now_ms,
            end_time_ms: None,
            acknowledged: 0,
            total_subtasks: self.expected.len() as u32,
            state_bytes: 0,
            uploaded_bytes: 0,
            operator_state_bytes: BTreeMap::new(),
            max_alignment_ms: 0,
            max_sync_ms: 0,
            max_async_ms: 0,
            failure: None,
        });
        actions.push(Action::Trigger {
            id,
            timestamp_ms: now_ms,
            savepoint_path,
        });
        actions
    }

    /// Raft applied a reservation of ids up to `up_to`.
    pub fn on_ids_reserved(&mut self, up_to: CheckpointId) {
        self.reserving = false;
        self.reserved_up_to = self.reserved_up_to.max(Some(up_to));
    }

    /// The reservation could not be committed (e.g. Raft refused it); the
    /// next tick asks again.
    pub fn on_reserve_failed(&mut self) {
        self.reserving = false;
    }

    /// Asks for a checkpoint as soon as none is pending and the minimum
    /// pause is over, without waiting for the interval (the job's sources
    /// finished and wait for a final checkpoint).
    pub fn request_checkpoint(&mut self, now_ms: i64) -> Vec<Action> {
        self.requested = true;
        self.tick(now_ms)
    }

    /// Queues a savepoint into `target_path`; it runs as soon as no
    /// checkpoint is pending. With `stop`, its commit ends triggering: the
    /// job's sources end at it.
    pub fn trigger_savepoint(
        &mut self,
        target_path: String,
        stop: bool,
        now_ms: i64,
    ) -> Vec<Action> {
        self.savepoints.push_back((target_path, stop));
        self.tick(now_ms)
    }

    /// The checkpoint just committed is the job's final one (triggered after
    /// every source ended): the sources end at its commit notice, so nothing
    /// more is triggered until the job restarts.
    pub fn final_checkpoint_committed(&mut self) {
        self.stopped = true;
    }

    /// A subtask finished its part of checkpoint `id`. Late, duplicate or
    /// unknown acknowledgements are ignored; an ack missing a stateful
    /// operator's snapshot fails the checkpoint.
    pub fn on_ack(
        &mut self,
        id: CheckpointId,
        subtask: SubtaskKey,
        operators: Vec<OperatorSnapshot>,
        timings: AckTimings,
        now_ms: i64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        actions.extend(self.abort_inherited(id));
        let Some(p) = self.pending.as_mut() else {
            return actions;
        };
        if p.id != id || p.committing || !self.expected.contains(&subtask) {
            tracing::debug!(job_id = %self.job, checkpoint_id = %id, ?subtask, "ignoring an acknowledgement");
            return actions;
        }
        if p.acks.contains_key(&subtask) {
            return actions;
        }
        let stateful = self
            .topology
            .vertices
            .get(&subtask.vertex)
            .map(|v| &v.stateful_nodes);
        let reported: BTreeSet<&NodeId> = operators.iter().map(|o| &o.node).collect();
        if let Some(missing) = stateful
            .into_iter()
            .flatten()
            .find(|n| !reported.contains(n))
        {
            let reason = format!(
                "subtask {}/{} acknowledged without a snapshot of operator {missing}",
                subtask.vertex, subtask.index
            );
            self.fail_pending(&reason, now_ms, &mut actions);
            return actions;
        }
        self.stats.update(id, |e| {
            e.acknowledged += 1;
            for o in &operators {
                e.state_bytes += o.state_bytes;
                e.uploaded_bytes += o.uploaded_bytes;
                *e.operator_state_bytes.entry(o.node.clone()).or_default() += o.state_bytes;
            }
            e.max_alignment_ms = e.max_alignment_ms.max(timings.alignment_ms);
            e.max_sync_ms = e.max_sync_ms.max(timings.sync_ms);
            e.max_async_ms = e.max_async_ms.max(timings.async_ms);
        });
        p.acks.insert(subtask, operators);
        if p.acks.len() == self.expected.len() {
            p.committing = true;
            actions.push(Action::Commit(self.completed(now_ms)));
        }
        actions
    }

    /// The pending checkpoint as the catalog will store it.
    fn completed(&self, now_ms: i64) -> CompletedCheckpoint {
        let p = self
            .pending
            .as_ref()
            .expect("called with a pending checkpoint");
        let mut snapshots: Vec<SnapshotEntry> = p
            .acks
            .iter()
            .flat_map(|(key, ops)| {
                let parallelism = self
                    .topology
                    .vertices
                    .get(&key.vertex)
                    .map_or(0, |v| v.parallelism);
                ops.iter().map(move |o| SnapshotEntry {
                    node: o.node.clone(),
                    index: key.index,
                    parallelism,
                    manifest_path: o.manifest_path.clone(),
                    state_bytes: o.state_bytes,
                    uploaded_bytes: o.uploaded_bytes,
                })
            })
            .collect();
        snapshots.sort_by(|a, b| (&a.node, a.index).cmp(&(&b.node, b.index)));
        CompletedCheckpoint {
            id: p.id,
            trigger_time_ms: p.trigger_ms,
            completed_time_ms: now_ms,
            storage_root: self.settings.storage.clone(),
            backend: self.settings.backend,
            snapshots,
            savepoint_path: p.savepoint_path.clone(),
        }
    }

    /// A subtask cannot take part in checkpoint `id`: it fails at once.
    pub fn on_decline(
        &mut self,
        id: CheckpointId,
        subtask: SubtaskKey,
        reason: &str,
        now_ms: i64,
    ) -> Vec<Action> {
        let mut actions: Vec<Action> = self.abort_inherited(id).into_iter().collect();
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.id == id && !p.committing)
        {
            let reason = format!(
                "subtask {}/{} declined: {reason}",
                subtask.vertex, subtask.index
            );
            self.fail_pending(&reason, now_ms, &mut actions);
        }
        actions
    }

    /// Raft applied the completion of `id`: tell the TaskManagers, and drop
    /// the checkpoints beyond `retained`.
    pub fn on_committed(&mut self, id: CheckpointId, now_ms: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(p) = self.pending.take_if(|p| p.id == id && p.committing) else {
            return actions;
        };
        self.last_end_ms = Some(now_ms);
        self.consecutive_failures = 0;
        self.stats.update(id, |e| {
            e.status = Status::Completed;
            e.end_time_ms = Some(now_ms);
        });
        self.stats.finished(id);
        self.stopped |= p.stop;
        actions.push(Action::NotifyComplete { id });
        if p.savepoint_path.is_none() {
            self.retained.push_back(id);
            let keep = self.settings.retained.max(1) as usize;
            let excess = self.retained.len().saturating_sub(keep);
            let ids: Vec<_> = self.retained.drain(..excess).collect();
            if !ids.is_empty() {
                actions.push(Action::Discard { ids });
            }
        }
        actions
    }

    /// Raft did not commit `id` (refused, or the proposal failed): the
    /// checkpoint fails.
    pub fn on_commit_failed(&mut self, id: CheckpointId, reason: &str, now_ms: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.id == id && p.committing)
        {
            self.fail_pending(
                &format!("commit through raft failed: {reason}"),
                now_ms,
                &mut actions,
            );
        }
        actions
    }

    /// Raft did not commit `id` because this JobManager no longer leads.
    /// That is no failure of the checkpoint (the new leader may still
    /// commit the entry this one proposed) nor of the job: the checkpoint
    /// is dropped without counting towards `tolerable_failures`, so a
    /// deposed leader never asks to fail the job, and nothing is sent to
    /// the TaskManagers, which already follow the newer term (the new
    /// leader aborts the checkpoints it inherits).
    pub fn on_leadership_lost(&mut self, id: CheckpointId, now_ms: i64) {
        if self.pending.as_ref().is_none_or(|p| p.id != id) {
            return;
        }
        self.pending = None;
        tracing::info!(job_id = %self.job, checkpoint_id = %id, "checkpoint left to the next leader: this jobmanager no longer leads");
        self.last_end_ms = Some(now_ms);
        self.stats.update(id, |e| {
            e.status = Status::Failed;
            e.end_time_ms = Some(now_ms);
            e.failure = Some("this jobmanager stopped leading before the commit".into());
        });
        self.stats.finished(id);
    }

    /// The job's tasks were redeployed (after a failure or a rescale),
    /// restored from `restored_from` when set. A checkpoint still collecting
    /// acknowledgements is aborted (its subtasks are gone); one already
    /// proposed to Raft stays pending until [`Coordinator::on_committed`] or
    /// [`Coordinator::on_commit_failed`], since every snapshot of it is
    /// uploaded and the catalog may already hold it. The periodic timer
    /// restarts.
    pub fn on_job_restarted(
        &mut self,
        topology: Topology,
        restored_from: Option<&CompletedCheckpoint>,
        now_ms: i64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.pending.as_ref().is_some_and(|p| !p.committing) {
            self.fail_pending("the job restarted", now_ms, &mut actions);
            // A checkpoint lost to a restart is not the checkpoints' fault.
            self.consecutive_failures = 0;
            actions.retain(|a| !matches!(a, Action::FailJob { .. }));
        }
        self.expected = topology.subtasks();
        self.topology = topology;
        self.failed = false;
        self.stopped = false;
        self.consecutive_failures = 0;
        self.last_trigger_ms = now_ms;
        if let Some(c) = restored_from {
            self.stats.restored += 1;
            self.stats.latest_restored = Some(Restored {
                id: c.id,
                restore_time_ms: now_ms,
                savepoint_path: c.savepoint_path.clone(),
            });
        }
        actions
    }

    /// An acknowledgement or decline of a checkpoint an earlier leader
    /// triggered (TaskManagers retry their reports to whichever JobManager
    /// leads). It can never complete: its acknowledgements so far were lost
    /// with that leader. It is aborted on the TaskManagers, once, so that a
    /// source waiting for it (a stop-with-savepoint) resumes; the next
    /// trigger takes its place.
    fn abort_inherited(&mut self, id: CheckpointId) -> Option<Action> {
        if !self.inherited.contains(&id.0) || !self.aborted_inherited.insert(id) {
            return None;
        }
        tracing::info!(job_id = %self.job, checkpoint_id = %id, "aborting a checkpoint an earlier leader triggered");
        Some(Action::Abort {
            id,
            reason: "triggered by an earlier jobmanager leader".into(),
        })
    }

    fn fail_pending(&mut self, reason: &str, now_ms: i64, actions: &mut Vec<Action>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        tracing::warn!(job_id = %self.job, checkpoint_id = %p.id, reason, "checkpoint failed");
        self.last_end_ms = Some(now_ms);
        self.stats.update(p.id, |e| {
            e.status = Status::Failed;
            e.end_time_ms = Some(now_ms);
            e.failure = Some(reason.to_string());
        });
        self.stats.finished(p.id);
        actions.push(Action::Abort {
            id: p.id,
            reason: reason.to_string(),
        });
        // A failed savepoint is reported to whoever asked; it does not count
        // towards failing the job.
        if p.savepoint_path.is_some() {
            return;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures > self.settings.tolerable_failures {
            self.failed = true;
            actions.push(Action::FailJob {
                reason: format!(
                    "{} consecutive checkpoints failed (tolerable: {}); last: {reason}",
                    self.consecutive_failures, self.settings.tolerable_failures
                ),
            });
        }
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
