//! Session state through a checkpoint: snapshot every subtask at parallelism
//! 2 mid-way, restore into 1, 2 or 4 subtasks (state split by key group),
//! feed the rest: the sessions over both runs equal an uninterrupted run.

use super::*;
use crate::operators::harness::{StateImage, task_context};
use crate::operators::window::session::snapshot::SESSIONS;
use eddy_sdk::ids::KeyGroup;
use eddy_sdk::keygroup::key_group_range;
use eddy_sdk::operator::{Element, RestoredState, StateEntry};

const MAXP: u32 = 128;
const GAP: i64 = 100;

/// The harness of subtask `i` of `p`: watermark assigner, then the sessions.
fn subtask(spec: &WindowSpec, i: u32, p: u32) -> OperatorHarness {
    let bound = spec.event_time.max_out_of_orderness.as_millis_i64();
    let wm = WatermarkAssigner::new(&input_schema(), "ts", bound).unwrap();
    OperatorHarness::new(vec![Box::new(wm), Box::new(alone(spec, i, p))])
}

pub(super) fn alone(spec: &WindowSpec, i: u32, p: u32) -> SessionWindow {
    let ctx = task_context(i, p, true);
    SessionWindow::new(&NodeId::from("s"), spec, &input_schema(), &ctx).unwrap()
}

/// Rows of `chunk` per subtask of `p`, routed by the key's key group.
pub(super) fn route(chunk: &[Row], key_by: &[&str], p: u32) -> Vec<Vec<Row>> {
    crate::operators::harness::route_by_key(chunk, &to_batch(chunk), key_by, MAXP, p)
}

fn feed(hs: &mut [OperatorHarness], chunk: &[Row], key_by: &[&str], out: &mut Vec<RecordBatch>) {
    let p = hs.len() as u32;
    for (h, rows) in hs.iter_mut().zip(route(chunk, key_by, p)) {
        if !rows.is_empty() {
            out.extend(batches(&h.batch(to_batch(&rows)).unwrap()));
        }
    }
}

fn rescale(key_by: &[&str], to: u32) {
    let spec = spec(key_by, GAP as u64, 300);
    let data = rows(3_000, 40, GAP, 300);
    let (before, after) = data.split_at(1_700);
    let mut out = Vec::new();
    let mut old: Vec<OperatorHarness> = (0..2).map(|i| subtask(&spec, i, 2)).collect();
    for chunk in before.chunks(61) {
        feed(&mut old, chunk, key_by, &mut out);
    }
    let mut images = Vec::new();
    for h in &mut old {
        let emitted = h.checkpoint(1).unwrap();
        assert!(matches!(emitted.last(), Some(Element::Barrier(_))));
        out.extend(batches(&emitted));
        images.push(h.image(1).clone());
    }
    assert!(
        images.iter().all(|i| i.len() > 1),
        "open sessions were snapshotted"
    );
    drop(old);

    let images: Vec<&StateImage> = images.iter().collect();
    let mut new: Vec<OperatorHarness> = (0..to).map(|i| subtask(&spec, i, to)).collect();
    for (i, h) in new.iter_mut().enumerate() {
        let range = key_group_range(MAXP, to, i as u32);
        h.restore(1, StateImage::restore(&images, range)).unwrap();
    }
    for chunk in after.chunks(61) {
        feed(&mut new, chunk, key_by, &mut out);
    }
    for h in &mut new {
        out.extend(batches(&h.end().unwrap()));
        assert_eq!(h.metrics(1).late_records_dropped, 0, "no row turned late");
    }
    let want = reference(&data, key_by, GAP);
    let got = collect(&out, key_by); // asserts no session twice
    assert_eq!(
        got.len(),
        want.len(),
        "sessions, restored at parallelism {to}"
    );
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "session {k:?} at parallelism {to}");
    }
}

#[test]
fn session_restored_at_lower_and_higher_parallelism_matches_an_uninterrupted_run() {
    for to in [1, 2, 4] {
        rescale(&["user"], to);
        rescale(&["region", "user"], to);
    }
}

/// `image` without the report of its last snapshot (to compare contents).
fn contents(image: &StateImage) -> StateImage {
    let mut image = image.clone();
    image.last_changes = (false, 0);
    image
}

#[test]
fn session_incremental_snapshots_across_firing_and_compaction_hold_the_full_state() {
    let spec = spec(&["region", "user"], 10, 0);
    let mut h = OperatorHarness::new(vec![Box::new(alone(&spec, 0, 1))]);
    let many: Vec<Row> = (0..5_000).map(|k| row(k, k)).collect();
    h.batch(to_batch(&many)).unwrap();
    h.checkpoint(1).unwrap();
    assert_eq!(h.image(0).len(), 5_001, "every key and the watermark");
    // 4_900 sessions fire (their keys are compacted away), two keys change.
    h.watermark(4_908).unwrap();
    assert_eq!(h.metrics(0).late_records_dropped, 0);
    h.batch(to_batch(&[row(4_999, 5_005), row(3, 6_000)]))
        .unwrap();
    h.checkpoint(2).unwrap();
    let (clear, changes) = h.image(0).last_changes;
    assert!(!clear, "the second snapshot is incremental");
    assert_eq!(changes, 4_900 + 2 + 1, "deletes, two keys, the watermark");
    assert_eq!(h.image(0).len(), 100 + 1 + 1);

    // A fresh operator restored from it reports the same state in full.
    let mut fresh = OperatorHarness::new(vec![Box::new(alone(&spec, 0, 1))]);
    fresh
        .restore(0, StateImage::restore(&[h.image(0)], 0..MAXP))
        .unwrap();
    fresh.checkpoint(3).unwrap();
    assert!(
        fresh.image(0).last_changes.0,
        "a restored operator rewrites all"
    );
    assert_eq!(contents(fresh.image(0)), contents(h.image(0)));

    // And both fire the same sessions.
    let a = collect(
        &batches(&h.watermark(i64::MAX).unwrap()),
        &["region", "user"],
    );
    let b = collect(
        &batches(&fresh.watermark(i64::MAX).unwrap()),
        &["region", "user"],
    );
    assert_eq!(a.len(), 101);
    assert_eq!(a, b);
    assert_eq!(a[&(Some(4_999), Some("eu".into()), 4_999, 5_015)].0, 2);
}

/// Keys whose sessions open and fire between two barriers never reached
/// the backend: the next barrier deletes nothing for them.
#[test]
fn session_keys_come_and_gone_between_barriers_are_not_deleted() {
    let spec = spec(&["region", "user"], 10, 0);
    let mut h = OperatorHarness::new(vec![Box::new(alone(&spec, 0, 1))]);
    h.checkpoint(1).unwrap();
    let many: Vec<Row> = (0..5_000).map(|k| row(k, k)).collect();
    h.batch(to_batch(&many)).unwrap();
    // 4_900 sessions fire (their keys are compacted away), two keys change.
    h.watermark(4_908).unwrap();
    h.batch(to_batch(&[row(4_999, 5_005), row(3, 6_000)]))
        .unwrap();
    h.checkpoint(2).unwrap();
    let (clear, changes) = h.image(0).last_changes;
    assert!(!clear);
    assert_eq!(changes, 100 + 1 + 1, "the open keys and the watermark only");
    assert_eq!(h.image(0).len(), 100 + 1 + 1);
}

#[test]
fn session_snapshot_after_a_small_change_reports_only_that_key() {
    let spec = spec(&["user"], GAP as u64, 300);
    let data = rows(3_000, 40, GAP, 300);
    let mut h = subtask(&spec, 0, 1);
    h.batch(to_batch(&data[..2_000])).unwrap();
    h.checkpoint(1).unwrap();
    let full = h.image(1).len();
    assert!(full > 20, "{full} entries");
    // One more row, extending a key's newest session, the watermark unmoved.
    let last = data[1_999].clone();
    h.batch(to_batch(&[Row {
        ts: last.ts,
        ..last
    }]))
    .unwrap();
    h.checkpoint(2).unwrap();
    let (clear, changes) = h.image(1).last_changes;
    assert!(
        !clear,
        "an incremental snapshot does not rewrite everything"
    );
    assert_eq!(changes, 1, "one key's entry, of {full} entries");
    // No input at all: nothing to report.
    h.checkpoint(3).unwrap();
    assert_eq!(h.image(1).last_changes, (false, 0));
}

#[test]
fn session_restore_rejects_corrupt_values_and_unknown_states() {
    let spec = spec(&["user"], GAP as u64, 300);
    let mut h = subtask(&spec, 0, 1);
    h.batch(to_batch(&rows(500, 10, GAP, 300))).unwrap();
    h.checkpoint(1).unwrap();
    let image = h.image(1).clone();
    for cut in [1, 3, 20] {
        let mut restored = StateImage::restore(&[&image], 0..MAXP);
        let mut entries = restored.take(SESSIONS);
        let len = entries[0].value.len();
        entries[0].value.truncate(len - cut);
        let mut bad = RestoredState::new(0..MAXP);
        for e in entries {
            bad.insert(SESSIONS, e);
        }
        let e = subtask(&spec, 0, 1).restore(1, bad).unwrap_err();
        assert!(e.message.contains("unreadable"), "{}", e.message);
    }

    // A key under another key group than its own.
    let mut restored = StateImage::restore(&[&image], 0..MAXP);
    let mut entries = restored.take(SESSIONS);
    entries[0].key_group = KeyGroup((entries[0].key_group.0 + 1) % MAXP);
    let mut bad = RestoredState::new(0..MAXP);
    for e in entries {
        bad.insert(SESSIONS, e);
    }
    let e = subtask(&spec, 0, 1).restore(1, bad).unwrap_err();
    assert!(e.message.contains("key group"), "{}", e.message);

    let mut other = StateImage::restore(&[&image], 0..MAXP);
    other.insert(
        "windows",
        StateEntry {
            key_group: KeyGroup(0),
            key: vec![1],
            value: vec![2],
        },
    );
    let e = subtask(&spec, 0, 1).restore(1, other).unwrap_err();
    assert!(e.message.contains("windows"), "{}", e.message);
}
