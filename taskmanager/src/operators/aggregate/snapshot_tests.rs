//! `aggregate` state through a checkpoint: snapshot every subtask mid-way,
//! restore into 1, 2 or 4 subtasks (state split by key group), feed the
//! rest: every key's updates over both runs equal an uninterrupted run's,
//! also with state TTL. Corrupt state fails the restore with an error.

use super::snapshot::AGGREGATES;
use super::tests::{Key, MAXP, Row, Values, spec, subtask, to_batch, updates};
use super::*;
use crate::operators::harness::{OperatorHarness, StateImage};
use crate::state::ManualClock;
use eddy_sdk::FailureClass;
use eddy_sdk::ids::KeyGroup;
use eddy_sdk::keygroup::key_group_range;
use eddy_sdk::operator::StateEntry;
use std::collections::BTreeMap;

/// 40 chunks of 50 rows; the keys drift, so under a 300ms TTL (100ms per
/// chunk) some expire and come back.
fn data() -> Vec<Vec<Row>> {
    (0..40i64)
        .map(|c| {
            (0..50i64)
                .map(|j| Row {
                    k: Some(((c / 5) * 3 + j % 13) % 30),
                    s: ((j / 13) % 2) as u8,
                    v: (j % 7 != 0).then_some(c * 100 + j),
                })
                .collect()
        })
        .collect()
}

/// Rows of `chunk` per subtask of `p`, routed by the key's key group.
fn route(chunk: &[Row], key_by: &[&str], p: u32) -> Vec<Vec<Row>> {
    crate::operators::harness::route_by_key(chunk, &to_batch(chunk), key_by, MAXP, p)
}

type PerKey = BTreeMap<Key, Vec<Values>>;

fn feed(hs: &mut [OperatorHarness], chunk: &[Row], key_by: &[&str], out: &mut PerKey) {
    let p = hs.len() as u32;
    for (h, rows) in hs.iter_mut().zip(route(chunk, key_by, p)) {
        if !rows.is_empty() {
            for (k, v) in updates(key_by, &h.batch(to_batch(&rows)).unwrap()) {
                out.entry(k).or_default().push(v);
            }
        }
    }
}

/// Every key's updates: at parallelism `from` until chunk 22 (with barriers
/// every 5 chunks), then, when `to` is set, snapshot and restore at `to`.
fn run(key_by: &[&str], ttl: Option<u64>, from: u32, to: Option<u32>) -> PerKey {
    let clock = ManualClock::new(0);
    let spec = spec(key_by, ttl);
    let data = data();
    let mut out = PerKey::new();
    let mut hs: Vec<OperatorHarness> = (0..from).map(|i| subtask(&spec, i, from, &clock)).collect();
    for (c, chunk) in data.iter().enumerate() {
        if c == 22
            && let Some(to) = to
        {
            let mut images = Vec::new();
            for h in &mut hs {
                h.checkpoint(100).unwrap();
                images.push(h.image(0).clone());
            }
            let images: Vec<&StateImage> = images.iter().collect();
            hs = (0..to).map(|i| subtask(&spec, i, to, &clock)).collect();
            for (i, h) in hs.iter_mut().enumerate() {
                let range = key_group_range(MAXP, to, i as u32);
                h.restore(0, StateImage::restore(&images, range)).unwrap();
            }
        } else if c % 5 == 4 {
            for h in &mut hs {
                h.checkpoint(c as u64).unwrap();
            }
        }
        feed(&mut hs, chunk, key_by, &mut out);
        clock.advance(100);
    }
    out
}

#[test]
fn aggregate_restored_at_any_parallelism_continues_like_an_uninterrupted_run() {
    for (key_by, ttl) in [
        (&["k"][..], None),
        (&["k"][..], Some(300)),
        (&["k", "s"][..], Some(300)),
        (&["s"][..], None),
    ] {
        let whole = run(key_by, ttl, 1, None);
        if ttl.is_some() {
            assert!(
                whole
                    .values()
                    .any(|vs| vs.windows(2).any(|w| w[1].n < w[0].n)),
                "some key expired and restarted"
            );
        }
        for (from, to) in [(2, 1), (2, 2), (2, 4), (1, 4), (4, 2)] {
            assert_eq!(
                run(key_by, ttl, from, Some(to)),
                whole,
                "{key_by:?}, ttl {ttl:?}: {from} -> {to}"
            );
        }
    }
}

#[test]
fn aggregate_snapshot_after_a_small_change_reports_only_that_key() {
    let clock = ManualClock::new(0);
    let mut h = subtask(&spec(&["k", "s"], None), 0, 1, &clock);
    for chunk in &data()[..5] {
        h.batch(to_batch(chunk)).unwrap();
    }
    h.checkpoint(1).unwrap();
    let full = h.image(0).len();
    assert!(full > 10, "{full} keys");
    assert!(
        h.image(0).last_changes.0,
        "the first snapshot rewrites everything"
    );
    h.batch(to_batch(&[Row {
        k: Some(1),
        s: 0,
        v: Some(1),
    }]))
    .unwrap();
    h.checkpoint(2).unwrap();
    assert_eq!(h.image(0).last_changes, (false, 1));
    h.checkpoint(3).unwrap();
    assert_eq!(h.image(0).last_changes, (false, 0), "nothing changed");
    assert_eq!(h.image(0).len(), full);
}

/// The state of one subtask of 1 after a few batches, as restored entries.
fn entries(key_by: &[&str]) -> Vec<StateEntry> {
    let clock = ManualClock::new(0);
    let mut h = subtask(&spec(key_by, None), 0, 1, &clock);
    h.batch(to_batch(&data()[0])).unwrap();
    h.checkpoint(1).unwrap();
    StateImage::restore(&[h.image(0)], 0..MAXP).take(AGGREGATES)
}

/// Restores `entries` into subtask `i` of `p`; returns the error.
fn restore_error(key_by: &[&str], i: u32, p: u32, entries: Vec<StateEntry>) -> OperatorError {
    let clock = ManualClock::new(0);
    let mut state = RestoredState::new(key_group_range(MAXP, p, i));
    for e in entries {
        state.insert(AGGREGATES, e);
    }
    let e = subtask(&spec(key_by, None), i, p, &clock)
        .restore(0, state)
        .unwrap_err();
    assert_eq!(e.class, FailureClass::Infrastructure, "{e}");
    e
}

#[test]
fn aggregate_restore_rejects_corrupt_state_with_an_error() {
    for key_by in [&["k"][..], &["k", "s"]] {
        let good = entries(key_by);
        let changed = |f: &dyn Fn(&mut StateEntry)| {
            let mut es = good.clone();
            f(&mut es[0]);
            es
        };
        let e = restore_error(
            key_by,
            0,
            1,
            changed(&|e| e.value.truncate(e.value.len() - 3)),
        );
        assert!(e.message.contains("unreadable"), "{e}");
        let e = restore_error(key_by, 0, 1, changed(&|e| e.value[0] = 9));
        assert!(e.message.contains("format 9"), "{e}");
        let e = restore_error(
            key_by,
            0,
            1,
            changed(&|e| e.key_group = KeyGroup((e.key_group.0 + 1) % MAXP)),
        );
        assert!(e.message.contains("hashes to key group"), "{e}");
        let e = restore_error(key_by, 0, 1, changed(&|e| e.key = vec![0xff, 0x01, 0x7f]));
        assert!(e.message.contains("row format"), "{e}");
        let mut twice = good.clone();
        twice.push(good[0].clone());
        let e = restore_error(key_by, 0, 1, twice);
        assert!(e.message.contains("twice"), "{e}");

        // Subtask 1 of 2 owns key groups 64..128: an entry of another is refused.
        let outside: Vec<StateEntry> = good
            .iter()
            .filter(|e| e.key_group.0 < 64)
            .take(1)
            .cloned()
            .collect();
        let e = restore_error(key_by, 1, 2, outside);
        assert!(e.message.contains("key groups 64..128"), "{e}");
    }

    let clock = ManualClock::new(0);
    let mut other = RestoredState::new(0..MAXP);
    other.insert(
        "windows",
        StateEntry {
            key_group: KeyGroup(0),
            key: vec![1],
            value: vec![2],
        },
    );
    let e = subtask(&spec(&["k"], None), 0, 1, &clock)
        .restore(0, other)
        .unwrap_err();
    assert!(e.message.contains("windows"), "{e}");
}

#[test]
fn aggregate_restore_forgets_keys_expired_meanwhile() {
    let clock = ManualClock::new(0);
    let spec = spec(&["k"], Some(1_000));
    let mut h = subtask(&spec, 0, 1, &clock);
    let row = |k| Row {
        k: Some(k),
        s: 0,
        v: Some(k),
    };
    h.batch(to_batch(&[row(1)])).unwrap();
    clock.advance(600);
    h.batch(to_batch(&[row(2)])).unwrap();
    h.checkpoint(1).unwrap();
    let image = h.image(0).clone();
    assert_eq!(image.len(), 2);

    clock.advance(500); // key 1 expired while the job was down, key 2 not
    let mut h = subtask(&spec, 0, 1, &clock);
    h.restore(0, StateImage::restore(&[&image], 0..MAXP))
        .unwrap();
    let got = updates(&["k"], &h.batch(to_batch(&[row(1), row(2)])).unwrap());
    assert_eq!(got[0].1.n, 1, "key 1 starts from zero");
    assert_eq!(got[1].1.n, 2, "key 2 kept its state");
    h.checkpoint(2).unwrap();
    assert_eq!(h.image(0).len(), 2);
    assert!(
        h.image(0).last_changes.0,
        "the first barrier rewrites the state"
    );
}
