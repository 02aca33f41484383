//! What operators checkpoint: barriers, and state as entries by key group.
//!
//! An operator's state is a set of named states (`"windows"`, `"pending"`,
//! ...), each a map from `(key group, key)` to a value. Keyed operators use
//! the key group of each key; operators without keys (sources, sinks) put
//! per-split or per-subtask entries under a key group they own, so when the
//! parallelism changes each entry goes to the subtask that owns its key group
//! now (Flink's key-group redistribution, applied to everything).
//!
//! At a barrier an operator reports what changed since its last snapshot
//! ([`StateChanges`]); the runtime applies the changes to the subtask's
//! state backend (memory or RocksDB) and snapshots that, so an operator whose
//! state barely changed uploads little (RocksDB incremental checkpoints).

use crate::ids::{CheckpointId, KeyGroup};
use std::collections::HashMap;
use std::ops::Range;

/// Why a barrier was injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierKind {
    /// A periodic checkpoint.
    Checkpoint,
    /// A savepoint: self-contained, kept until the user deletes it.
    Savepoint,
    /// A savepoint after which the job stops: sources produce nothing after
    /// the barrier and end once the savepoint is committed; operators do not
    /// flush at that end (their state is in the savepoint).
    StopWithSavepoint,
}

impl BarrierKind {
    pub fn is_savepoint(self) -> bool {
        !matches!(self, BarrierKind::Checkpoint)
    }
}

/// A checkpoint barrier, as it flows between operators and TaskManagers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Barrier {
    pub checkpoint: CheckpointId,
    /// When the JobManager triggered it (ms since the Unix epoch).
    pub timestamp_ms: i64,
    pub kind: BarrierKind,
}

/// One entry of a named state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    pub key_group: KeyGroup,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// One change reported at a barrier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateChange {
    Put {
        state: &'static str,
        entry: StateEntry,
    },
    Delete {
        state: &'static str,
        key_group: KeyGroup,
        key: Vec<u8>,
    },
}

/// The changes an operator reports at a barrier, applied in order.
#[derive(Debug, Default)]
pub struct StateChanges {
    clear: bool,
    changes: Vec<StateChange>,
}

impl StateChanges {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget every entry stored so far: the changes that follow are the
    /// operator's whole state (for operators that rewrite it at each barrier).
    pub fn clear_all(&mut self) {
        self.clear = true;
        self.changes.clear();
    }

    pub fn put(&mut self, state: &'static str, key_group: KeyGroup, key: Vec<u8>, value: Vec<u8>) {
        self.changes.push(StateChange::Put {
            state,
            entry: StateEntry {
                key_group,
                key,
                value,
            },
        });
    }

    pub fn delete(&mut self, state: &'static str, key_group: KeyGroup, key: Vec<u8>) {
        self.changes.push(StateChange::Delete {
            state,
            key_group,
            key,
        });
    }

    /// Whether the reported changes replace the whole state.
    pub fn is_clear(&self) -> bool {
        self.clear
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        !self.clear && self.changes.is_empty()
    }

    /// `(replaces everything, the changes in order)`.
    pub fn into_parts(self) -> (bool, Vec<StateChange>) {
        (self.clear, self.changes)
    }
}

/// The state a restored subtask starts from: the entries of the key groups
/// it owns, by state name.
#[derive(Debug, Default)]
pub struct RestoredState {
    /// The key groups this subtask owns.
    pub key_groups: Range<u32>,
    /// The checkpoint (or savepoint) restored, when the runtime knows it
    /// (for operators' logs).
    pub checkpoint: Option<CheckpointId>,
    states: HashMap<String, Vec<StateEntry>>,
}

impl RestoredState {
    pub fn new(key_groups: Range<u32>) -> Self {
        Self {
            key_groups,
            checkpoint: None,
            states: HashMap::new(),
        }
    }

    pub fn insert(&mut self, state: &str, entry: StateEntry) {
        self.states
            .entry(state.to_string())
            .or_default()
            .push(entry);
    }

    /// The entries of `state` (empty if none were stored), handed over once.
    pub fn take(&mut self, state: &str) -> Vec<StateEntry> {
        self.states.remove(state).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.states.values().all(Vec::is_empty)
    }

    /// Names of the states not taken yet (an operator that leaves some
    /// behind was restored from a different operator's state).
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.states
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.as_str())
    }
}

/// The key group a subtask uses for its own (not keyed) entries: the first
/// of its range, so after rescaling exactly one new subtask inherits them.
pub fn own_key_group(key_groups: &Range<u32>) -> KeyGroup {
    KeyGroup(key_groups.start)
}
