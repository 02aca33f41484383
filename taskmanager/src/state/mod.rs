//! Keyed state and its checkpoints.
//!
//! Operators keep opaque byte keys and values under *named states* (one per
//! operator node and purpose, e.g. `"window-acc"`), always addressed together
//! with the key's [`KeyGroup`] so state can be split and merged by key-group
//! range when a job is rescaled. Two backends implement [`KeyedStateBackend`]:
//! [`memory`] (hash maps, full snapshots) and [`rocksdb`] (one instance per
//! keyed operator subtask on the slot's disk, incremental snapshots).
//!
//! [`storage`] is the only code that talks to the object store: it checksums
//! every file, writes each subtask's [`manifest::SubtaskManifest`] last, and
//! reports a corrupt or missing file as a typed error naming its path.
//!
//! A snapshot has a synchronous part ([`KeyedStateBackend::snapshot`], which
//! captures a consistent view while the operator waits) and an asynchronous
//! part ([`PendingSnapshot`], a `'static` future the caller spawns on a tokio
//! runtime while processing goes on).
//!
//! This module never decides *when* to snapshot, which checkpoints to keep or
//! what goes into a checkpoint's `_metadata`: the checkpoint coordinator does.

pub mod clock;
pub mod memory;
pub mod rocksdb;
mod ttl;

pub use eddy_sdk::storage::{self, manifest};

#[cfg(test)]
mod tests;

use crate::state::manifest::{BackendKind, SubtaskManifest};
use crate::state::storage::CheckpointStorage;
use eddy_sdk::checkpoint_layout::SavepointLayout;
use eddy_sdk::ids::{CheckpointId, JobId, KeyGroup, NodeId, SubtaskIndex};
use futures::future::BoxFuture;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

pub use clock::{Clock, ManualClock, SystemClock};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("rocksdb at {path} failed")]
    RocksDb {
        path: String,
        #[source]
        source: ::rocksdb::Error,
    },
    #[error("local state file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no state with id {0} is registered")]
    UnknownState(u32),
    #[error("key group {key_group} is outside this subtask's range {range:?}")]
    KeyGroupOutOfRange { key_group: u32, range: Range<u32> },
    #[error("snapshot file {path} is malformed: {reason}")]
    Malformed { path: String, reason: String },
    #[error("snapshot {path} cannot be restored here: {reason}")]
    Incompatible { path: String, reason: String },
}

impl Error {
    /// Whether the stored snapshot itself is unusable (corrupt, missing or
    /// malformed files): the caller should fall back to an earlier one.
    pub fn is_damaged_snapshot(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_damaged_snapshot(),
            Error::Malformed { .. } => true,
            _ => false,
        }
    }
}

/// A named state registered with a backend; cheap to copy, valid only for the
/// backend that returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateId(pub u32);

/// Who owns a backend: the keyed operator subtask whose state it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateScope {
    pub job: JobId,
    pub node: NodeId,
    pub subtask: SubtaskIndex,
    /// The job's number of key groups (fixed for the job's lifetime).
    pub max_parallelism: u32,
    /// The key groups this subtask owns (see `eddy_sdk::keygroup::key_group_range`).
    pub key_groups: Range<u32>,
}

impl StateScope {
    /// `Ok` when `kg` belongs to this subtask.
    pub fn check(&self, kg: KeyGroup) -> Result<()> {
        if self.key_groups.contains(&kg.0) {
            Ok(())
        } else {
            Err(Error::KeyGroupOutOfRange {
                key_group: kg.0,
                range: self.key_groups.clone(),
            })
        }
    }
}

/// How a named state is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDescriptor {
    /// Entries expire this long after their last write: they are never
    /// returned after that and are removed during snapshots (memory) or
    /// compactions (RocksDB). The expiry is stored with the entry, so a new
    /// TTL applies to entries written after it changed.
    pub ttl: Option<Duration>,
}

/// One entry returned by [`KeyedStateBackend::scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    pub key_group: KeyGroup,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A scan's entries, lazily read.
pub type StateIter<'a> = Box<dyn Iterator<Item = Result<StateEntry>> + 'a>;

/// One write of a [`StateBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        state: StateId,
        key_group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        state: StateId,
        key_group: KeyGroup,
        key: Vec<u8>,
    },
}

/// Many writes applied at once, in order (operators are batch-at-a-time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateBatch {
    ops: Vec<BatchOp>,
}

impl StateBatch {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ops: Vec::with_capacity(n),
        }
    }

    pub fn put(&mut self, state: StateId, key_group: KeyGroup, key: &[u8], value: &[u8]) {
        self.ops.push(BatchOp::Put {
            state,
            key_group,
            key: key.to_vec(),
            value: value.to_vec(),
        });
    }

    pub fn delete(&mut self, state: StateId, key_group: KeyGroup, key: &[u8]) {
        self.ops.push(BatchOp::Delete {
            state,
            key_group,
            key: key.to_vec(),
        });
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// Where a snapshot goes.
#[derive(Clone, Debug)]
pub enum SnapshotTarget {
    /// A checkpoint of the scope's job: files under
    /// `<root>/<job>/chk-<n>/<node>/<subtask>`, and RocksDB SST files in the
    /// job's shared area, reused by later checkpoints.
    Checkpoint(CheckpointId),
    /// A self-contained savepoint: every file is written inside its directory.
    Savepoint(SavepointLayout),
}

/// Where one snapshot's files and manifest go, for either kind of target.
pub(crate) struct SnapshotPaths {
    layout: eddy_sdk::checkpoint_layout::CheckpointLayout,
    scope: StateScope,
    target: SnapshotTarget,
}

impl SnapshotPaths {
    pub(crate) fn new(
        storage: &CheckpointStorage,
        scope: &StateScope,
        target: SnapshotTarget,
    ) -> Self {
        Self {
            layout: storage.layout().clone(),
            scope: scope.clone(),
            target,
        }
    }

    /// A file private to this snapshot.
    pub(crate) fn file(&self, name: &str) -> String {
        let s = &self.scope;
        match &self.target {
            SnapshotTarget::Checkpoint(chk) => self
                .layout
                .subtask_file(&s.job, *chk, &s.node, s.subtask, name),
            SnapshotTarget::Savepoint(sp) => sp.subtask_file(&s.node, s.subtask, name),
        }
    }

    pub(crate) fn manifest(&self) -> String {
        let s = &self.scope;
        match &self.target {
            SnapshotTarget::Checkpoint(chk) => {
                self.layout.manifest(&s.job, *chk, &s.node, s.subtask)
            }
            SnapshotTarget::Savepoint(sp) => sp.manifest(&s.node, s.subtask),
        }
    }

    /// `None` for a savepoint.
    pub(crate) fn checkpoint(&self) -> Option<CheckpointId> {
        match &self.target {
            SnapshotTarget::Checkpoint(chk) => Some(*chk),
            SnapshotTarget::Savepoint(_) => None,
        }
    }
}

/// What a finished snapshot wrote.
#[derive(Clone, Debug)]
pub struct SnapshotResult {
    /// Where the manifest was written; the coordinator records it in `_metadata`.
    pub manifest_path: String,
    pub manifest: SubtaskManifest,
    /// Bytes uploaded by this snapshot (new files only, for an incremental one).
    pub uploaded_bytes: u64,
    /// Bytes of every file the snapshot needs, uploaded now or before.
    pub state_bytes: u64,
}

/// The asynchronous part of a snapshot: uploads what the synchronous part
/// captured. It borrows nothing from the backend, so the caller can spawn it.
pub struct PendingSnapshot {
    future: BoxFuture<'static, Result<SnapshotResult>>,
}

impl PendingSnapshot {
    fn new(future: BoxFuture<'static, Result<SnapshotResult>>) -> Self {
        Self { future }
    }

    /// The upload; spawn it (`tokio::spawn(pending.upload())`) or await it.
    pub fn upload(self) -> BoxFuture<'static, Result<SnapshotResult>> {
        self.future
    }
}

impl std::fmt::Debug for PendingSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingSnapshot")
    }
}

/// Keyed state of one operator subtask. Calls come from the subtask's thread;
/// `now` for TTL comes from the backend's [`Clock`].
pub trait KeyedStateBackend: Send + std::fmt::Debug {
    fn scope(&self) -> &StateScope;

    /// The names of every registered state (after a restore: every state
    /// the snapshot held).
    fn state_names(&self) -> Vec<String>;

    /// Registers (or finds, after a restore) the state called `name`.
    fn register_state(&mut self, name: &str, descriptor: StateDescriptor) -> Result<StateId>;

    fn get(&self, state: StateId, key_group: KeyGroup, key: &[u8]) -> Result<Option<Vec<u8>>>;

    fn put(&mut self, state: StateId, key_group: KeyGroup, key: &[u8], value: &[u8]) -> Result<()>;

    fn delete(&mut self, state: StateId, key_group: KeyGroup, key: &[u8]) -> Result<()>;

    /// Applies every operation of `batch`, in order.
    fn write(&mut self, batch: StateBatch) -> Result<()>;

    /// The live entries of `state` in `key_groups` (clipped to this subtask's
    /// range) whose key starts with `prefix` (empty: all), in key-group order.
    /// Within a key group, RocksDB returns keys in byte order and the memory
    /// backend in no particular order.
    fn scan<'a>(
        &'a self,
        state: StateId,
        key_groups: Range<u32>,
        prefix: &'a [u8],
    ) -> Result<StateIter<'a>>;

    /// The synchronous part of a snapshot: captures a consistent view of all
    /// states and returns the upload to run asynchronously.
    fn snapshot(
        &mut self,
        storage: Arc<CheckpointStorage>,
        target: SnapshotTarget,
    ) -> Result<PendingSnapshot>;

    /// The checkpoint was committed: its files become the base that later
    /// incremental snapshots reuse.
    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId);
}

/// An empty backend of `kind` for `scope` (RocksDB instances go under `slot`).
pub fn open(
    kind: BackendKind,
    slot: &rocksdb::RocksDbSlot,
    scope: StateScope,
    clock: Arc<dyn Clock>,
) -> Result<Box<dyn KeyedStateBackend>> {
    Ok(match kind {
        BackendKind::Memory => Box::new(memory::MemoryBackend::new(scope, clock)),
        BackendKind::Rocksdb => Box::new(slot.open(scope, clock)?),
    })
}

/// A backend of `kind` for `scope`, holding the key groups of its range
/// found in `manifests` (one node's snapshots from any parallelism, e.g. all
/// of that node's manifests in a checkpoint's or savepoint's `_metadata`).
pub async fn restore(
    kind: BackendKind,
    slot: &rocksdb::RocksDbSlot,
    scope: StateScope,
    clock: Arc<dyn Clock>,
    storage: &CheckpointStorage,
    manifests: &[SubtaskManifest],
) -> Result<Box<dyn KeyedStateBackend>> {
    Ok(match kind {
        BackendKind::Memory => {
            Box::new(memory::MemoryBackend::restore(scope, clock, storage, manifests).await?)
        }
        BackendKind::Rocksdb => Box::new(slot.restore(scope, clock, storage, manifests).await?),
    })
}

/// The manifests among `manifests` that hold key groups in `range`: what a
/// subtask owning `range` restores from after rescaling.
pub fn overlapping<'a>(
    manifests: &'a [SubtaskManifest],
    range: &'a Range<u32>,
) -> impl Iterator<Item = &'a SubtaskManifest> + 'a {
    manifests.iter().filter(move |m| {
        let r = m.key_group_range();
        r.start < range.end && range.start < r.end
    })
}
