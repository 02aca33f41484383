use super::*;
use crate::operators::harness::StateImage;
use eddy_sdk::keygroup::key_group_range;
use eddy_sdk::operator::RestoredState;
use eddy_sdk::operator_state::StateChange;

const STATE: &str = "splits";

fn subtask(max: u32, p: u32, i: u32, count: Option<u64>) -> Splits {
    Splits::new(key_group_range(max, p, i), max, count)
}

/// Emits up to `rows` rows in runs of at most `run`, each run whole.
fn take(s: &mut Splits, rows: u64, run: u64) -> Vec<u64> {
    let mut out = Vec::new();
    while (out.len() as u64) < rows {
        let Some(r) = s.next_run(run.min(rows - out.len() as u64)) else {
            break;
        };
        out.extend(r.clone());
        s.advance(r);
    }
    out
}

fn drain(s: &mut Splits, run: u64) -> Vec<u64> {
    let out = take(s, u64::MAX, run);
    assert!(s.is_finished());
    out
}

/// Snapshots into a fresh image.
fn image(s: &mut Splits) -> StateImage {
    let mut changes = StateChanges::new();
    s.snapshot(&mut changes, STATE);
    let mut image = StateImage::default();
    image.apply(changes);
    image
}

/// The subtasks of parallelism `p`, restored from `images`.
fn restored(images: &[&StateImage], max: u32, p: u32, count: Option<u64>) -> Vec<Splits> {
    (0..p)
        .map(|i| {
            let groups = key_group_range(max, p, i);
            let mut state: RestoredState = StateImage::restore(images, groups);
            let mut s = subtask(max, p, i, count);
            s.restore(state.take(STATE)).unwrap();
            s
        })
        .collect()
}

fn sorted(mut rows: Vec<u64>) -> Vec<u64> {
    rows.sort_unstable();
    rows
}

#[test]
fn splits_cover_every_row_once_at_any_parallelism() {
    for (max, count) in [(128, 1_000), (8, 1_001), (5, 3)] {
        for p in [1, 2, 3] {
            for run in [1, 7, 10_000] {
                let mut all = Vec::new();
                for i in 0..p {
                    let mut s = subtask(max, p, i, Some(count));
                    let groups = key_group_range(max, p, i);
                    let owned = (0..count)
                        .filter(|r| groups.contains(&((r % u64::from(max)) as u32)))
                        .count();
                    assert_eq!(s.remaining(), Some(owned as u64));
                    let rows = drain(&mut s, run);
                    assert!(rows.windows(2).all(|w| w[0] < w[1]), "increasing");
                    assert_eq!(s.remaining(), Some(0));
                    all.extend(rows);
                }
                assert_eq!(
                    sorted(all),
                    (0..count).collect::<Vec<_>>(),
                    "max {max}, parallelism {p}, runs of {run}"
                );
            }
        }
    }
}

#[test]
fn splits_runs_are_contiguous_blocks_of_the_owned_key_groups() {
    // 8 splits, subtask 1 of 2 owns 4..8: blocks 4..8, 12..16, ...
    let s = subtask(8, 2, 1, Some(30));
    assert_eq!(s.next_run(100), Some(4..8));
    assert_eq!(s.share(), 0.5);
    // Owning every split, a run crosses blocks.
    let mut whole = subtask(8, 1, 0, Some(30));
    assert_eq!(whole.next_run(20), Some(0..20));
    whole.advance(0..3);
    assert_eq!(whole.next_run(100), Some(3..30));
    whole.advance(3..30);
    assert!(whole.is_finished());
    assert_eq!(whole.next_run(5), None);
}

#[test]
fn splits_unbounded_never_finish() {
    let mut s = subtask(4, 2, 0, None);
    assert_eq!(s.remaining(), None);
    assert_eq!(take(&mut s, 6, 100), [0, 1, 4, 5, 8, 9]);
    assert!(!s.is_finished());
}

#[test]
fn splits_restore_at_other_parallelism_emits_exactly_the_rest() {
    for (max, count) in [(128u32, 5_000u64), (8, 1_001)] {
        // Parallelism 2, each subtask part-way (different amounts, runs cut
        // mid-block), with an incremental snapshot after a first one.
        let mut images = Vec::new();
        let mut emitted = Vec::new();
        for (i, (first, second)) in [(5u64, 700u64), (333, 1)].into_iter().enumerate() {
            let mut s = subtask(max, 2, i as u32, Some(count));
            emitted.extend(take(&mut s, first, 3));
            let mut img = image(&mut s);
            emitted.extend(take(&mut s, second, 5));
            let mut changes = StateChanges::new();
            s.snapshot(&mut changes, STATE);
            img.apply(changes);
            images.push(img);
        }
        let images: Vec<&StateImage> = images.iter().collect();
        for p in [1, 2, 4] {
            let mut rest = Vec::new();
            for mut s in restored(&images, max, p, Some(count)) {
                let before = s.remaining();
                let rows = drain(&mut s, 64);
                assert!(rows.windows(2).all(|w| w[0] < w[1]), "increasing");
                assert_eq!(before, Some(rows.len() as u64));
                rest.extend(rows);
            }
            let mut all = emitted.clone();
            all.extend(rest);
            assert_eq!(
                sorted(all),
                (0..count).collect::<Vec<_>>(),
                "max {max}: restored at parallelism {p}, no gap or duplicate"
            );
        }
    }
}

#[test]
fn splits_first_snapshot_replaces_all_later_ones_report_moved_splits() {
    let mut s = subtask(8, 2, 1, Some(100));
    let mut changes = StateChanges::new();
    s.snapshot(&mut changes, STATE);
    assert!(changes.is_clear());
    assert_eq!(changes.len(), 4, "every owned split");
    s.advance(4..6);
    let mut changes = StateChanges::new();
    s.snapshot(&mut changes, STATE);
    let (clear, changes) = changes.into_parts();
    assert!(!clear);
    let moved: Vec<(u32, Vec<u8>)> = changes
        .into_iter()
        .map(|c| match c {
            StateChange::Put { entry, .. } => (entry.key_group.0, entry.value),
            other => panic!("not a put: {other:?}"),
        })
        .collect();
    assert_eq!(
        moved,
        [
            (4, 1u64.to_be_bytes().to_vec()),
            (5, 1u64.to_be_bytes().to_vec())
        ]
    );
    let mut changes = StateChanges::new();
    s.snapshot(&mut changes, STATE);
    assert!(changes.is_empty(), "nothing moved");
    // After a restore, the first snapshot replaces everything again.
    s.restore(Vec::new()).unwrap();
    let mut changes = StateChanges::new();
    s.snapshot(&mut changes, STATE);
    assert!(changes.is_clear());
}

fn entry(split: u32, key: &[u8], value: &[u8]) -> StateEntry {
    StateEntry {
        key_group: KeyGroup(split),
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

#[test]
fn splits_restore_corrupt_entry_fails() {
    let mut s = subtask(8, 2, 1, Some(100));
    assert_eq!(
        s.restore(vec![entry(5, b"pos", &[0, 1, 2])]),
        Err(Error::BadValue { split: 5, len: 3 })
    );
    assert!(matches!(
        s.restore(vec![entry(5, b"offset", &7u64.to_be_bytes())]),
        Err(Error::UnknownKey { split: 5, .. })
    ));
    assert!(matches!(
        s.restore(vec![entry(2, b"pos", &7u64.to_be_bytes())]),
        Err(Error::NotOwned { split: 2, .. })
    ));
    s.restore(vec![entry(5, b"pos", &2u64.to_be_bytes())])
        .unwrap();
    // Split 5 is past rows 5 and 13: the first block holds 4, 6, 7.
    assert_eq!(s.next_run(100), Some(4..5));
    assert_eq!(take(&mut s, 5, 100), [4, 6, 7, 12, 14]);
}
