//! Window state through a checkpoint: snapshot every subtask at parallelism
//! 2 mid-way, restore into 1 or 3 subtasks (state split by key group), feed
//! the rest: the output over both runs equals an uninterrupted run.

use super::*;
use crate::operators::harness::{StateImage, task_context};
use eddy_sdk::ids::KeyGroup;
use eddy_sdk::operator::Element;

const MAXP: u32 = 128;

/// The harness of subtask `i` of `p`: watermark assigner, then the window.
fn subtask(spec: &WindowSpec, i: u32, p: u32) -> OperatorHarness {
    let wm = WatermarkAssigner::new(
        &input_schema(),
        "ts",
        spec.event_time.max_out_of_orderness.as_millis_i64(),
    )
    .unwrap();
    let ctx = task_context(i, p, true);
    let window = Window::new(&NodeId::from("w"), spec, &input_schema(), &ctx).unwrap();
    OperatorHarness::new(vec![Box::new(wm), Box::new(window)])
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

fn rescale(key_by: &[&str], window: WindowKind, size: i64, slide: i64, to: u32) {
    let spec = spec(key_by, window, 200);
    let data = rows(2_000, 150);
    let (before, after) = data.split_at(1_100);
    let mut out = Vec::new();
    let mut old: Vec<OperatorHarness> = (0..2).map(|i| subtask(&spec, i, 2)).collect();
    for chunk in before.chunks(97) {
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
        images.iter().all(|i| !i.is_empty()),
        "open windows were snapshotted"
    );
    drop(old);

    let images: Vec<&StateImage> = images.iter().collect();
    let mut new: Vec<OperatorHarness> = (0..to).map(|i| subtask(&spec, i, to)).collect();
    for (i, h) in new.iter_mut().enumerate() {
        let range = eddy_sdk::keygroup::key_group_range(MAXP, to, i as u32);
        h.restore(1, StateImage::restore(&images, range)).unwrap();
    }
    for chunk in after.chunks(97) {
        feed(&mut new, chunk, key_by, &mut out);
    }
    for h in &mut new {
        out.extend(batches(&h.end().unwrap()));
    }
    let expected = reference(&data, key_by, size, slide);
    let got = collect(&out, key_by); // asserts no window twice
    assert_eq!(got.len(), expected.len(), "restored at parallelism {to}");
    for (k, v) in &expected {
        assert_eq!(
            got.get(k),
            Some(v),
            "window {k:?} restored at parallelism {to}"
        );
    }
}

#[test]
fn window_restored_at_lower_and_higher_parallelism_matches_an_uninterrupted_run() {
    for to in [1, 2, 3] {
        rescale(&["user"], tumbling(1_000), 1_000, 1_000, to);
        rescale(&["region", "user"], sliding(600, 200), 600, 200, to);
    }
}

#[test]
fn window_snapshot_after_a_small_change_reports_only_that_window() {
    let spec = spec(&["user"], tumbling(1_000), 200);
    let data = rows(2_000, 150);
    let mut h = subtask(&spec, 0, 1);
    h.batch(to_batch(&data[..1_000])).unwrap();
    h.checkpoint(1).unwrap();
    let full = h.image(1).len();
    // One more row, in the newest open window.
    let last = data[999].clone();
    h.batch(to_batch(&[Row { id: 10_000, ..last }])).unwrap();
    h.checkpoint(2).unwrap();
    let (clear, changes) = h.image(1).last_changes;
    assert!(
        !clear,
        "an incremental snapshot does not rewrite everything"
    );
    assert!(
        changes < full,
        "{changes} changes for one row, of {full} entries"
    );
    assert!(
        changes <= 2,
        "one window entry (and maybe the watermark): {changes}"
    );
}

#[test]
fn window_restore_rejects_corrupt_values_and_unknown_states() {
    let spec = spec(&["user"], tumbling(1_000), 200);
    let data = rows(500, 150);
    let mut h = subtask(&spec, 0, 1);
    h.batch(to_batch(&data)).unwrap();
    h.checkpoint(1).unwrap();
    let image = h.image(1).clone();
    let mut restored = StateImage::restore(&[&image], 0..MAXP);
    let mut entries = restored.take(WINDOWS);
    let len = entries[0].value.len();
    entries[0].value.truncate(len - 3);
    let mut bad = RestoredState::new(0..MAXP);
    for e in entries {
        bad.insert(WINDOWS, e);
    }
    let e = subtask(&spec, 0, 1).restore(1, bad).unwrap_err();
    assert!(e.message.contains("unreadable"), "{}", e.message);

    let mut other = StateImage::restore(&[&image], 0..MAXP);
    other.insert(
        "sessions",
        eddy_sdk::operator::StateEntry {
            key_group: KeyGroup(0),
            key: vec![1],
            value: vec![2],
        },
    );
    let e = subtask(&spec, 0, 1).restore(1, other).unwrap_err();
    assert!(e.message.contains("sessions"), "{}", e.message);
}

/// Windows that open and fire between two barriers never reach the backend,
/// so the next barrier deletes nothing for them: it reports only the
/// windows open at it and deletes only the entries the last one wrote.
#[test]
fn windows_opened_and_fired_between_barriers_cost_the_backend_nothing() {
    let spec = spec(&["user"], tumbling(100), 0);
    // 5 ms apart, no jitter: 100 windows of 20 rows, 8 keys (7 users and null).
    let data = rows(2_000, 1);
    let mut h = subtask(&spec, 0, 1);
    h.batch(to_batch(&data[..200])).unwrap();
    h.checkpoint(1).unwrap();
    let first = h.image(1).clone();
    let written = first.len();
    assert!(written > 0, "the open windows were written");
    for chunk in data[200..].chunks(50) {
        h.batch(to_batch(chunk)).unwrap();
    }
    h.checkpoint(2).unwrap();
    let (all, changes) = h.image(1).last_changes;
    assert!(!all);
    // At most: a delete per entry written at barrier 1, the entries of the
    // windows open now (at most two windows of 8 keys), and the watermark.
    // Deleting every fired window's entries would be about 800 changes.
    assert!(
        changes <= written + 2 * 8 + 1,
        "{changes} changes after writing {written} entries"
    );
    // And what the backend holds is still exactly the open windows: a
    // subtask restored from it fires at the end what this one fires.
    let mut restored = subtask(&spec, 0, 1);
    restored
        .restore(1, StateImage::restore(&[h.image(1)], 0..MAXP))
        .unwrap();
    let from_restore = collect(&batches(&restored.end().unwrap()), &["user"]);
    let from_running = collect(&batches(&h.end().unwrap()), &["user"]);
    assert!(!from_running.is_empty());
    assert_eq!(from_restore, from_running);
}
