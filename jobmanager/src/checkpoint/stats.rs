//! What the coordinator remembers about recent checkpoints for the REST view:
//! counts, the latest of each outcome, a bounded history and min/avg/max
//! summaries. Leader-local: a new leader starts counting afresh (the durable
//! record is the Raft catalog).

use eddy_sdk::ids::{CheckpointId, NodeId};
use std::collections::{BTreeMap, VecDeque};

/// How many checkpoints the history keeps (newest first).
pub const HISTORY_LEN: usize = 20;

/// The outcome of one checkpoint so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    Failed,
}

/// One checkpoint or savepoint as the REST view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: CheckpointId,
    pub status: Status,
    /// Set for a savepoint.
    pub savepoint_path: Option<String>,
    pub trigger_time_ms: i64,
    /// When it completed or failed.
    pub end_time_ms: Option<i64>,
    pub acknowledged: u32,
    pub total_subtasks: u32,
    pub state_bytes: u64,
    pub uploaded_bytes: u64,
    /// State bytes per operator (summed over its subtasks).
    pub operator_state_bytes: BTreeMap<NodeId, u64>,
    /// The longest barrier alignment, synchronous and asynchronous part among
    /// the acknowledgements.
    pub max_alignment_ms: u64,
    pub max_sync_ms: u64,
    pub max_async_ms: u64,
    pub failure: Option<String>,
}

impl Entry {
    pub fn duration_ms(&self) -> Option<u64> {
        self.end_time_ms
            .map(|end| u64::try_from(end - self.trigger_time_ms).unwrap_or(0))
    }
}

/// A restore the job started from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub id: CheckpointId,
    pub restore_time_ms: i64,
    pub savepoint_path: Option<String>,
}

/// Min, max and sum over completed checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub count: u64,
    pub min: u64,
    pub max: u64,
    pub sum: u64,
}

impl Span {
    pub fn add(&mut self, v: u64) {
        self.min = if self.count == 0 { v } else { self.min.min(v) };
        self.max = self.max.max(v);
        self.sum = self.sum.saturating_add(v);
        self.count += 1;
    }
    pub fn avg(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }
}

/// Everything the REST view needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub completed: u64,
    pub failed: u64,
    pub restored: u64,
    /// Newest first, at most [`HISTORY_LEN`].
    pub history: VecDeque<Entry>,
    pub latest_completed: Option<Entry>,
    pub latest_savepoint: Option<Entry>,
    pub latest_failed: Option<Entry>,
    pub latest_restored: Option<Restored>,
    pub state_bytes: Span,
    pub duration_ms: Span,
    pub alignment_ms: Span,
}

impl Stats {
    /// Checkpoints triggered and not yet completed or failed (0 or 1).
    pub fn in_progress(&self) -> u64 {
        self.history
            .iter()
            .filter(|e| e.status == Status::InProgress)
            .count() as u64
    }

    pub(super) fn started(&mut self, entry: Entry) {
        self.history.push_front(entry);
        self.history.truncate(HISTORY_LEN);
    }

    /// Updates the history entry of `id` (if still in the history).
    pub(super) fn update(&mut self, id: CheckpointId, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.history.iter_mut().find(|e| e.id == id) {
            f(e);
        }
    }

    pub(super) fn finished(&mut self, id: CheckpointId) {
        let Some(entry) = self.history.iter().find(|e| e.id == id).cloned() else {
            return;
        };
        match entry.status {
            Status::Completed => {
                self.completed += 1;
                self.state_bytes.add(entry.state_bytes);
                self.duration_ms.add(entry.duration_ms().unwrap_or(0));
                self.alignment_ms.add(entry.max_alignment_ms);
                if entry.savepoint_path.is_some() {
                    self.latest_savepoint = Some(entry.clone());
                }
                self.latest_completed = Some(entry);
            }
            Status::Failed => {
                self.failed += 1;
                self.latest_failed = Some(entry);
            }
            Status::InProgress => {}
        }
    }
}
