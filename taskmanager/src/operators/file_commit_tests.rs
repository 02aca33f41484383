use super::super::sink::FileSink;
use crate::operators::harness::{OperatorHarness, StateImage, task_context};
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use eddy_sdk::ids::NodeId;
use eddy_sdk::spec::{FileFormat, FileSinkSpec};
use std::path::Path;
use std::sync::Arc;

fn rows(values: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
}

fn sink(dir: &Path, subtask: u32, parallelism: u32, attempt: u32) -> OperatorHarness {
    let spec = FileSinkSpec {
        path: dir.to_string_lossy().into_owned(),
        format: FileFormat::Jsonl,
    };
    let mut ctx = task_context(subtask, parallelism, true);
    ctx.attempt = attempt;
    OperatorHarness::new(vec![Box::new(
        FileSink::create(&NodeId::from("out"), &spec, &ctx).unwrap(),
    )])
}

/// The values in visible (not hidden) files, sorted.
fn visible(dir: &Path) -> Vec<i64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push(v["v"].as_i64().unwrap());
        }
    }
    out.sort_unstable();
    out
}

fn hidden(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count()
}

#[test]
fn file_sink_transactional_rows_are_visible_only_after_their_checkpoint_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = sink(dir.path(), 0, 1, 0);
    h.batch(rows(&[1, 2])).unwrap();
    h.checkpoint(1).unwrap();
    h.batch(rows(&[3])).unwrap();
    assert_eq!(
        visible(dir.path()),
        Vec::<i64>::new(),
        "nothing committed yet"
    );
    h.complete(1).unwrap();
    assert_eq!(
        visible(dir.path()),
        [1, 2],
        "checkpoint 1 covers rows 1 and 2"
    );
    // Checkpoint 2 is given up: its file stays pending and goes with 3.
    h.checkpoint(2).unwrap();
    h.batch(rows(&[4])).unwrap();
    h.checkpoint(3).unwrap();
    assert_eq!(visible(dir.path()), [1, 2]);
    h.complete(3).unwrap();
    assert_eq!(visible(dir.path()), [1, 2, 3, 4]);
    assert_eq!(
        hidden(dir.path()),
        0,
        "every in-progress file was committed"
    );
    assert!(
        !h.image(0).is_empty(),
        "committed entries leave the state at the next barrier"
    );
    h.checkpoint(4).unwrap();
    assert!(h.image(0).is_empty(), "{:?}", h.image(0));
}

#[test]
fn file_sink_restore_commits_pending_and_drops_rows_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = sink(dir.path(), 0, 1, 0);
    h.batch(rows(&[1, 2])).unwrap();
    h.checkpoint(1).unwrap();
    h.batch(rows(&[3])).unwrap();
    h.checkpoint(2).unwrap();
    h.batch(rows(&[4, 5])).unwrap();
    // Checkpoint 2 is committed by the JobManager, but the notice never
    // arrives: the TaskManager dies with rows 4 and 5 in progress.
    let image = h.image(0).clone();
    drop(h);
    assert_eq!(visible(dir.path()), Vec::<i64>::new());

    let mut h = sink(dir.path(), 0, 1, 1);
    h.restore(0, StateImage::restore(&[&image], 0..128))
        .unwrap();
    assert_eq!(
        visible(dir.path()),
        [1, 2, 3],
        "pending files of checkpoint 2 are committed"
    );
    assert_eq!(
        hidden(dir.path()),
        0,
        "rows after checkpoint 2 are deleted (the source replays them)"
    );
    // The replay, then a checkpoint that commits it.
    h.batch(rows(&[4, 5])).unwrap();
    h.checkpoint(3).unwrap();
    h.complete(3).unwrap();
    assert_eq!(visible(dir.path()), [1, 2, 3, 4, 5]);
}

#[test]
fn file_sink_restore_after_the_commit_already_happened_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = sink(dir.path(), 0, 1, 0);
    h.batch(rows(&[1])).unwrap();
    h.checkpoint(1).unwrap();
    let image = h.image(0).clone();
    h.complete(1).unwrap();
    drop(h);
    let mut h = sink(dir.path(), 0, 1, 1);
    h.restore(0, StateImage::restore(&[&image], 0..128))
        .unwrap();
    assert_eq!(visible(dir.path()), [1]);
}

#[test]
fn file_sink_restore_at_lower_parallelism_commits_every_old_subtasks_pending_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for (subtask, values) in [(0u32, [1i64, 2]), (1, [3, 4])] {
        let mut h = sink(dir.path(), subtask, 2, 0);
        h.batch(rows(&values)).unwrap();
        h.checkpoint(7).unwrap();
        h.batch(rows(&[100 + i64::from(subtask)])).unwrap();
        images.push(h.image(0).clone());
    }
    assert_eq!(hidden(dir.path()), 4);
    let mut h = sink(dir.path(), 0, 1, 1);
    h.restore(0, StateImage::restore(&[&images[0], &images[1]], 0..128))
        .unwrap();
    assert_eq!(visible(dir.path()), [1, 2, 3, 4]);
    assert_eq!(
        hidden(dir.path()),
        0,
        "both old subtasks' uncommitted files are gone"
    );
}

#[test]
fn file_sink_fresh_attempt_deletes_only_its_own_key_groups_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    for subtask in 0..2 {
        let mut h = sink(dir.path(), subtask, 2, 0);
        h.batch(rows(&[i64::from(subtask)])).unwrap();
    }
    assert_eq!(hidden(dir.path()), 2);
    // A new attempt of subtask 1 (no checkpoint to restore) starts writing.
    let mut h = sink(dir.path(), 1, 2, 1);
    h.batch(rows(&[9])).unwrap();
    assert_eq!(
        hidden(dir.path()),
        2,
        "subtask 0's file stays; subtask 1's old one is replaced by its new one"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains("-0-a0-")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("-64-a1-")), "{names:?}");
}
