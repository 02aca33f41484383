//! `_metadata`: what one completed checkpoint or savepoint holds, written by
//! the JobManager once every subtask acknowledged (a checkpoint directory
//! without it was never completed). A savepoint's `_metadata` is all a new
//! job needs to restore from it: every snapshot it lists is inside the
//! savepoint directory.

use super::{CheckpointStorage, Error, Result};
use crate::ids::{CheckpointId, JobId, NodeId, SubtaskIndex};
use crate::storage::manifest::BackendKind;
use serde::{Deserialize, Serialize};

/// The `_metadata` format this code writes and reads.
pub const METADATA_FORMAT: u32 = 1;

/// One operator snapshot of one subtask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataEntry {
    pub node: NodeId,
    pub subtask: SubtaskIndex,
    /// The parallelism the snapshot was taken at.
    pub parallelism: u32,
    /// Path of its manifest, relative to the storage holding the `_metadata`.
    pub manifest_path: String,
    pub state_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    pub format: u32,
    pub job: JobId,
    pub checkpoint: CheckpointId,
    pub backend: BackendKind,
    /// The job's number of key groups: a restore must use the same.
    pub max_parallelism: u32,
    pub savepoint: bool,
    /// When it completed (ms since the epoch).
    pub completed_time_ms: i64,
    pub snapshots: Vec<MetadataEntry>,
}

impl SnapshotMetadata {
    /// The nodes that have state in it.
    pub fn nodes(&self) -> std::collections::BTreeSet<&NodeId> {
        self.snapshots.iter().map(|s| &s.node).collect()
    }
}

impl CheckpointStorage {
    /// Writes `meta` (sealed with a checksum) at `path`.
    pub async fn write_metadata(&self, path: &str, meta: &SnapshotMetadata) -> Result<()> {
        let body = serde_json::to_vec_pretty(meta).map_err(|source| Error::Decode {
            path: path.to_string(),
            source,
        })?;
        self.put_sealed(path, &body).await?;
        Ok(())
    }

    /// Reads and checks the `_metadata` at `path`.
    pub async fn read_metadata(&self, path: &str) -> Result<SnapshotMetadata> {
        let body = self.get_sealed(path).await?;
        let meta: SnapshotMetadata =
            serde_json::from_slice(&body).map_err(|source| Error::Decode {
                path: path.to_string(),
                source,
            })?;
        if meta.format != METADATA_FORMAT {
            return Err(Error::Location {
                url: path.to_string(),
                reason: format!(
                    "metadata format {} is not supported (this build reads {METADATA_FORMAT})",
                    meta.format
                ),
            });
        }
        Ok(meta)
    }
}
