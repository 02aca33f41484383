//! Restoring a RocksDB instance for a key-group range, from one snapshot or
//! several (after rescaling, a subtask's range can span old subtasks').
//!
//! The snapshot overlapping the range most becomes the instance: its files
//! are downloaded into the instance's directory and opened as they are, then
//! the key groups outside the range are removed with two `delete_range`s per
//! state (cheap tombstones; compactions reclaim the space later). Every other
//! overlapping snapshot is downloaded to a staging directory, opened
//! read-only, and the entries of the overlapping key groups are copied over
//! in write batches. Keeping the largest part as files makes the common
//! cases (same parallelism, or scaling down by merging) mostly file copies;
//! copying entries is needed only for the smaller parts.

use super::{
    END_OF_GROUPS, InstanceDir, RocksDbBackend, RocksDbSlot, StateMeta, group_prefix, options,
    rocks_err, snapshot,
};
use crate::state::manifest::{BackendKind, SubtaskManifest};
use crate::state::memory::check_compatible;
use crate::state::storage::CheckpointStorage;
use crate::state::{Clock, Error, Result, StateScope, overlapping};
use futures::{StreamExt, TryStreamExt};
use rocksdb::{DB, Options, WriteBatch};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Files downloaded at most this many at a time per snapshot.
const DOWNLOAD_CONCURRENCY: usize = 4;
/// Write batches of copied entries are cut at about this many bytes.
const COPY_BATCH_BYTES: usize = 4 << 20;

fn overlap(a: &Range<u32>, b: &Range<u32>) -> u32 {
    a.end.min(b.end).saturating_sub(a.start.max(b.start))
}

impl RocksDbSlot {
    /// An instance for `scope` holding the key groups of its range found in
    /// `manifests` (this node's snapshots, from any parallelism; those not
    /// overlapping the range are not downloaded). Opening and copying run on
    /// a blocking thread.
    pub async fn restore(
        &self,
        scope: StateScope,
        clock: Arc<dyn Clock>,
        storage: &CheckpointStorage,
        manifests: &[SubtaskManifest],
    ) -> Result<RocksDbBackend> {
        let range = scope.key_groups.clone();
        let mut parts: Vec<&SubtaskManifest> = overlapping(manifests, &range).collect();
        if parts.is_empty() {
            return self.open(scope, clock);
        }
        for m in &parts {
            check_compatible(m, &scope, BackendKind::Rocksdb)?;
        }
        // The largest overlap first: it becomes the instance.
        parts.sort_by_key(|m| std::cmp::Reverse(overlap(&m.key_group_range(), &range)));
        let dir = self.instance_dir(&scope);
        let mut staged = Vec::with_capacity(parts.len());
        for (i, m) in parts.iter().enumerate() {
            let local = if i == 0 { dir.db() } else { dir.staging(i) };
            if let Err(e) = download(storage, m, &local).await {
                // Nothing was opened yet: leave no half-downloaded instance.
                let _ = tokio::fs::remove_dir_all(&dir.root).await;
                return Err(e);
            }
            staged.push((local, m.key_group_range()));
        }
        let base = parts[0];
        let confirmed: HashMap<_, _> = base
            .files
            .iter()
            .filter(|f| f.shared && storage.layout().is_shared_file_of(&scope.job, &f.path))
            .map(|f| (f.local_name.clone(), f.clone()))
            .collect();
        let template = self.template();
        let backend = tokio::task::spawn_blocking(move || {
            assemble(template, dir, scope, clock, &staged, confirmed)
        })
        .await
        .map_err(|e| Error::Io {
            path: "restore".to_string(),
            source: std::io::Error::other(e),
        })??;
        tracing::info!(
            job = %backend.scope.job, node = %backend.scope.node,
            subtask = backend.scope.subtask.0, snapshots = parts.len(),
            "rocksdb state restored"
        );
        Ok(backend)
    }
}

async fn download(storage: &CheckpointStorage, m: &SubtaskManifest, local: &Path) -> Result<()> {
    tokio::fs::create_dir_all(local)
        .await
        .map_err(|source| Error::Io {
            path: local.display().to_string(),
            source,
        })?;
    if let Some(f) = m
        .files
        .iter()
        .find(|f| f.local_name.contains('/') || f.local_name.starts_with('.'))
    {
        return Err(Error::Malformed {
            path: f.path.clone(),
            reason: format!("bad local file name {:?}", f.local_name),
        });
    }
    // Boxed eagerly rather than mapped lazily in the stream: a closure
    // returning a borrowing future inside the stream makes the whole restore
    // future fail the higher-ranked `Send` check when it is spawned.
    let downloads: Vec<futures::future::BoxFuture<'_, crate::state::storage::Result<()>>> = m
        .files
        .iter()
        .map(|f| {
            let dest = local.join(&f.local_name);
            Box::pin(async move { storage.download_verified(&f.path, f.integrity, &dest).await })
                as futures::future::BoxFuture<'_, _>
        })
        .collect();
    futures::stream::iter(downloads)
        .buffer_unordered(DOWNLOAD_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Opens the base (`staged[0]`), clips it to the scope's range and copies the
/// overlapping key groups of the other staged snapshots into it.
fn assemble(
    template: Options,
    dir: InstanceDir,
    scope: StateScope,
    clock: Arc<dyn Clock>,
    staged: &[(PathBuf, Range<u32>)],
    confirmed: HashMap<String, crate::state::manifest::FileEntry>,
) -> Result<RocksDbBackend> {
    let range = scope.key_groups.clone();
    let mut backend = RocksDbBackend::open(template, dir, scope, clock)?;
    backend.uploads = Arc::new(Mutex::new(snapshot::Uploads::confirmed(confirmed)));
    clip(&backend, &range)?;
    for (path, part_range) in &staged[1..] {
        let groups = range.start.max(part_range.start)..range.end.min(part_range.end);
        copy_groups(&mut backend, path, &groups)?;
        std::fs::remove_dir_all(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(backend)
}

/// Deletes every key outside `range` in every state of `backend`.
fn clip(backend: &RocksDbBackend, range: &Range<u32>) -> Result<()> {
    let path = backend.db_path();
    for s in &backend.states {
        let cf = backend
            .db
            .cf_handle(&s.name)
            .expect("opened states have column families");
        if range.start > 0 {
            backend
                .db
                .delete_range_cf(cf, [0u8, 0u8], group_prefix(range.start))
                .map_err(rocks_err(&path))?;
        }
        backend
            .db
            .delete_range_cf(cf, &group_prefix(range.end)[..], &END_OF_GROUPS[..])
            .map_err(rocks_err(&path))?;
    }
    Ok(())
}

/// Copies the entries of key groups `groups` of every state of the DB at
/// `path` into `backend`, values as stored (expiry headers included).
fn copy_groups(backend: &mut RocksDbBackend, path: &Path, groups: &Range<u32>) -> Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = super::existing_states(path)?;
    let opts = options::db_options(&backend.template);
    let source = DB::open_cf_for_read_only(&opts, path, &names, false).map_err(rocks_err(path))?;
    let (lo, hi) = (group_prefix(groups.start), group_prefix(groups.end));
    for name in &names {
        if !backend.states.iter().any(|s| &s.name == name) {
            let cf_opts = options::cf_options(&backend.template, backend.clock.clone());
            backend
                .db
                .create_cf(name, &cf_opts)
                .map_err(rocks_err(&backend.db_path()))?;
            backend.states.push(StateMeta {
                name: name.clone(),
                ttl: None,
            });
        }
        let from = source
            .cf_handle(name)
            .expect("listed column family is open");
        let to = backend
            .db
            .cf_handle(name)
            .expect("column family was just ensured");
        let mut raw = source.raw_iterator_cf(from);
        raw.seek(lo);
        let mut batch = WriteBatch::default();
        while let (Some(k), Some(v)) = (raw.key(), raw.value()) {
            if k >= &hi[..] {
                break;
            }
            batch.put_cf(to, k, v);
            if batch.size_in_bytes() >= COPY_BATCH_BYTES {
                let full = std::mem::take(&mut batch);
                backend
                    .db
                    .write_opt(full, &backend.write_opts)
                    .map_err(rocks_err(&backend.db_path()))?;
            }
            raw.next();
        }
        raw.status().map_err(rocks_err(path))?;
        backend
            .db
            .write_opt(batch, &backend.write_opts)
            .map_err(rocks_err(&backend.db_path()))?;
    }
    Ok(())
}
