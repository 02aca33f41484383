//! The file sink's two-phase commit, used when the job takes checkpoints.
//!
//! Rows go to a hidden in-progress file,
//! `.inprogress-<job>-<kg>-a<attempt>-<seq>.jsonl`, where `kg` is the
//! subtask's own key group ([`own_key_group`]). At the barrier of checkpoint
//! `n` the file is finished and synced and becomes *pending*: it is recorded
//! in the sink's state `pending` (key: the in-progress name, value: the final
//! name `part-<job>-<kg>-<n>.jsonl`), so the checkpoint holds it. When `n` is
//! committed, every pending file of a checkpoint up to `n` is renamed to its
//! final name (atomic within one filesystem) and the directory is synced;
//! the entry is deleted at the next barrier. A file whose checkpoint was
//! given up stays pending and is committed with the next completed one (whose
//! state still lists it).
//!
//! After a restart, the files pending in the restored checkpoint are
//! committed first: that checkpoint completed, so their rows are part of it.
//! A rename already done (the notice arrived before the failure) is skipped.
//! Then every in-progress file of this job whose key group this subtask owns
//! and that is not pending is deleted: its rows came after the checkpoint and
//! the sources replay them. So the visible output has no duplicates and no
//! gaps, at any parallelism after the restore.

use super::TaskContext;
use super::sink::{encode_error, io_error, json_writer};
use arrow_json::writer::{LineDelimited, Writer};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{CheckpointId, JobId, KeyGroup, NodeId};
use eddy_sdk::operator::OperatorError;
use eddy_sdk::operator_state::{RestoredState, StateChanges, own_key_group};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The sink's state: pending files by in-progress name.
pub const PENDING: &str = "pending";

/// A finished file waiting for its checkpoint to be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    in_progress: String,
    final_name: String,
}

/// The file being written.
struct Current {
    name: String,
    path: PathBuf,
    writer: Writer<BufWriter<File>, LineDelimited>,
}

pub struct Transactional {
    node: NodeId,
    dir: PathBuf,
    job: JobId,
    key_groups: Range<u32>,
    own: KeyGroup,
    attempt: u32,
    seq: u64,
    current: Option<Current>,
    /// Pending files by the checkpoint that pre-committed them.
    pending: BTreeMap<CheckpointId, Vec<Pending>>,
    /// Entries of committed files, deleted from the state at the next barrier.
    committed: Vec<(KeyGroup, String)>,
    /// Leftover in-progress files were cleaned up.
    cleaned: bool,
}

impl Transactional {
    pub fn new(node: &NodeId, dir: &Path, ctx: &TaskContext) -> Self {
        let key_groups = ctx.key_groups();
        Transactional {
            node: node.clone(),
            dir: dir.to_path_buf(),
            job: ctx.job_id.clone(),
            own: own_key_group(&key_groups),
            key_groups,
            attempt: ctx.attempt,
            seq: 0,
            current: None,
            pending: BTreeMap::new(),
            committed: Vec::new(),
            cleaned: false,
        }
    }

    pub fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    /// The writer of the current in-progress file, opened on first use.
    pub fn writer(
        &mut self,
    ) -> Result<(&mut Writer<BufWriter<File>, LineDelimited>, PathBuf), OperatorError> {
        self.clean_up_once()?;
        if self.current.is_none() {
            let name = format!(
                ".inprogress-{}-{}-a{}-{}.jsonl",
                self.job, self.own.0, self.attempt, self.seq
            );
            self.seq += 1;
            let path = self.dir.join(&name);
            let file =
                File::create(&path).map_err(|e| io_error(&self.node, &path, "cannot create", e))?;
            self.current = Some(Current {
                name,
                path,
                writer: json_writer(BufWriter::new(file)),
            });
        }
        let current = self.current.as_mut().expect("opened above when absent");
        Ok((&mut current.writer, current.path.clone()))
    }

    pub fn flush(&mut self) -> Result<(), OperatorError> {
        if let Some(c) = self.current.as_mut() {
            c.writer
                .get_mut()
                .flush()
                .map_err(|e| io_error(&self.node, &c.path, "cannot write", e))?;
        }
        Ok(())
    }

    /// The barrier of `checkpoint`: the current file becomes pending.
    pub fn pre_commit(
        &mut self,
        checkpoint: CheckpointId,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        self.clean_up_once()?;
        for (kg, name) in self.committed.drain(..) {
            changes.delete(PENDING, kg, name.into_bytes());
        }
        if let Some(mut c) = self.current.take() {
            close(&self.node, &mut c)?;
            let final_name = format!("part-{}-{}-{}.jsonl", self.job, self.own.0, checkpoint.0);
            changes.put(
                PENDING,
                self.own,
                c.name.clone().into_bytes(),
                final_name.clone().into_bytes(),
            );
            self.pending.entry(checkpoint).or_default().push(Pending {
                in_progress: c.name,
                final_name,
            });
        }
        Ok(())
    }

    /// `checkpoint` was committed: make the files pending up to it visible.
    pub fn commit_up_to(&mut self, checkpoint: CheckpointId) -> Result<(), OperatorError> {
        let later = self
            .pending
            .split_off(&CheckpointId(checkpoint.0.saturating_add(1)));
        let done = std::mem::replace(&mut self.pending, later);
        let mut renamed = 0usize;
        for file in done.into_values().flatten() {
            self.publish(&file)?;
            self.committed.push((self.own, file.in_progress));
            renamed += 1;
        }
        if renamed > 0 {
            self.sync_dir()?;
            tracing::debug!(node = %self.node, checkpoint_id = checkpoint.0, files = renamed, "file sink committed");
        }
        Ok(())
    }

    /// Restores from a completed checkpoint: commits what it holds pending.
    pub fn restore(&mut self, mut state: RestoredState) -> Result<(), OperatorError> {
        let entries = state.take(PENDING);
        for entry in &entries {
            let file = Pending {
                in_progress: utf8(&self.node, &entry.key)?,
                final_name: utf8(&self.node, &entry.value)?,
            };
            self.publish(&file)?;
            self.committed.push((entry.key_group, file.in_progress));
        }
        if !entries.is_empty() {
            self.sync_dir()?;
            tracing::info!(node = %self.node, files = entries.len(), "file sink committed the files pending in the restored checkpoint");
        }
        self.clean_up_once()
    }

    /// The end of input: the last barrier (the final checkpoint) came before
    /// it, so the current file holds nothing; if it does, its rows were never
    /// covered by a checkpoint and it is published as it is.
    pub fn end(&mut self) -> Result<(), OperatorError> {
        self.clean_up_once()?;
        if let Some(mut c) = self.current.take() {
            close(&self.node, &mut c)?;
            let file = Pending {
                final_name: format!(
                    "part-{}-{}-end-a{}.jsonl",
                    self.job, self.own.0, self.attempt
                ),
                in_progress: c.name,
            };
            tracing::warn!(node = %self.node, file = %file.final_name, "rows after the final checkpoint published at the end of input");
            self.publish(&file)?;
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Renames a pending file to its final name; done already is fine.
    fn publish(&self, file: &Pending) -> Result<(), OperatorError> {
        let from = self.dir.join(&file.in_progress);
        let to = self.dir.join(&file.final_name);
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(OperatorError::new(
                FailureClass::Connector,
                format!(
                    "file sink `{}`: pending file {} is gone and {} does not exist: committed output is lost",
                    self.node,
                    from.display(),
                    to.display()
                ),
            )
            .with_source(e)),
            Err(e) => Err(io_error(&self.node, &from, "cannot commit", e)),
        }
    }

    fn sync_dir(&self) -> Result<(), OperatorError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(&self.node, &self.dir, "cannot sync directory", e))
    }

    /// Deletes in-progress files of this job in the key groups this subtask
    /// owns, except the pending ones (rows after the restored checkpoint).
    fn clean_up_once(&mut self) -> Result<(), OperatorError> {
        if self.cleaned {
            return Ok(());
        }
        self.cleaned = true;
        let prefix = format!(".inprogress-{}-", self.job);
        let keep: Vec<&str> = self
            .pending
            .values()
            .flatten()
            .map(|p| p.in_progress.as_str())
            .collect();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| io_error(&self.node, &self.dir, "cannot list", e))?;
        let mut deleted = 0usize;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.node, &self.dir, "cannot list", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(kg) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|kg| kg.parse::<u32>().ok())
            else {
                continue;
            };
            if !self.key_groups.contains(&kg) || keep.contains(&name.as_str()) {
                continue;
            }
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|e| io_error(&self.node, &path, "cannot delete", e))?;
            deleted += 1;
        }
        if deleted > 0 {
            tracing::info!(node = %self.node, files = deleted, "file sink deleted in-progress files not covered by a checkpoint");
        }
        Ok(())
    }
}

/// Finishes the JSON stream of the current file and syncs it to disk.
fn close(node: &NodeId, c: &mut Current) -> Result<(), OperatorError> {
    c.writer.finish().map_err(|e| encode_error("file", e))?;
    let file = c.writer.get_mut();
    file.flush()
        .and_then(|()| file.get_ref().sync_data())
        .map_err(|e| io_error(node, &c.path, "cannot sync", e))
}

fn utf8(node: &NodeId, bytes: &[u8]) -> Result<String, OperatorError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        OperatorError::new(
            FailureClass::Infrastructure,
            format!("file sink `{node}`: a pending file name in the checkpoint is not UTF-8"),
        )
        .with_source(e)
    })
}

#[cfg(test)]
#[path = "file_commit_tests.rs"]
mod tests;
