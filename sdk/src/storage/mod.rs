//! Checkpoint storage over `object_store`: a local directory (a plain path or
//! a `file://` URL), S3 (`s3://bucket/prefix`; endpoint and credentials from
//! the `AWS_*` environment variables or the options passed in) or memory
//! (`memory://`, for tests).
//!
//! Every file is written with its [`Integrity`] (size and XXH3), which the
//! caller records in the subtask's manifest; every read checks it. A file
//! that is gone is [`Error::Missing`], one whose bytes differ is
//! [`Error::Corrupt`]; both name the path, so the coordinator can report it
//! and fall back to an earlier checkpoint. Paths come from
//! `eddy_sdk::checkpoint_layout` only.

pub mod manifest;
pub mod metadata;

use crate::checkpoint_layout::{CheckpointLayout, SavepointLayout};
use crate::ids::{CheckpointId, JobId};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use manifest::{FileEntry, Integrity, SubtaskManifest};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint file {path} is corrupt: expected {expected}, found {actual}")]
    Corrupt {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("checkpoint file {path} is missing")]
    Missing { path: String },
    #[error("invalid checkpoint storage location {url}: {reason}")]
    Location { url: String, reason: String },
    #[error("checkpoint storage failed on {path}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("local file {path}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path} cannot be decoded")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether the error means the stored snapshot is unusable (the caller
    /// should fall back to an earlier one), as opposed to a transient failure.
    pub fn is_damaged_snapshot(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::Missing { .. } | Error::Decode { .. }
        )
    }
}

fn store_err(path: &str, source: object_store::Error) -> Error {
    match source {
        object_store::Error::NotFound { .. } => Error::Missing {
            path: path.to_string(),
        },
        source => Error::Store {
            path: path.to_string(),
            source,
        },
    }
}

fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Local {
        path: path.to_path_buf(),
        source,
    }
}

fn check(path: &str, expected: Integrity, actual: Integrity) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::Corrupt {
            path: path.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// Files larger than this are uploaded in parts, so a large SST file is never
/// held in memory whole.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
const PART_SIZE: usize = 8 << 20;
const READ_BUF: usize = 1 << 20;

/// Where a cluster's checkpoints live, and the only way to read or write them.
#[derive(Clone, Debug)]
pub struct CheckpointStorage {
    store: Arc<dyn ObjectStore>,
    layout: CheckpointLayout,
}

impl CheckpointStorage {
    /// Opens the location `url`: a local path, `file:///dir`, `s3://bucket/prefix`
    /// or `memory://`. `options` are S3 settings (`aws_endpoint`,
    /// `aws_access_key_id`, `aws_allow_http`, ...) that override the environment.
    pub fn open(url: &str, options: &[(String, String)]) -> Result<Self> {
        let bad = |reason: &str| Error::Location {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in options {
                let key = key
                    .parse::<object_store::aws::AmazonS3ConfigKey>()
                    .map_err(|_| bad(&format!("unknown S3 option `{key}`")))?;
                builder = builder.with_config(key, value.clone());
            }
            let store = builder.build().map_err(|e| bad(&e.to_string()))?;
            return Ok(Self::from_store(Arc::new(store), prefix));
        }
        if url == "memory://" || url == "memory:" {
            return Ok(Self::in_memory());
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(bad(
                "supported locations: a path, file://, s3://, memory://",
            ));
        }
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        if dir.as_os_str().is_empty() {
            return Err(bad("empty path"));
        }
        std::fs::create_dir_all(&dir).map_err(local_err(&dir))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| bad(&e.to_string()))?
            .with_automatic_cleanup(true);
        Ok(Self::from_store(Arc::new(store), ""))
    }

    /// Storage in memory, for tests.
    pub fn in_memory() -> Self {
        Self::from_store(Arc::new(object_store::memory::InMemory::new()), "")
    }

    /// Checkpoints under `root` inside `store`.
    pub fn from_store(store: Arc<dyn ObjectStore>, root: &str) -> Self {
        Self {
            store,
            layout: CheckpointLayout::new(root),
        }
    }

    pub fn layout(&self) -> &CheckpointLayout {
        &self.layout
    }

    /// Writes `bytes` at `path`, returning what the manifest should record.
    pub async fn put_bytes(&self, path: &str, bytes: Bytes) -> Result<Integrity> {
        let integrity = Integrity::of(&bytes);
        self.store
            .put(&ObjectPath::from(path), PutPayload::from(bytes))
            .await
            .map_err(|e| store_err(path, e))?;
        Ok(integrity)
    }

    /// Uploads the local file `local` to `path`, hashing it on the way.
    pub async fn upload_file(&self, local: &Path, path: &str) -> Result<Integrity> {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(local_err(local))?;
        let len = file.metadata().await.map_err(local_err(local))?.len();
        if len <= MULTIPART_THRESHOLD {
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.read_to_end(&mut buf).await.map_err(local_err(local))?;
            return self.put_bytes(path, Bytes::from(buf)).await;
        }
        let target = ObjectPath::from(path);
        let upload = self
            .store
            .put_multipart(&target)
            .await
            .map_err(|e| store_err(path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(local_err(local)(e));
                }
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| store_err(path, e))?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| store_err(path, e))?;
        Ok(Integrity {
            size,
            xxh3: hasher.digest(),
        })
    }

    /// The bytes at `path`, checked against `expected`.
    pub async fn get_verified(&self, path: &str, expected: Integrity) -> Result<Bytes> {
        let bytes = self.get(path).await?;
        check(path, expected, Integrity::of(&bytes))?;
        Ok(bytes)
    }

    /// Downloads `path` to the local file `local`, checked against `expected`
    /// (a damaged download is removed).
    pub async fn download_verified(
        &self,
        path: &str,
        expected: Integrity,
        local: &Path,
    ) -> Result<()> {
        let result = self
            .store
            .get(&ObjectPath::from(path))
            .await
            .map_err(|e| store_err(path, e))?;
        let mut stream = result.into_stream();
        let mut file = tokio::fs::File::create(local)
            .await
            .map_err(local_err(local))?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store_err(path, e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(local_err(local))?;
        }
        file.flush().await.map_err(local_err(local))?;
        let actual = Integrity {
            size,
            xxh3: hasher.digest(),
        };
        if let Err(e) = check(path, expected, actual) {
            let _ = tokio::fs::remove_file(local).await;
            return Err(e);
        }
        Ok(())
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        let result = self
            .store
            .get(&ObjectPath::from(path))
            .await
            .map_err(|e| store_err(path, e))?;
        result.bytes().await.map_err(|e| store_err(path, e))
    }

    /// Writes `body` with a checksum trailer (see [`manifest::seal`]); for
    /// manifests and `_metadata`.
    pub async fn put_sealed(&self, path: &str, body: &[u8]) -> Result<Integrity> {
        self.put_bytes(path, Bytes::from(manifest::seal(body)))
            .await
    }

    /// Reads what [`Self::put_sealed`] wrote, checking its trailer.
    pub async fn get_sealed(&self, path: &str) -> Result<Bytes> {
        let sealed = self.get(path).await?;
        match manifest::unseal(&sealed) {
            Ok(body) => Ok(sealed.slice_ref(body)),
            Err(m) => Err(Error::Corrupt {
                path: path.to_string(),
                expected: m.expected.map_or_else(
                    || "a checksum trailer".to_string(),
                    |e| format!("xxh3 {e:016x}"),
                ),
                actual: format!("xxh3 {:016x}", m.actual),
            }),
        }
    }

    /// Writes a subtask manifest at `path`. Call it after every file it lists.
    pub async fn write_manifest(&self, path: &str, m: &SubtaskManifest) -> Result<()> {
        let body = serde_json::to_vec(m).map_err(|source| Error::Decode {
            path: path.to_string(),
            source,
        })?;
        self.put_sealed(path, &body).await.map(|_| ())
    }

    pub async fn read_manifest(&self, path: &str) -> Result<SubtaskManifest> {
        let body = self.get_sealed(path).await?;
        serde_json::from_slice(&body).map_err(|source| Error::Decode {
            path: path.to_string(),
            source,
        })
    }

    /// Every object under `prefix` (a directory path).
    async fn list(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let p = ObjectPath::from(prefix);
        self.store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| store_err(prefix, e))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        match self.store.delete(&ObjectPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(path, e)),
        }
    }

    /// Deletes the private files of checkpoint `chk` (its `chk-<n>` directory);
    /// shared files are released by [`Self::release_shared`]. Returns how
    /// many files were deleted.
    pub async fn delete_checkpoint(&self, job: &JobId, chk: CheckpointId) -> Result<usize> {
        let files = self.list(&self.layout.checkpoint_dir(job, chk)).await?;
        for f in &files {
            self.delete(f.location.as_ref()).await?;
        }
        tracing::debug!(%job, checkpoint = chk.0, files = files.len(), "deleted checkpoint");
        Ok(files.len())
    }

    /// Reference counting of shared files, driven by manifests: deletes the
    /// job's shared files that `dropped` checkpoints referenced and no
    /// `retained` one does. Pass the manifests of *every* node and subtask
    /// of those checkpoints: after rescaling, several subtasks reference the
    /// same restored files. A checkpoint still being taken is safe: it only
    /// reuses files of the latest completed checkpoint (always retained) and
    /// its new files are in no dropped manifest. Returns the deleted paths.
    pub async fn release_shared(
        &self,
        job: &JobId,
        dropped: &[SubtaskManifest],
        retained: &[SubtaskManifest],
    ) -> Result<Vec<String>> {
        let keep = shared_paths(retained);
        let mut deleted: Vec<String> = shared_paths(dropped)
            .into_iter()
            .filter(|p| !keep.contains(p) && self.layout.is_shared_file_of(job, p))
            .map(str::to_string)
            .collect();
        deleted.sort();
        for p in &deleted {
            self.delete(p).await?;
        }
        Ok(deleted)
    }

    /// Deletes the job's shared files that no `retained` manifest references
    /// and that were written before `cutoff`: the uploads of checkpoints that
    /// failed before completing. `cutoff` must not be later than the start of
    /// any checkpoint still in progress, whose manifests are not written yet.
    pub async fn collect_orphaned_shared(
        &self,
        job: &JobId,
        retained: &[SubtaskManifest],
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let keep = shared_paths(retained);
        let mut deleted = Vec::new();
        for meta in self.list(&self.layout.shared_dir(job)).await? {
            let p = meta.location.as_ref();
            if meta.last_modified < cutoff && !keep.contains(p) {
                self.delete(p).await?;
                deleted.push(p.to_string());
            }
        }
        Ok(deleted)
    }

    /// Copies the snapshots `manifests` into the savepoint `savepoint` of
    /// `target` (possibly another store): every file, shared or not, is copied
    /// and checked, then each subtask's manifest is written last, pointing at
    /// the copies only. Returns each new manifest with its path.
    pub async fn copy_to_savepoint(
        &self,
        manifests: &[SubtaskManifest],
        target: &CheckpointStorage,
        savepoint: &SavepointLayout,
    ) -> Result<Vec<(String, SubtaskManifest)>> {
        let mut out = Vec::with_capacity(manifests.len());
        for m in manifests {
            let mut copy = m.clone();
            copy.checkpoint = None;
            for f in &mut copy.files {
                let bytes = self.get_verified(&f.path, f.integrity).await?;
                let dest = savepoint.subtask_file(&m.node, m.subtask, &f.local_name);
                target.put_bytes(&dest, bytes).await?;
                f.path = dest;
                f.shared = false;
            }
            let path = savepoint.manifest(&m.node, m.subtask);
            target.write_manifest(&path, &copy).await?;
            out.push((path, copy));
        }
        Ok(out)
    }
}

fn shared_paths(manifests: &[SubtaskManifest]) -> HashSet<&str> {
    manifests
        .iter()
        .flat_map(|m| &m.files)
        .filter(|f| f.shared)
        .map(|f: &FileEntry| f.path.as_str())
        .collect()
}

#[cfg(test)]
mod tests;
