//! The RocksDB backend: state larger than memory, incremental checkpoints.
//!
//! A [`RocksDbSlot`] is created once per slot with the slot's directory and
//! memory budget; it owns the block cache and write-buffer manager that all
//! of the slot's instances share, so the slot's state memory is bounded as a
//! whole. Each keyed operator subtask of the slot gets its own instance
//! ([`RocksDbBackend`]) under `<slot dir>/<job>/<node>-<subtask>-<token>`:
//! a RocksDB checkpoint is of a whole instance, and a snapshot is stored per
//! `<node>/<subtask>`, so one instance per keyed operator subtask keeps the
//! snapshot unit and the restore unit the same (see ADR 0006).
//!
//! Layout inside an instance: one column family per named state; every key is
//! the key group as 2 big-endian bytes followed by the operator's key, so a
//! key-group range is one contiguous key range (clipped with `delete_range`,
//! scanned with one seek per group). Values carry an 8-byte expiry header
//! (`state::ttl`).

mod options;
mod restore;
mod snapshot;

#[cfg(test)]
mod tests;

pub use options::MemorySplit;

use crate::state::storage::CheckpointStorage;
use crate::state::{
    BatchOp, Clock, Error, KeyedStateBackend, PendingSnapshot, Result, SnapshotTarget, StateBatch,
    StateDescriptor, StateEntry, StateId, StateIter, StateScope, ttl,
};
use eddy_sdk::ids::{CheckpointId, KeyGroup};
use rocksdb::{DB, Options, WriteBatch, WriteOptions};
use std::hash::BuildHasher;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The RocksDB side of one slot: its directory and shared memory.
pub struct RocksDbSlot {
    dir: PathBuf,
    split: MemorySplit,
    /// Carries the shared cache and write-buffer manager; cloned per instance
    /// and column family. In a mutex only because `Options` is not `Sync`.
    template: Mutex<Options>,
}

impl std::fmt::Debug for RocksDbSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbSlot")
            .field("dir", &self.dir)
            .field("split", &self.split)
            .finish()
    }
}

impl RocksDbSlot {
    /// The slot whose instances live under `dir` and share `memory_budget` bytes.
    pub fn new(dir: impl Into<PathBuf>, memory_budget: u64) -> Self {
        let split = MemorySplit::from_budget(memory_budget);
        Self {
            dir: dir.into(),
            split,
            template: Mutex::new(options::slot_template(split)),
        }
    }

    /// Removes every instance directory under the slot's directory: those
    /// left by an earlier process (a killed TaskManager never dropped its
    /// instances). Call it before opening any instance of this slot.
    pub fn remove_leftovers(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                path: self.dir.display().to_string(),
                source,
            }),
        }
    }

    pub fn memory_split(&self) -> MemorySplit {
        self.split
    }

    fn template(&self) -> Options {
        self.template
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A new, empty instance for `scope`.
    pub fn open(&self, scope: StateScope, clock: Arc<dyn Clock>) -> Result<RocksDbBackend> {
        let dir = self.instance_dir(&scope);
        RocksDbBackend::open(self.template(), dir, scope, clock)
    }

    fn instance_dir(&self, scope: &StateScope) -> InstanceDir {
        let token = unique_token();
        let root = self
            .dir
            .join(scope.job.as_str())
            .join(format!("{}-{}-{token}", scope.node, scope.subtask));
        InstanceDir { root, token }
    }
}

/// A process-unique token: names an instance's directory and prefixes its
/// shared files, so files of different instances never collide.
fn unique_token() -> String {
    // `RandomState` is seeded randomly per process and per call.
    let v = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{v:016x}")
}

#[derive(Clone, Debug)]
struct InstanceDir {
    root: PathBuf,
    token: String,
}

impl InstanceDir {
    fn db(&self) -> PathBuf {
        self.root.join("db")
    }
    fn snapshot(&self, n: u64) -> PathBuf {
        self.root.join(format!("snapshot-{n}"))
    }
    fn staging(&self, n: usize) -> PathBuf {
        self.root.join(format!("restore-{n}"))
    }
}

/// The first key of key group `kg` (and the end of group `kg - 1`).
fn group_prefix(kg: u32) -> [u8; 2] {
    debug_assert!(
        kg <= u32::from(u16::MAX),
        "max_parallelism is at most 32768"
    );
    (kg as u16).to_be_bytes()
}

/// A key past every key of every group.
const END_OF_GROUPS: [u8; 3] = [0xff, 0xff, 0xff];

fn db_key(kg: KeyGroup, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&group_prefix(kg.0));
    k.extend_from_slice(key);
    k
}

fn rocks_err(path: &Path) -> impl FnOnce(rocksdb::Error) -> Error + '_ {
    move |source| Error::RocksDb {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Clone, Debug)]
struct StateMeta {
    name: String,
    ttl: Option<Duration>,
}

/// One keyed operator subtask's state in its own RocksDB instance.
pub struct RocksDbBackend {
    scope: StateScope,
    clock: Arc<dyn Clock>,
    template: Options,
    dir: InstanceDir,
    db: DB,
    states: Vec<StateMeta>,
    write_opts: WriteOptions,
    uploads: Arc<Mutex<snapshot::Uploads>>,
    snapshots_taken: u64,
    /// Declared last so it runs after `db` is closed: removes the directory.
    _cleanup: RemoveOnDrop,
}

impl std::fmt::Debug for RocksDbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbBackend")
            .field("scope", &self.scope)
            .field("dir", &self.dir.root)
            .finish()
    }
}

impl RocksDbBackend {
    fn open(
        template: Options,
        dir: InstanceDir,
        scope: StateScope,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let db_path = dir.db();
        std::fs::create_dir_all(&db_path).map_err(|source| Error::Io {
            path: db_path.display().to_string(),
            source,
        })?;
        let cleanup = RemoveOnDrop(dir.root.clone());
        let (db, names) = open_db(&template, &db_path, &clock)?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        Ok(Self {
            scope,
            clock,
            template,
            dir,
            db,
            // States found in a restored instance are known by name; the
            // operator's `register_state` then sets their TTL.
            states: names
                .into_iter()
                .map(|name| StateMeta { name, ttl: None })
                .collect(),
            write_opts,
            uploads: Arc::default(),
            snapshots_taken: 0,
            _cleanup: cleanup,
        })
    }

    fn db_path(&self) -> PathBuf {
        self.dir.db()
    }

    fn meta(&self, state: StateId) -> Result<&StateMeta> {
        self.states
            .get(state.0 as usize)
            .ok_or(Error::UnknownState(state.0))
    }

    fn cf(&self, state: StateId) -> Result<&rocksdb::ColumnFamily> {
        let name = &self.meta(state)?.name;
        self.db.cf_handle(name).ok_or(Error::UnknownState(state.0))
    }

    fn add_to_batch(&self, batch: &mut WriteBatch, op: &BatchOp, now: i64) -> Result<()> {
        match op {
            BatchOp::Put {
                state,
                key_group,
                key,
                value,
            } => {
                self.scope.check(*key_group)?;
                let expires_at = ttl::expiry(now, self.meta(*state)?.ttl);
                batch.put_cf(
                    self.cf(*state)?,
                    db_key(*key_group, key),
                    ttl::encode(expires_at, value),
                );
            }
            BatchOp::Delete {
                state,
                key_group,
                key,
            } => {
                self.scope.check(*key_group)?;
                batch.delete_cf(self.cf(*state)?, db_key(*key_group, key));
            }
        }
        Ok(())
    }

    /// Compacts every state fully (tests use it to make old SST files obsolete).
    #[cfg(test)]
    fn compact_all(&self) {
        for s in &self.states {
            let cf = self
                .db
                .cf_handle(&s.name)
                .expect("registered state has a column family");
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
    }
}

/// Removes an instance's directory when the instance is dropped: its files
/// are worthless then, since a restart restores from a checkpoint. Uploads
/// still in flight read hard links inside it and fail cleanly.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::debug!(dir = %self.0.display(), error = %e, "cannot remove state instance");
        }
    }
}

/// Opens (or creates) the DB at `path` with every column family it has;
/// returns it with the names of its states.
fn open_db(template: &Options, path: &Path, clock: &Arc<dyn Clock>) -> Result<(DB, Vec<String>)> {
    let names = existing_states(path)?;
    let cfs = names.iter().map(|n| {
        rocksdb::ColumnFamilyDescriptor::new(n, options::cf_options(template, clock.clone()))
    });
    let db = DB::open_cf_descriptors(&options::db_options(template), path, cfs)
        .map_err(rocks_err(path))?;
    Ok((db, names))
}

/// The named states (column families other than `default`) of the DB at `path`.
fn existing_states(path: &Path) -> Result<Vec<String>> {
    if !path.join("CURRENT").exists() {
        return Ok(Vec::new());
    }
    let names = DB::list_cf(&Options::default(), path).map_err(rocks_err(path))?;
    Ok(names
        .into_iter()
        .filter(|n| n != rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
        .collect())
}

impl KeyedStateBackend for RocksDbBackend {
    fn scope(&self) -> &StateScope {
        &self.scope
    }

    fn state_names(&self) -> Vec<String> {
        self.states.iter().map(|s| s.name.clone()).collect()
    }

    fn register_state(&mut self, name: &str, descriptor: StateDescriptor) -> Result<StateId> {
        if let Some(i) = self.states.iter().position(|s| s.name == name) {
            self.states[i].ttl = descriptor.ttl;
            return Ok(StateId(i as u32));
        }
        let opts = options::cf_options(&self.template, self.clock.clone());
        self.db
            .create_cf(name, &opts)
            .map_err(rocks_err(&self.dir.db()))?;
        self.states.push(StateMeta {
            name: name.to_string(),
            ttl: descriptor.ttl,
        });
        Ok(StateId(
            u32::try_from(self.states.len() - 1).expect("fewer than 2^32 states"),
        ))
    }

    fn get(&self, state: StateId, key_group: KeyGroup, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.scope.check(key_group)?;
        let stored = self
            .db
            .get_pinned_cf(self.cf(state)?, db_key(key_group, key))
            .map_err(rocks_err(&self.db_path()))?;
        let now = self.clock.now_ms();
        Ok(stored.and_then(|s| match ttl::decode(&s) {
            Some((expires_at, value)) if !ttl::is_expired(expires_at, now) => Some(value.to_vec()),
            _ => None,
        }))
    }

    fn put(&mut self, state: StateId, key_group: KeyGroup, key: &[u8], value: &[u8]) -> Result<()> {
        self.scope.check(key_group)?;
        let expires_at = ttl::expiry(self.clock.now_ms(), self.meta(state)?.ttl);
        self.db
            .put_cf_opt(
                self.cf(state)?,
                db_key(key_group, key),
                ttl::encode(expires_at, value),
                &self.write_opts,
            )
            .map_err(rocks_err(&self.db_path()))
    }

    fn delete(&mut self, state: StateId, key_group: KeyGroup, key: &[u8]) -> Result<()> {
        self.scope.check(key_group)?;
        self.db
            .delete_cf_opt(self.cf(state)?, db_key(key_group, key), &self.write_opts)
            .map_err(rocks_err(&self.db_path()))
    }

    fn write(&mut self, batch: StateBatch) -> Result<()> {
        let now = self.clock.now_ms();
        let mut wb = WriteBatch::default();
        for op in &batch.into_ops() {
            self.add_to_batch(&mut wb, op, now)?;
        }
        self.db
            .write_opt(wb, &self.write_opts)
            .map_err(rocks_err(&self.db_path()))
    }

    fn scan<'a>(
        &'a self,
        state: StateId,
        key_groups: Range<u32>,
        prefix: &'a [u8],
    ) -> Result<StateIter<'a>> {
        let own = &self.scope.key_groups;
        let groups = key_groups.start.max(own.start)..key_groups.end.min(own.end);
        Ok(Box::new(Scan {
            raw: self.db.raw_iterator_cf(self.cf(state)?),
            groups,
            prefix,
            seek: None,
            now: self.clock.now_ms(),
            path: self.db_path(),
            done: false,
        }))
    }

    fn snapshot(
        &mut self,
        storage: Arc<CheckpointStorage>,
        target: SnapshotTarget,
    ) -> Result<PendingSnapshot> {
        self.snapshots_taken += 1;
        snapshot::take(self, storage, target)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) {
        self.uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .complete(checkpoint);
    }
}

/// A scan over key groups: one seek to `<group><prefix>` per group, then
/// entries while the key keeps that prefix.
struct Scan<'a> {
    raw: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
    groups: Range<u32>,
    prefix: &'a [u8],
    /// The `<group><prefix>` being scanned, once its seek was done.
    seek: Option<(u32, Vec<u8>)>,
    now: i64,
    path: PathBuf,
    done: bool,
}

impl Iterator for Scan<'_> {
    type Item = Result<StateEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let Some((kg, want)) = &self.seek else {
                let kg = self.groups.next()?;
                let want = db_key(KeyGroup(kg), self.prefix);
                self.raw.seek(&want);
                self.seek = Some((kg, want));
                continue;
            };
            let kg = *kg;
            let entry = match (self.raw.key(), self.raw.value()) {
                (Some(k), Some(v)) if k.starts_with(want) => {
                    let live = ttl::decode(v)
                        .filter(|(e, _)| !ttl::is_expired(*e, self.now))
                        .map(|(_, value)| StateEntry {
                            key_group: KeyGroup(kg),
                            key: k[2..].to_vec(),
                            value: value.to_vec(),
                        });
                    self.raw.next();
                    live
                }
                _ => {
                    if let Err(source) = self.raw.status() {
                        self.done = true;
                        return Some(Err(rocks_err(&self.path)(source)));
                    }
                    self.seek = None;
                    None
                }
            };
            if let Some(e) = entry {
                return Some(Ok(e));
            }
        }
        None
    }
}
