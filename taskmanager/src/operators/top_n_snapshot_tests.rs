//! `top_n` state through a checkpoint: snapshot every subtask at parallelism
//! 2 mid-way, restore into 1, 2 or 4 subtasks (state split by key group),
//! feed the rest: the output over both runs equals an uninterrupted run's.

use super::*;
use crate::operators::harness::{StateImage, task_context};
use crate::operators::top_n::snapshot::GROUPS;
use eddy_sdk::ids::KeyGroup;
use eddy_sdk::keygroup::{key_group_range, subtask_for_key_group};
use eddy_sdk::operator::{Element, RestoredState, StateEntry};

const MAXP: u32 = 128;

fn subtask(spec: &TopNSpec, i: u32, p: u32) -> OperatorHarness {
    let ctx = task_context(i, p, true);
    let op = TopN::new(
        &NodeId::from("top"),
        spec,
        &input_schema(DataType::Int64),
        &ctx,
    )
    .unwrap();
    OperatorHarness::new(vec![Box::new(op)])
}

/// Rows of 10 keys over 12 successive window ends (250 rows each).
fn data() -> Vec<Row> {
    rows(3_000)
        .into_iter()
        .enumerate()
        .map(|(i, r)| Row {
            end: 1_000 * (1 + i as i64 / 250),
            ..r
        })
        .collect()
}

/// Feeds `chunk` routed by key group, then a watermark that emits the
/// groups ending at least a window before the chunk's first row.
fn feed(hs: &mut [OperatorHarness], chunk: &[Row], out: &mut Vec<RecordBatch>) {
    let p = hs.len() as u32;
    let batch = to_batch(chunk);
    let mut hashes = Vec::new();
    hash_columns(
        &[batch.column(0).clone(), batch.column(1).clone()],
        &mut hashes,
    )
    .unwrap();
    let mut routed = vec![Vec::new(); p as usize];
    for (r, h) in chunk.iter().zip(hashes) {
        let s = subtask_for_key_group(key_group_of_hash(h, MAXP), MAXP, p);
        routed[s as usize].push(*r);
    }
    let wm = chunk[0].end - 1_001;
    for (h, rows) in hs.iter_mut().zip(routed) {
        if !rows.is_empty() {
            out.extend(batches(&h.batch(to_batch(&rows)).unwrap()));
        }
        out.extend(batches(&h.watermark(wm).unwrap()));
    }
}

fn finish(hs: &mut [OperatorHarness], out: &mut Vec<RecordBatch>) {
    for h in hs {
        out.extend(batches(&h.watermark(i64::MAX).unwrap()));
        assert_eq!(h.metrics(0).late_records_dropped, 0, "no row turned late");
    }
}

fn rescale(with_ties: bool, to: u32) {
    let spec = spec(3, SortOrder::Desc, with_ties);
    let data = data();
    let mut whole = Vec::new();
    let mut one = vec![subtask(&spec, 0, 1)];
    for chunk in data.chunks(50) {
        feed(&mut one, chunk, &mut whole);
    }
    finish(&mut one, &mut whole);

    let (before, after) = data.split_at(1_650);
    let mut out = Vec::new();
    let mut old: Vec<OperatorHarness> = (0..2).map(|i| subtask(&spec, i, 2)).collect();
    for chunk in before.chunks(50) {
        feed(&mut old, chunk, &mut out);
    }
    let mut images = Vec::new();
    for h in &mut old {
        let emitted = h.checkpoint(1).unwrap();
        assert!(matches!(emitted.last(), Some(Element::Barrier(_))));
        images.push(h.image(0).clone());
    }
    assert!(
        images.iter().all(|i| i.len() > 1),
        "open groups were snapshotted"
    );
    drop(old);
    let images: Vec<&StateImage> = images.iter().collect();
    let mut new: Vec<OperatorHarness> = (0..to).map(|i| subtask(&spec, i, to)).collect();
    for (i, h) in new.iter_mut().enumerate() {
        let range = key_group_range(MAXP, to, i as u32);
        h.restore(0, StateImage::restore(&images, range)).unwrap();
    }
    for chunk in after.chunks(50) {
        feed(&mut new, chunk, &mut out);
    }
    finish(&mut new, &mut out);
    let (want, got) = (collect(&whole), collect(&out));
    assert_eq!(want.len(), 120, "10 keys x 12 ends");
    assert_eq!(
        got, want,
        "restored at parallelism {to}, with ties {with_ties}"
    );
}

#[test]
fn top_n_restored_at_lower_and_higher_parallelism_matches_an_uninterrupted_run() {
    for to in [1, 2, 4] {
        rescale(true, to);
        rescale(false, to);
    }
}

#[test]
fn top_n_snapshot_after_a_small_change_reports_only_that_group() {
    let spec = spec(3, SortOrder::Desc, true);
    let data = data();
    let mut h = subtask(&spec, 0, 1);
    let mut out = Vec::new();
    // The last chunk (rows 960..1020) opens the groups of end 5_000 while
    // those of end 4_000 are still open.
    for chunk in data[..1_020].chunks(60) {
        feed(std::slice::from_mut(&mut h), chunk, &mut out);
    }
    let groups = |rows: &[Row]| {
        let keys: std::collections::BTreeSet<i64> = rows
            .iter()
            .filter(|r| r.score.is_some())
            .map(|r| r.g)
            .collect();
        keys.len()
    };
    let (older, newer) = (groups(&data[750..1_000]), groups(&data[1_000..1_020]));
    h.checkpoint(1).unwrap();
    assert_eq!(
        h.image(0).len(),
        older + newer + 1,
        "open groups and the watermark"
    );
    // A row that enters one open group.
    let best = Row {
        score: Some(1_000),
        id: 9_999,
        ..data[1_019]
    };
    h.batch(to_batch(&[best])).unwrap();
    h.checkpoint(2).unwrap();
    assert_eq!(h.image(0).last_changes, (false, 1), "one group's entry");
    // Emitting the older end's groups deletes their entries.
    h.watermark(data[1_019].end - 1_001).unwrap();
    h.checkpoint(3).unwrap();
    assert_eq!(h.image(0).last_changes, (false, older + 1));
    assert_eq!(h.image(0).len(), newer + 1);
}

/// Groups opened and emitted between two barriers never reached the
/// backend: the barrier after them deletes nothing.
#[test]
fn top_n_groups_emitted_between_barriers_are_not_deleted() {
    let spec = spec(3, SortOrder::Desc, true);
    let data = data();
    let mut h = subtask(&spec, 0, 1);
    h.checkpoint(1).unwrap();
    let mut out = Vec::new();
    // Ends 1_000..=3_000 open and are emitted; 4_000 and 5_000 stay open.
    for chunk in data[..1_020].chunks(60) {
        feed(std::slice::from_mut(&mut h), chunk, &mut out);
    }
    assert!(!out.is_empty(), "groups were emitted");
    h.checkpoint(2).unwrap();
    let open = h.image(0).len() - 1;
    assert_eq!(
        h.image(0).last_changes,
        (false, open + 1),
        "the open groups' entries and the watermark, no delete"
    );
}

#[test]
fn top_n_restore_rejects_corrupt_values_and_unknown_states() {
    let spec = spec(3, SortOrder::Desc, true);
    let mut h = subtask(&spec, 0, 1);
    h.batch(to_batch(&data()[..400])).unwrap();
    h.checkpoint(1).unwrap();
    let image = h.image(0).clone();
    for cut in [1, 5, 30] {
        let mut restored = StateImage::restore(&[&image], 0..MAXP);
        let mut entries = restored.take(GROUPS);
        let len = entries[0].value.len();
        entries[0].value.truncate(len - cut);
        let mut bad = RestoredState::new(0..MAXP);
        for e in entries {
            bad.insert(GROUPS, e);
        }
        let e = subtask(&spec, 0, 1).restore(0, bad).unwrap_err();
        assert!(e.message.contains("unreadable"), "{}", e.message);
    }

    let mut other = StateImage::restore(&[&image], 0..MAXP);
    other.insert(
        "windows",
        StateEntry {
            key_group: KeyGroup(0),
            key: vec![1],
            value: vec![2],
        },
    );
    let e = subtask(&spec, 0, 1).restore(0, other).unwrap_err();
    assert!(e.message.contains("windows"), "{}", e.message);
}
