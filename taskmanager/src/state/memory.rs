//! The memory backend: one hash map per key group and named state. For small
//! state: every snapshot is a full copy, serialized key group by key group
//! into one file, so a restore can take any subset of key groups.
//!
//! Snapshot file (`state.bin`), all integers big-endian:
//! ```text
//! "EDDYMEM1"
//! per non-empty key group, ascending:
//!   u32 key_group, u32 states
//!   per state: u16 name_len, name, u32 entries
//!     per entry: u32 key_len, key, u32 value_len, value, u64 expiry (0 = never)
//! ```

use crate::state::manifest::{BackendKind, FORMAT_VERSION, FileEntry, SubtaskManifest};
use crate::state::storage::CheckpointStorage;
use crate::state::{
    BatchOp, Clock, Error, KeyedStateBackend, PendingSnapshot, Result, SnapshotPaths,
    SnapshotResult, SnapshotTarget, StateBatch, StateDescriptor, StateEntry, StateId, StateIter,
    StateScope, overlapping, ttl,
};
use bytes::Bytes;
use eddy_sdk::ids::{CheckpointId, KeyGroup};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

const MAGIC: &[u8] = b"EDDYMEM1";
const FILE_NAME: &str = "state.bin";

#[derive(Clone, Debug)]
struct Stored {
    value: Vec<u8>,
    expires_at: Option<i64>,
}

/// One key group's entries of one state.
type Group = HashMap<Vec<u8>, Stored>;

#[derive(Debug)]
struct MemState {
    name: String,
    ttl: Option<Duration>,
    /// Indexed by `key_group - scope.key_groups.start`.
    groups: Vec<Group>,
}

/// Keyed state in hash maps; see the module docs.
pub struct MemoryBackend {
    scope: StateScope,
    clock: Arc<dyn Clock>,
    names: HashMap<String, StateId>,
    states: Vec<MemState>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("scope", &self.scope)
            .field("states", &self.names)
            .finish()
    }
}

impl MemoryBackend {
    /// An empty backend for `scope`.
    pub fn new(scope: StateScope, clock: Arc<dyn Clock>) -> Self {
        Self {
            scope,
            clock,
            names: HashMap::new(),
            states: Vec::new(),
        }
    }

    /// A backend for `scope` holding the key groups of its range found in
    /// `manifests` (snapshots of this node from any parallelism; those that
    /// do not overlap the range are skipped without being read).
    pub async fn restore(
        scope: StateScope,
        clock: Arc<dyn Clock>,
        storage: &CheckpointStorage,
        manifests: &[SubtaskManifest],
    ) -> Result<Self> {
        let mut backend = Self::new(scope, clock);
        let range = backend.scope.key_groups.clone();
        for m in overlapping(manifests, &range) {
            check_compatible(m, &backend.scope, BackendKind::Memory)?;
            for f in &m.files {
                let bytes = storage.get_verified(&f.path, f.integrity).await?;
                backend.load(&f.path, &bytes)?;
            }
        }
        Ok(backend)
    }

    fn state_id(&mut self, name: &str) -> StateId {
        if let Some(id) = self.names.get(name) {
            return *id;
        }
        let id = StateId(u32::try_from(self.states.len()).expect("fewer than 2^32 states"));
        let groups = self.scope.key_groups.len();
        self.states.push(MemState {
            name: name.to_string(),
            ttl: None,
            groups: vec![HashMap::new(); groups],
        });
        self.names.insert(name.to_string(), id);
        id
    }

    fn group(&self, state: StateId, kg: KeyGroup) -> Result<&Group> {
        self.scope.check(kg)?;
        let s = self
            .states
            .get(state.0 as usize)
            .ok_or(Error::UnknownState(state.0))?;
        Ok(&s.groups[(kg.0 - self.scope.key_groups.start) as usize])
    }

    fn group_mut(
        &mut self,
        state: StateId,
        kg: KeyGroup,
    ) -> Result<(Option<Duration>, &mut Group)> {
        self.scope.check(kg)?;
        let start = self.scope.key_groups.start;
        let s = self
            .states
            .get_mut(state.0 as usize)
            .ok_or(Error::UnknownState(state.0))?;
        Ok((s.ttl, &mut s.groups[(kg.0 - start) as usize]))
    }

    fn apply(&mut self, op: BatchOp, now: i64) -> Result<()> {
        match op {
            BatchOp::Put {
                state,
                key_group,
                key,
                value,
            } => {
                let (ttl_of, group) = self.group_mut(state, key_group)?;
                let expires_at = ttl::expiry(now, ttl_of);
                group.insert(key, Stored { value, expires_at });
            }
            BatchOp::Delete {
                state,
                key_group,
                key,
            } => {
                self.group_mut(state, key_group)?.1.remove(&key);
            }
        }
        Ok(())
    }

    /// Drops expired entries (done before each snapshot).
    fn purge_expired(&mut self, now: i64) {
        for s in &mut self.states {
            for g in &mut s.groups {
                g.retain(|_, v| !ttl::is_expired(v.expires_at, now));
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (i, kg) in self.scope.key_groups.clone().enumerate() {
            let present: Vec<&MemState> = self
                .states
                .iter()
                .filter(|s| !s.groups[i].is_empty())
                .collect();
            if present.is_empty() {
                continue;
            }
            put_u32(&mut out, kg);
            put_u32(&mut out, present.len() as u32);
            for s in present {
                let name = s.name.as_bytes();
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(name);
                put_u32(&mut out, s.groups[i].len() as u32);
                for (k, v) in &s.groups[i] {
                    put_u32(&mut out, k.len() as u32);
                    out.extend_from_slice(k);
                    put_u32(&mut out, v.value.len() as u32);
                    out.extend_from_slice(&v.value);
                    out.extend_from_slice(&v.expires_at.map_or(0u64, |e| e as u64).to_be_bytes());
                }
            }
        }
        out
    }

    /// Adds the key groups of this backend's range found in a snapshot file.
    fn load(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let malformed = |reason: &str| Error::Malformed {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let mut r = Reader { buf: bytes };
        if r.take(MAGIC.len()) != Some(MAGIC) {
            return Err(malformed("not a memory-backend snapshot"));
        }
        let truncated = || malformed("truncated");
        while !r.buf.is_empty() {
            let kg = r.u32().ok_or_else(truncated)?;
            let keep = self.scope.key_groups.contains(&kg);
            for _ in 0..r.u32().ok_or_else(truncated)? {
                let name_len = usize::from(r.u16().ok_or_else(truncated)?);
                let name = r.take(name_len).ok_or_else(truncated)?;
                let name = std::str::from_utf8(name).map_err(|_| malformed("state name"))?;
                let id = keep.then(|| self.state_id(name));
                for _ in 0..r.u32().ok_or_else(truncated)? {
                    let key = r.bytes().ok_or_else(truncated)?;
                    let value = r.bytes().ok_or_else(truncated)?;
                    let expiry = r.u64().ok_or_else(truncated)?;
                    if let Some(id) = id {
                        let stored = Stored {
                            value: value.to_vec(),
                            expires_at: (expiry != 0).then_some(expiry as i64),
                        };
                        self.group_mut(id, KeyGroup(kg))?
                            .1
                            .insert(key.to_vec(), stored);
                    }
                }
            }
        }
        Ok(())
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// `Ok` when `m` was written by `kind` for the same job layout as `scope`.
pub(crate) fn check_compatible(
    m: &SubtaskManifest,
    scope: &StateScope,
    kind: BackendKind,
) -> Result<()> {
    let reason = if m.format != FORMAT_VERSION {
        Some(format!(
            "manifest format {} is not {FORMAT_VERSION}",
            m.format
        ))
    } else if m.backend != kind {
        Some(format!(
            "written by the {:?} backend, not {kind:?}",
            m.backend
        ))
    } else if m.max_parallelism != scope.max_parallelism {
        Some(format!(
            "max_parallelism {} differs from the job's {}",
            m.max_parallelism, scope.max_parallelism
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Incompatible {
            path: format!("{}/{}", m.node, m.subtask),
            reason,
        }),
        None => Ok(()),
    }
}

impl KeyedStateBackend for MemoryBackend {
    fn scope(&self) -> &StateScope {
        &self.scope
    }

    fn state_names(&self) -> Vec<String> {
        self.states.iter().map(|s| s.name.clone()).collect()
    }

    fn register_state(&mut self, name: &str, descriptor: StateDescriptor) -> Result<StateId> {
        let id = self.state_id(name);
        self.states[id.0 as usize].ttl = descriptor.ttl;
        Ok(id)
    }

    fn get(&self, state: StateId, key_group: KeyGroup, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let now = self.clock.now_ms();
        Ok(self
            .group(state, key_group)?
            .get(key)
            .filter(|v| !ttl::is_expired(v.expires_at, now))
            .map(|v| v.value.clone()))
    }

    fn put(&mut self, state: StateId, key_group: KeyGroup, key: &[u8], value: &[u8]) -> Result<()> {
        let now = self.clock.now_ms();
        let (ttl_of, group) = self.group_mut(state, key_group)?;
        let stored = Stored {
            value: value.to_vec(),
            expires_at: ttl::expiry(now, ttl_of),
        };
        group.insert(key.to_vec(), stored);
        Ok(())
    }

    fn delete(&mut self, state: StateId, key_group: KeyGroup, key: &[u8]) -> Result<()> {
        self.group_mut(state, key_group)?.1.remove(key);
        Ok(())
    }

    fn write(&mut self, batch: StateBatch) -> Result<()> {
        let now = self.clock.now_ms();
        // All or nothing, as with RocksDB's write batches: check first.
        for op in batch.ops() {
            let (BatchOp::Put {
                state, key_group, ..
            }
            | BatchOp::Delete {
                state, key_group, ..
            }) = op;
            self.group(*state, *key_group)?;
        }
        batch
            .into_ops()
            .into_iter()
            .try_for_each(|op| self.apply(op, now))
    }

    fn scan<'a>(
        &'a self,
        state: StateId,
        key_groups: Range<u32>,
        prefix: &'a [u8],
    ) -> Result<StateIter<'a>> {
        let s = self
            .states
            .get(state.0 as usize)
            .ok_or(Error::UnknownState(state.0))?;
        let own = &self.scope.key_groups;
        let range = key_groups.start.max(own.start)..key_groups.end.min(own.end);
        let now = self.clock.now_ms();
        let iter = range.flat_map(move |kg| {
            s.groups[(kg - own.start) as usize]
                .iter()
                .filter(move |(k, v)| k.starts_with(prefix) && !ttl::is_expired(v.expires_at, now))
                .map(move |(k, v)| {
                    Ok(StateEntry {
                        key_group: KeyGroup(kg),
                        key: k.clone(),
                        value: v.value.clone(),
                    })
                })
        });
        Ok(Box::new(iter))
    }

    fn snapshot(
        &mut self,
        storage: Arc<CheckpointStorage>,
        target: SnapshotTarget,
    ) -> Result<PendingSnapshot> {
        self.purge_expired(self.clock.now_ms());
        let bytes = Bytes::from(self.encode());
        let paths = SnapshotPaths::new(&storage, &self.scope, target);
        let (path, manifest_path, checkpoint) =
            (paths.file(FILE_NAME), paths.manifest(), paths.checkpoint());
        let scope = self.scope.clone();
        Ok(PendingSnapshot::new(Box::pin(async move {
            let integrity = storage.put_bytes(&path, bytes).await?;
            let manifest = SubtaskManifest {
                format: FORMAT_VERSION,
                backend: BackendKind::Memory,
                job: scope.job,
                node: scope.node,
                subtask: scope.subtask,
                checkpoint,
                max_parallelism: scope.max_parallelism,
                key_group_start: scope.key_groups.start,
                key_group_end: scope.key_groups.end,
                files: vec![FileEntry {
                    path,
                    local_name: FILE_NAME.to_string(),
                    integrity,
                    shared: false,
                }],
            };
            storage.write_manifest(&manifest_path, &manifest).await?;
            Ok::<_, Error>(SnapshotResult {
                manifest_path,
                uploaded_bytes: integrity.size,
                state_bytes: integrity.size,
                manifest,
            })
        })))
    }

    fn notify_checkpoint_complete(&mut self, _checkpoint: CheckpointId) {
        // Every snapshot is a full copy: nothing to carry over.
    }
}
