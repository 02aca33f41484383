//! Where checkpoint and savepoint files live in object storage: the only code
//! that builds those paths, so the JobManager (which writes `_metadata` and
//! deletes old checkpoints) and the TaskManagers (which upload state) agree.
//!
//! ```text
//! <root>/<job>/chk-<n>/_metadata                    the checkpoint, written by the JobManager
//! <root>/<job>/chk-<n>/<node>/<subtask>/_manifest   one subtask's snapshot, written LAST
//! <root>/<job>/chk-<n>/<node>/<subtask>/<file>      files private to that checkpoint
//! <root>/<job>/shared/<node>/<file>                 files several checkpoints reference
//!                                                   (incremental RocksDB SST files)
//! <savepoint>/_metadata
//! <savepoint>/<node>/<subtask>/_manifest
//! <savepoint>/<node>/<subtask>/<file>               copies: a savepoint never references
//!                                                   a checkpoint's or the shared files
//! ```
//!
//! Paths are `/`-separated object-store paths relative to the store's root
//! (an S3 bucket, a local directory), with no leading or trailing `/`. Every
//! segment is a job id, node id (letters, digits, `_`, `-`: see spec
//! validation), number or file name, so none contains `/`. Pure code: no I/O.

use crate::ids::{CheckpointId, JobId, NodeId, SubtaskIndex};

/// The name of the file that describes a whole checkpoint or savepoint.
pub const METADATA_FILE: &str = "_metadata";
/// The name of the per-subtask file listing every file of its snapshot;
/// written last, so a snapshot without it is incomplete.
pub const MANIFEST_FILE: &str = "_manifest";
/// The directory, under a job, of files shared between checkpoints.
pub const SHARED_DIR: &str = "shared";
/// The prefix of a checkpoint's directory name, followed by its number.
pub const CHECKPOINT_DIR_PREFIX: &str = "chk-";

/// Joins non-empty segments with `/`, skipping an empty root.
fn join(parts: &[&str]) -> String {
    debug_assert!(
        parts
            .iter()
            .skip(1)
            .all(|p| !p.is_empty() && !p.contains('/')),
        "path segments are non-empty and contain no '/': {parts:?}"
    );
    let mut out = String::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(p);
    }
    out
}

/// Trims `/` from both ends so a prefix given as `a/b/` or `/a/b` joins cleanly.
fn normalize(prefix: &str) -> String {
    prefix.trim_matches('/').to_string()
}

/// The checkpoint area of a cluster: `<root>` is a prefix inside the store
/// (empty when checkpoints sit at the store's root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointLayout {
    root: String,
}

impl CheckpointLayout {
    pub fn new(root: &str) -> Self {
        Self {
            root: normalize(root),
        }
    }

    /// The prefix inside the store, without surrounding `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>/<job>`: everything a job stored, checkpoints and shared files.
    pub fn job_dir(&self, job: &JobId) -> String {
        join(&[&self.root, job.as_str()])
    }

    /// `<root>/<job>/chk-<n>`: deleting this prefix deletes the checkpoint's
    /// private files (shared files are collected separately).
    pub fn checkpoint_dir(&self, job: &JobId, chk: CheckpointId) -> String {
        join(&[&self.root, job.as_str(), &checkpoint_dir_name(chk)])
    }

    /// `<root>/<job>/chk-<n>/_metadata`.
    pub fn metadata(&self, job: &JobId, chk: CheckpointId) -> String {
        join(&[&self.checkpoint_dir(job, chk), METADATA_FILE])
    }

    /// `<root>/<job>/chk-<n>/<node>/<subtask>`.
    pub fn subtask_dir(
        &self,
        job: &JobId,
        chk: CheckpointId,
        node: &NodeId,
        subtask: SubtaskIndex,
    ) -> String {
        join(&[
            &self.checkpoint_dir(job, chk),
            node.as_str(),
            &subtask.0.to_string(),
        ])
    }

    /// A file private to one subtask's snapshot in one checkpoint.
    pub fn subtask_file(
        &self,
        job: &JobId,
        chk: CheckpointId,
        node: &NodeId,
        subtask: SubtaskIndex,
        name: &str,
    ) -> String {
        join(&[&self.subtask_dir(job, chk, node, subtask), name])
    }

    /// The manifest of one subtask's snapshot in one checkpoint.
    pub fn manifest(
        &self,
        job: &JobId,
        chk: CheckpointId,
        node: &NodeId,
        subtask: SubtaskIndex,
    ) -> String {
        self.subtask_file(job, chk, node, subtask, MANIFEST_FILE)
    }

    /// `<root>/<job>/shared`: files referenced by several checkpoints.
    pub fn shared_dir(&self, job: &JobId) -> String {
        join(&[&self.job_dir(job), SHARED_DIR])
    }

    /// A shared file of one node. `unique_name` must never be reused for
    /// different content (the RocksDB backend prefixes SST names with a
    /// per-instance token): shared files are immutable once written.
    pub fn shared_file(&self, job: &JobId, node: &NodeId, unique_name: &str) -> String {
        join(&[&self.shared_dir(job), node.as_str(), unique_name])
    }

    /// Whether `path` is one of the job's shared files (garbage collection
    /// must only ever delete those, never a savepoint's or another job's).
    pub fn is_shared_file_of(&self, job: &JobId, path: &str) -> bool {
        path.strip_prefix(&self.shared_dir(job))
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
    }

    /// The checkpoint number of a `chk-<n>` directory name, if it is one.
    pub fn parse_checkpoint_dir(name: &str) -> Option<CheckpointId> {
        let digits = name.strip_prefix(CHECKPOINT_DIR_PREFIX)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(CheckpointId)
    }
}

fn checkpoint_dir_name(chk: CheckpointId) -> String {
    format!("{CHECKPOINT_DIR_PREFIX}{}", chk.0)
}

/// A savepoint: a directory the user chose, self-contained (every file it
/// needs is inside it), so it survives the job and all its checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointLayout {
    dir: String,
}

impl SavepointLayout {
    /// `dir` is the savepoint's directory inside its store.
    pub fn new(dir: &str) -> Self {
        Self {
            dir: normalize(dir),
        }
    }

    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// `<savepoint>/_metadata`.
    pub fn metadata(&self) -> String {
        join(&[&self.dir, METADATA_FILE])
    }

    /// `<savepoint>/<node>/<subtask>`.
    pub fn subtask_dir(&self, node: &NodeId, subtask: SubtaskIndex) -> String {
        join(&[&self.dir, node.as_str(), &subtask.0.to_string()])
    }

    /// A file of one subtask's snapshot.
    pub fn subtask_file(&self, node: &NodeId, subtask: SubtaskIndex, name: &str) -> String {
        join(&[&self.subtask_dir(node, subtask), name])
    }

    /// The manifest of one subtask's snapshot.
    pub fn manifest(&self, node: &NodeId, subtask: SubtaskIndex) -> String {
        self.subtask_file(node, subtask, MANIFEST_FILE)
    }
}

/// The last segment of a `/`-separated path (a file's name).
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (JobId, NodeId, SubtaskIndex) {
        (JobId::from("j1"), NodeId::from("win"), SubtaskIndex(3))
    }

    /// The documented layout, with a root prefix given with stray slashes.
    #[test]
    fn checkpoint_paths_follow_documented_layout() {
        let l = CheckpointLayout::new("/ckpts/prod/");
        let (job, node, st) = ids();
        let chk = CheckpointId(7);
        assert_eq!(l.root(), "ckpts/prod");
        assert_eq!(l.job_dir(&job), "ckpts/prod/j1");
        assert_eq!(l.checkpoint_dir(&job, chk), "ckpts/prod/j1/chk-7");
        assert_eq!(l.metadata(&job, chk), "ckpts/prod/j1/chk-7/_metadata");
        assert_eq!(
            l.subtask_dir(&job, chk, &node, st),
            "ckpts/prod/j1/chk-7/win/3"
        );
        assert_eq!(
            l.subtask_file(&job, chk, &node, st, "MANIFEST-000005"),
            "ckpts/prod/j1/chk-7/win/3/MANIFEST-000005"
        );
        assert_eq!(
            l.manifest(&job, chk, &node, st),
            "ckpts/prod/j1/chk-7/win/3/_manifest"
        );
        assert_eq!(l.shared_dir(&job), "ckpts/prod/j1/shared");
        assert_eq!(
            l.shared_file(&job, &node, "ab12-000009.sst"),
            "ckpts/prod/j1/shared/win/ab12-000009.sst"
        );
    }

    /// An empty root puts jobs at the store's root, with no leading slash.
    #[test]
    fn checkpoint_paths_with_empty_root_have_no_leading_slash() {
        let l = CheckpointLayout::new("");
        let (job, node, st) = ids();
        assert_eq!(l.checkpoint_dir(&job, CheckpointId(1)), "j1/chk-1");
        assert_eq!(
            l.manifest(&job, CheckpointId(1), &node, st),
            "j1/chk-1/win/3/_manifest"
        );
    }

    /// Only files under the job's own shared dir count as its shared files.
    #[test]
    fn shared_file_check_rejects_other_jobs_and_savepoints() {
        let l = CheckpointLayout::new("r");
        let (job, node, _) = ids();
        let f = l.shared_file(&job, &node, "x.sst");
        assert!(l.is_shared_file_of(&job, &f));
        assert!(!l.is_shared_file_of(&JobId::from("j2"), &f));
        assert!(!l.is_shared_file_of(&JobId::from("j"), &f));
        assert!(!l.is_shared_file_of(&job, "r/j1/sharedx/win/x.sst"));
        assert!(!l.is_shared_file_of(&job, "r/j1/shared"));
        assert!(!l.is_shared_file_of(&job, "sp/win/0/x.sst"));
    }

    #[test]
    fn checkpoint_dir_names_parse_back() {
        assert_eq!(
            CheckpointLayout::parse_checkpoint_dir("chk-42"),
            Some(CheckpointId(42))
        );
        assert_eq!(CheckpointLayout::parse_checkpoint_dir("chk-"), None);
        assert_eq!(CheckpointLayout::parse_checkpoint_dir("chk-4a"), None);
        assert_eq!(CheckpointLayout::parse_checkpoint_dir("shared"), None);
    }

    /// A savepoint is one directory holding its metadata and every subtask's files.
    #[test]
    fn savepoint_paths_stay_inside_its_directory() {
        let s = SavepointLayout::new("savepoints/sp-1/");
        let (_, node, st) = ids();
        assert_eq!(s.dir(), "savepoints/sp-1");
        assert_eq!(s.metadata(), "savepoints/sp-1/_metadata");
        assert_eq!(s.subtask_dir(&node, st), "savepoints/sp-1/win/3");
        assert_eq!(s.manifest(&node, st), "savepoints/sp-1/win/3/_manifest");
        assert_eq!(
            s.subtask_file(&node, st, "000012.sst"),
            "savepoints/sp-1/win/3/000012.sst"
        );
        assert_eq!(
            file_name(&s.subtask_file(&node, st, "000012.sst")),
            "000012.sst"
        );
    }
}
