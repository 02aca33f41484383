//! The checkpoint side of one subtask: a state backend per stateful operator
//! of its chain, the snapshot taken when a barrier passes, the restore before
//! the first element, and what is reported to the JobManager.
//!
//! At a barrier each operator reports what changed in its state
//! (`StateChanges`); [`TaskState::snapshot`] applies the changes to the
//! operator's backend and takes the backend's synchronous snapshot while the
//! subtask waits, then returns the upload as a future the subtask spawns, so
//! processing goes on while files are written (the asynchronous part).

use crate::state::manifest::{BackendKind, SubtaskManifest};
use crate::state::rocksdb::RocksDbSlot;
use crate::state::storage::CheckpointStorage;
use crate::state::{
    self, Clock, KeyedStateBackend, SnapshotTarget, StateDescriptor, StateId, StateScope,
};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{CheckpointId, JobId, NodeId, SubtaskIndex};
use eddy_sdk::operator::{Barrier, OperatorError, RestoredState, StateChanges, StateEntry};
use eddy_sdk::operator_state::StateChange;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the TaskManager tells a running subtask about checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Source subtasks inject this barrier (others ignore it).
    Trigger(Barrier),
    /// The JobManager committed this checkpoint; `job_final` when it was
    /// triggered after every source of the job had ended its input (sources
    /// waiting for their final checkpoint end at it).
    Complete { id: CheckpointId, job_final: bool },
    /// The JobManager gave this checkpoint up.
    Abort(CheckpointId),
}

/// One operator's finished snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub node: NodeId,
    pub manifest_path: String,
    pub state_bytes: u64,
    pub uploaded_bytes: u64,
}

/// How long each part of a subtask's snapshot took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub alignment: Duration,
    pub sync: Duration,
    pub upload: Duration,
}

/// A subtask's answer to a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    Ack {
        checkpoint: CheckpointId,
        snapshots: Vec<NodeSnapshot>,
        timings: Timings,
    },
    Decline {
        checkpoint: CheckpointId,
        reason: String,
    },
    /// The source read all its input and waits for the job's final
    /// checkpoint: the JobManager should hear it now, not at the next
    /// heartbeat, so that it triggers that checkpoint at once.
    InputEnded,
}

/// Where a job's state lives on this TaskManager and in object storage.
#[derive(Clone)]
pub struct StateConfig {
    pub backend: BackendKind,
    pub storage: Arc<CheckpointStorage>,
    /// The RocksDB side of the subtask's slot.
    pub slot: Arc<RocksDbSlot>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateConfig")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// The checkpoint or savepoint a subtask starts from: every operator
/// snapshot of it (all operators, all subtasks of whatever parallelism it
/// was taken at).
#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub checkpoint: CheckpointId,
    pub storage: Arc<CheckpointStorage>,
    /// `(node, manifest path)`.
    pub snapshots: Vec<(NodeId, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state of operator `{node}`")]
    State {
        node: NodeId,
        #[source]
        source: Box<state::Error>,
    },
    #[error("restoring operator `{node}` from checkpoint {checkpoint}")]
    Restore {
        node: NodeId,
        checkpoint: CheckpointId,
        #[source]
        source: Box<state::Error>,
    },
}

impl Error {
    pub fn class(&self) -> FailureClass {
        FailureClass::Infrastructure
    }

    /// The checkpoint restored from, when it is damaged (corrupt or missing
    /// files): the JobManager falls back to an earlier one.
    pub fn damaged_checkpoint(&self) -> Option<CheckpointId> {
        match self {
            Error::Restore {
                source, checkpoint, ..
            } if source.is_damaged_snapshot() => Some(*checkpoint),
            _ => None,
        }
    }
}

impl From<Error> for OperatorError {
    fn from(e: Error) -> Self {
        let class = e.class();
        OperatorError::new(class, e.to_string()).with_source(e)
    }
}

/// One stateful operator's backend and the ids of its named states.
struct NodeState {
    node: NodeId,
    backend: Box<dyn KeyedStateBackend>,
    ids: HashMap<String, StateId>,
}

impl NodeState {
    fn state_id(&mut self, name: &str) -> Result<StateId, state::Error> {
        if let Some(id) = self.ids.get(name) {
            return Ok(*id);
        }
        let id = self
            .backend
            .register_state(name, StateDescriptor::default())?;
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    fn apply(&mut self, changes: StateChanges) -> Result<(), state::Error> {
        let (clear, changes) = changes.into_parts();
        if clear {
            self.clear()?;
        }
        let mut batch = state::StateBatch::with_capacity(changes.len());
        for change in changes {
            match change {
                StateChange::Put { state, entry } => {
                    let id = self.state_id(state)?;
                    batch.put(id, entry.key_group, &entry.key, &entry.value);
                }
                StateChange::Delete {
                    state,
                    key_group,
                    key,
                } => {
                    let id = self.state_id(state)?;
                    batch.delete(id, key_group, &key);
                }
            }
        }
        if !batch.is_empty() {
            self.backend.write(batch)?;
        }
        Ok(())
    }

    /// Deletes every entry of every state.
    fn clear(&mut self) -> Result<(), state::Error> {
        let range = self.backend.scope().key_groups.clone();
        let mut batch = state::StateBatch::default();
        for name in self.backend.state_names() {
            let id = self.state_id(&name)?;
            for entry in self.backend.scan(id, range.clone(), &[])? {
                let entry = entry?;
                batch.delete(id, entry.key_group, &entry.key);
            }
        }
        if !batch.is_empty() {
            self.backend.write(batch)?;
        }
        Ok(())
    }

    /// Every entry, by state name.
    fn read_all(&mut self) -> Result<RestoredState, state::Error> {
        let range = self.backend.scope().key_groups.clone();
        let mut restored = RestoredState::new(range.clone());
        for name in self.backend.state_names() {
            let id = self.state_id(&name)?;
            for entry in self.backend.scan(id, range.clone(), &[])? {
                let entry = entry?;
                restored.insert(
                    &name,
                    StateEntry {
                        key_group: entry.key_group,
                        key: entry.key,
                        value: entry.value,
                    },
                );
            }
        }
        Ok(restored)
    }
}

/// The state of every stateful operator of one subtask.
pub struct TaskState {
    config: StateConfig,
    nodes: Vec<NodeState>,
}

impl std::fmt::Debug for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskState")
            .field("config", &self.config)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.node).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Who a subtask is, for its state scopes.
#[derive(Clone, Debug)]
pub struct SubtaskScope {
    pub job: JobId,
    pub subtask: u32,
    pub max_parallelism: u32,
    pub key_groups: Range<u32>,
}

impl SubtaskScope {
    fn of(&self, node: &NodeId) -> StateScope {
        StateScope {
            job: self.job.clone(),
            node: node.clone(),
            subtask: SubtaskIndex(self.subtask),
            max_parallelism: self.max_parallelism,
            key_groups: self.key_groups.clone(),
        }
    }
}

impl TaskState {
    /// Empty backends for `nodes`, or backends restored from `restore`.
    /// Returns the state each node's operator starts from (empty when there
    /// is nothing to restore).
    pub async fn open(
        config: StateConfig,
        scope: &SubtaskScope,
        nodes: &[NodeId],
        restore: Option<&RestorePlan>,
    ) -> Result<(Self, Vec<RestoredState>), Error> {
        let mut states = Vec::with_capacity(nodes.len());
        let mut restored = Vec::with_capacity(nodes.len());
        for node in nodes {
            let state_scope = scope.of(node);
            let backend = match restore {
                Some(plan) => restore_node(&config, plan, state_scope, node).await?,
                None => state::open(
                    config.backend,
                    &config.slot,
                    state_scope,
                    config.clock.clone(),
                )
                .map_err(|source| Error::State {
                    node: node.clone(),
                    source: Box::new(source),
                })?,
            };
            let mut n = NodeState {
                node: node.clone(),
                backend,
                ids: HashMap::new(),
            };
            let r = if let Some(plan) = restore {
                let mut r = n.read_all().map_err(|source| Error::State {
                    node: node.clone(),
                    source: Box::new(source),
                })?;
                r.checkpoint = Some(plan.checkpoint);
                r
            } else {
                RestoredState::new(scope.key_groups.clone())
            };
            restored.push(r);
            states.push(n);
        }
        Ok((
            TaskState {
                config,
                nodes: states,
            },
            restored,
        ))
    }

    /// The synchronous part of the snapshot at `barrier`: applies each
    /// node's reported changes (in `nodes` order) and captures every
    /// backend. The returned future uploads and yields the node snapshots.
    pub fn snapshot(
        &mut self,
        barrier: &Barrier,
        changes: Vec<StateChanges>,
    ) -> Result<BoxFuture<'static, Result<Vec<NodeSnapshot>, Error>>, Error> {
        debug_assert_eq!(changes.len(), self.nodes.len());
        let mut uploads = Vec::with_capacity(self.nodes.len());
        for (n, changes) in self.nodes.iter_mut().zip(changes) {
            let node = n.node.clone();
            n.apply(changes).map_err(|source| Error::State {
                node: node.clone(),
                source: Box::new(source),
            })?;
            let pending = n
                .backend
                .snapshot(
                    self.config.storage.clone(),
                    SnapshotTarget::Checkpoint(barrier.checkpoint),
                )
                .map_err(|source| Error::State {
                    node: node.clone(),
                    source: Box::new(source),
                })?;
            uploads.push((node, pending.upload()));
        }
        Ok(Box::pin(async move {
            let mut out = Vec::with_capacity(uploads.len());
            for (node, upload) in uploads {
                let r = upload.await.map_err(|source| Error::State {
                    node: node.clone(),
                    source: Box::new(source),
                })?;
                out.push(NodeSnapshot {
                    node,
                    manifest_path: r.manifest_path,
                    state_bytes: r.state_bytes,
                    uploaded_bytes: r.uploaded_bytes,
                });
            }
            Ok(out)
        }))
    }

    /// Checkpoint `id` was committed: its files are the base of the next
    /// incremental snapshots.
    pub fn complete(&mut self, id: CheckpointId) {
        for n in &mut self.nodes {
            n.backend.notify_checkpoint_complete(id);
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// A backend for `scope` holding the key groups it owns from every snapshot
/// of `node` in `plan` (none: the operator is new, it starts empty).
async fn restore_node(
    config: &StateConfig,
    plan: &RestorePlan,
    scope: StateScope,
    node: &NodeId,
) -> Result<Box<dyn KeyedStateBackend>, Error> {
    let checkpoint = plan.checkpoint;
    let err = |source| Error::Restore {
        node: node.clone(),
        checkpoint,
        source: Box::new(source),
    };
    let paths: Vec<String> = plan
        .snapshots
        .iter()
        .filter(|(n, _)| n == node)
        .map(|(_, p)| p.clone())
        .collect();
    let mut manifests: Vec<SubtaskManifest> = Vec::with_capacity(paths.len());
    for path in paths {
        let m = match plan.storage.read_manifest(&path).await {
            Ok(m) => m,
            Err(e) => return Err(err(e.into())),
        };
        if &m.node != node {
            return Err(err(state::Error::Malformed {
                reason: format!("manifest of node `{}`, expected `{node}`", m.node),
                path,
            }));
        }
        manifests.push(m);
    }
    let range = scope.key_groups.clone();
    let mine: Vec<SubtaskManifest> = state::overlapping(&manifests, &range).cloned().collect();
    if mine.is_empty() {
        return state::open(config.backend, &config.slot, scope, config.clock.clone()).map_err(err);
    }
    let started = Instant::now();
    let backend = state::restore(
        config.backend,
        &config.slot,
        scope,
        config.clock.clone(),
        &plan.storage,
        &mine,
    )
    .await
    .map_err(err)?;
    tracing::info!(
        node = %node,
        checkpoint_id = plan.checkpoint.0,
        snapshots = mine.len(),
        key_groups = ?range,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "operator state restored"
    );
    Ok(backend)
}
