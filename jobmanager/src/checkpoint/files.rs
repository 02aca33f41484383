//! The checkpoint service's object-storage work: reading subtask manifests,
//! writing `_metadata` (and copying savepoints) before a commit, and deleting
//! discarded checkpoints. Runs in spawned tasks, never in a driver step.

use super::settings::backend_kind;
use crate::cluster_state::CompletedCheckpoint;
use eddy_sdk::checkpoint_layout::{METADATA_FILE, SavepointLayout};
use eddy_sdk::ids::JobId;
use eddy_sdk::storage::CheckpointStorage;
use eddy_sdk::storage::manifest::SubtaskManifest;
use eddy_sdk::storage::metadata::{METADATA_FORMAT, MetadataEntry, SnapshotMetadata};

pub(super) async fn read_manifests(
    storage: &CheckpointStorage,
    checkpoints: &[CompletedCheckpoint],
) -> Result<Vec<SubtaskManifest>, eddy_sdk::storage::Error> {
    let mut out = Vec::new();
    for c in checkpoints {
        for s in &c.snapshots {
            out.push(storage.read_manifest(&s.manifest_path).await?);
        }
    }
    Ok(out)
}

pub(super) async fn delete_checkpoints(
    storage: &CheckpointStorage,
    job: &JobId,
    dropped: &[CompletedCheckpoint],
    retained: &[CompletedCheckpoint],
) -> Result<(), eddy_sdk::storage::Error> {
    let dropped_manifests = read_manifests(storage, dropped).await?;
    let retained_manifests = read_manifests(storage, retained).await?;
    for c in dropped {
        let n = storage.delete_checkpoint(job, c.id).await?;
        tracing::debug!(job_id = %job, checkpoint_id = c.id.0, files = n, "checkpoint deleted");
    }
    let released = storage
        .release_shared(job, &dropped_manifests, &retained_manifests)
        .await?;
    tracing::debug!(job_id = %job, shared_files = released.len(), "shared files released");
    Ok(())
}

/// Writes the checkpoint's `_metadata`; for a savepoint, first copies every
/// snapshot into the savepoint directory (self-contained), writes its
/// `_metadata` there and returns the checkpoint pointing at the copies.
pub(super) async fn prepare_commit(
    storage: &CheckpointStorage,
    job: &JobId,
    max_parallelism: u32,
    mut completed: CompletedCheckpoint,
) -> Result<CompletedCheckpoint, eddy_sdk::storage::Error> {
    let meta = |c: &CompletedCheckpoint, savepoint: bool| SnapshotMetadata {
        format: METADATA_FORMAT,
        job: job.clone(),
        checkpoint: c.id,
        backend: backend_kind(c.backend),
        max_parallelism,
        savepoint,
        completed_time_ms: c.completed_time_ms,
        snapshots: c
            .snapshots
            .iter()
            .map(|s| MetadataEntry {
                node: s.node.clone(),
                subtask: s.index,
                parallelism: s.parallelism,
                manifest_path: s.manifest_path.clone(),
                state_bytes: s.state_bytes,
            })
            .collect(),
    };
    let Some(target) = completed.savepoint_path.clone() else {
        let path = storage.layout().metadata(job, completed.id);
        storage
            .write_metadata(&path, &meta(&completed, false))
            .await?;
        return Ok(completed);
    };
    let target_storage = CheckpointStorage::open(&target, &[])?;
    let layout = SavepointLayout::new("");
    let manifests = read_manifests(storage, std::slice::from_ref(&completed)).await?;
    let copies = storage
        .copy_to_savepoint(&manifests, &target_storage, &layout)
        .await?;
    for (entry, (path, _)) in completed.snapshots.iter_mut().zip(copies) {
        entry.manifest_path = path;
    }
    completed.storage_root = target.clone();
    target_storage
        .write_metadata(&layout.metadata(), &meta(&completed, true))
        .await?;
    // The savepoint no longer needs the checkpoint's private files; its
    // shared files may be the base of the next incremental checkpoints.
    storage.delete_checkpoint(job, completed.id).await?;
    debug_assert!(layout.metadata().ends_with(METADATA_FILE));
    Ok(completed)
}
