//! RocksDB snapshots. Synchronous part: a RocksDB checkpoint of the live
//! instance (it flushes the memtables, then hard-links every live SST file
//! and copies the small MANIFEST, CURRENT and OPTIONS files) into
//! `snapshot-<n>`. Asynchronous part: uploads from there, while the instance
//! keeps taking writes and compactions (hard links keep the captured files).
//!
//! Incremental: SST files are immutable and their names are never reused
//! within an instance, so an SST file uploaded for the last *completed*
//! checkpoint is referenced again, not uploaded; only new SST files go to the
//! job's shared area, and the small files are written per checkpoint.
//! Savepoints reuse nothing: every file is written into the savepoint.

use super::{RocksDbBackend, rocks_err};
use crate::state::manifest::{BackendKind, FORMAT_VERSION, FileEntry, SubtaskManifest};
use crate::state::storage::CheckpointStorage;
use crate::state::{Error, PendingSnapshot, Result, SnapshotPaths, SnapshotResult, SnapshotTarget};
use eddy_sdk::ids::CheckpointId;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Files uploaded at most this many at a time per snapshot.
const UPLOAD_CONCURRENCY: usize = 4;

/// Which SST files are already in the shared area, by local file name.
#[derive(Debug, Default)]
pub(super) struct Uploads {
    /// The SST files of the last completed checkpoint: safe to reference,
    /// because the coordinator always retains the latest completed one.
    confirmed: HashMap<String, FileEntry>,
    /// The SST files of checkpoints uploaded but not yet completed.
    pending: BTreeMap<CheckpointId, HashMap<String, FileEntry>>,
}

impl Uploads {
    /// Starts from the shared files of a restored checkpoint.
    pub(super) fn confirmed(files: HashMap<String, FileEntry>) -> Self {
        Self {
            confirmed: files,
            pending: BTreeMap::new(),
        }
    }

    pub(super) fn complete(&mut self, chk: CheckpointId) {
        if let Some(files) = self.pending.remove(&chk) {
            self.confirmed = files;
        }
        self.pending.retain(|c, _| *c > chk);
    }
}

fn is_sst(name: &str) -> bool {
    name.ends_with(".sst")
}

/// The synchronous part; see the module docs.
pub(super) fn take(
    backend: &RocksDbBackend,
    storage: Arc<CheckpointStorage>,
    target: SnapshotTarget,
) -> Result<PendingSnapshot> {
    let dir = backend.dir.snapshot(backend.snapshots_taken);
    let io_err = |source| Error::Io {
        path: dir.display().to_string(),
        source,
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err)?;
    }
    rocksdb::checkpoint::Checkpoint::new(&backend.db)
        .and_then(|c| c.create_checkpoint(&dir))
        .map_err(rocks_err(&dir))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if entry.file_type().map_err(io_err)?.is_file() {
            files.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
    }
    files.sort();

    let base = match target {
        SnapshotTarget::Checkpoint(_) => backend
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .confirmed
            .clone(),
        SnapshotTarget::Savepoint(_) => HashMap::new(),
    };
    let paths = SnapshotPaths::new(&storage, &backend.scope, target);
    let (manifest_path, checkpoint) = (paths.manifest(), paths.checkpoint());
    let scope = backend.scope.clone();
    let token = backend.dir.token.clone();
    let uploads = backend.uploads.clone();

    let future = async move {
        // Each file: reused from the base, uploaded to the shared area (new
        // SST files of a checkpoint) or written privately (everything else).
        let plan: Vec<(String, PathBuf, Option<FileEntry>, String, bool)> = files
            .into_iter()
            .map(|(name, local)| {
                let reused = base.get(&name).cloned();
                let shared = checkpoint.is_some() && is_sst(&name);
                let path = if shared {
                    storage.layout().shared_file(
                        &scope.job,
                        &scope.node,
                        &format!("{token}-{name}"),
                    )
                } else {
                    paths.file(&name)
                };
                (name, local, reused, path, shared)
            })
            .collect();
        let results: Vec<(FileEntry, u64)> = futures::stream::iter(plan)
            .map(|(name, local, reused, path, shared)| {
                let storage = storage.clone();
                async move {
                    if let Some(entry) = reused {
                        return Ok::<_, Error>((entry, 0));
                    }
                    let integrity = storage.upload_file(&local, &path).await?;
                    let entry = FileEntry {
                        path,
                        local_name: name,
                        integrity,
                        shared,
                    };
                    Ok((entry, integrity.size))
                }
            })
            .buffered(UPLOAD_CONCURRENCY)
            .try_collect()
            .await?;
        let uploaded_bytes = results.iter().map(|(_, n)| n).sum();
        let manifest = SubtaskManifest {
            format: FORMAT_VERSION,
            backend: BackendKind::Rocksdb,
            job: scope.job.clone(),
            node: scope.node.clone(),
            subtask: scope.subtask,
            checkpoint,
            max_parallelism: scope.max_parallelism,
            key_group_start: scope.key_groups.start,
            key_group_end: scope.key_groups.end,
            files: results.into_iter().map(|(e, _)| e).collect(),
        };
        storage.write_manifest(&manifest_path, &manifest).await?;
        if let Some(chk) = checkpoint {
            let ssts = manifest
                .files
                .iter()
                .filter(|f| f.shared)
                .map(|f| (f.local_name.clone(), f.clone()))
                .collect();
            lock(&uploads).pending.insert(chk, ssts);
        }
        tracing::debug!(
            job = %scope.job, node = %scope.node, subtask = scope.subtask.0,
            checkpoint = ?checkpoint, uploaded_bytes, files = manifest.files.len(),
            "rocksdb snapshot uploaded"
        );
        Ok::<_, Error>(SnapshotResult {
            manifest_path,
            uploaded_bytes,
            state_bytes: manifest.state_bytes(),
            manifest,
        })
    };
    Ok(PendingSnapshot::new(Box::pin(async move {
        let result = future.await;
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot remove snapshot directory");
        }
        result
    })))
}

fn lock(m: &Mutex<Uploads>) -> std::sync::MutexGuard<'_, Uploads> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
