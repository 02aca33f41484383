//! Allowed lateness of tumbling and sliding windows: a fired window is kept
//! until the watermark reaches `end - 1 + lateness`; a row for it meanwhile
//! re-fires the rows of the keys it updated; a row past every window's
//! lateness is dropped and counted; kept windows go through checkpoints.

use super::*;
use crate::operators::harness::{StateImage, task_context};
use eddy_sdk::keygroup::key_group_range;

const MAXP: u32 = 128;

fn late_spec(window: WindowKind, lateness_ms: u64) -> WindowSpec {
    let mut s = spec(&["user"], window, 0);
    s.allowed_lateness = HumanDuration::from_millis(lateness_ms);
    s
}

fn window(spec: &WindowSpec, i: u32, p: u32) -> Window {
    Window::new(
        &NodeId::from("w"),
        spec,
        &input_schema(),
        &task_context(i, p, true),
    )
    .unwrap()
}

fn row(user: i64, ts: i64) -> Row {
    Row {
        user: Some(user),
        region: None,
        ts,
        amount: Some(1.0),
        id: ts,
    }
}

/// Emitted rows in order: (user, window_start, window_end, n, first_id).
fn emitted(c: &mut Collector) -> Vec<(i64, i64, i64, i64, i64)> {
    let out = batches(&c.drain().collect::<Vec<_>>());
    let mut rows = Vec::new();
    for b in &out {
        let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
        let ts = |name: &str| col(name).as_primitive::<TimestampMillisecondType>().clone();
        let (user, n, first) = (col("user"), col("n"), col("first_id"));
        let (start, end) = (ts("window_start"), ts("window_end"));
        for i in 0..b.num_rows() {
            rows.push((
                user.as_primitive::<Int64Type>().value(i),
                start.value(i),
                end.value(i),
                n.as_primitive::<Int64Type>().value(i),
                first.as_primitive::<Int64Type>().value(i),
            ));
        }
    }
    rows
}

/// A tumbling window with lateness: the late row re-fires its key's row with
/// the new values at once; the other key's row is not repeated.
#[test]
fn window_late_record_within_lateness_refires_with_updated_values() {
    let spec = late_spec(tumbling(1_000), 500);
    let mut w = window(&spec, 0, 1);
    let mut c = Collector::new();
    w.on_batch(to_batch(&[row(1, 100), row(1, 200), row(2, 300)]), &mut c)
        .unwrap();
    w.on_watermark(999, &mut c).unwrap();
    assert_eq!(
        emitted(&mut c),
        [(1, 0, 1_000, 2, 100), (2, 0, 1_000, 1, 300)],
        "fires on time as without lateness"
    );
    assert_eq!((w.open_windows(), w.fired_windows()), (0, 1));

    w.on_batch(to_batch(&[row(1, 50), row(1, 1_200)]), &mut c)
        .unwrap();
    assert_eq!(
        emitted(&mut c),
        [(1, 0, 1_000, 3, 50)],
        "an upsert of (user 1, [0, 1000)) only"
    );
    assert_eq!(w.metrics().late_records_dropped, 0);
    assert_eq!((w.open_windows(), w.fired_windows()), (1, 1));

    // The window is kept until 999 + 500: 1498 keeps it, 1499 drops it.
    w.on_watermark(1_498, &mut c).unwrap();
    assert!(emitted(&mut c).is_empty());
    w.on_batch(to_batch(&[row(2, 999)]), &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(2, 0, 1_000, 2, 300)]);
    w.on_watermark(1_499, &mut c).unwrap();
    assert_eq!(w.fired_windows(), 0, "dropped once its lateness passed");
    assert!(emitted(&mut c).is_empty(), "dropping emits nothing");
}

/// A row whose only window is past its lateness is dropped and counted,
/// whether the window was kept and dropped or never existed.
#[test]
fn window_record_past_lateness_is_dropped_and_counted() {
    let spec = late_spec(tumbling(1_000), 500);
    let mut w = window(&spec, 0, 1);
    let mut c = Collector::new();
    w.on_batch(to_batch(&[row(1, 100)]), &mut c).unwrap();
    w.on_watermark(1_499, &mut c).unwrap(); // fires and drops [0, 1000) at once
    assert_eq!(emitted(&mut c), [(1, 0, 1_000, 1, 100)]);
    assert_eq!(w.fired_windows(), 0);
    w.on_batch(to_batch(&[row(1, 500), row(3, 0), row(1, 1_000)]), &mut c)
        .unwrap();
    assert!(emitted(&mut c).is_empty());
    assert_eq!(w.metrics().late_records_dropped, 2);
    assert_eq!(w.open_windows(), 1, "1000 is on time");
}

/// A row whose window has no state yet but is within the lateness creates
/// it fired: emitted at once (Flink fires such a window on the element).
#[test]
fn window_first_row_of_a_key_within_lateness_fires_at_once() {
    let spec = late_spec(tumbling(1_000), 1_000);
    let mut w = window(&spec, 0, 1);
    let mut c = Collector::new();
    w.on_watermark(1_200, &mut c).unwrap();
    c.drain().for_each(drop);
    w.on_batch(to_batch(&[row(4, 700)]), &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(4, 0, 1_000, 1, 700)]);
    assert_eq!((w.open_windows(), w.fired_windows()), (0, 1));
}

/// Sliding windows: a row re-fires only those of its windows that fired;
/// its windows past their lateness are skipped without counting the row as
/// late; a row with every window past its lateness is late.
#[test]
fn window_sliding_late_record_refires_only_its_fired_windows() {
    let spec = late_spec(sliding(1_000, 500), 1_000);
    let mut w = window(&spec, 0, 1);
    let mut c = Collector::new();
    w.on_batch(to_batch(&[row(1, 1_200)]), &mut c).unwrap();
    w.on_watermark(1_499, &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(1, 500, 1_500, 1, 1_200)]);
    // 1300: [500, 1500) fired, [1000, 2000) open. 400: [0, 1000) is within
    // its lateness (999 + 1000 > 1499), [-500, 500) is not.
    w.on_batch(to_batch(&[row(1, 1_300), row(1, 400)]), &mut c)
        .unwrap();
    assert_eq!(
        emitted(&mut c),
        [(1, 0, 1_000, 1, 400), (1, 500, 1_500, 2, 1_200)],
        "re-fired in end order, one row per (window, key)"
    );
    assert_eq!(w.metrics().late_records_dropped, 0);
    w.on_watermark(1_999, &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(1, 1_000, 2_000, 2, 1_200)]);
    assert_eq!(w.fired_windows(), 2, "[0, 1000) dropped at 1999");
    w.on_batch(to_batch(&[row(1, 200)]), &mut c).unwrap();
    assert!(emitted(&mut c).is_empty());
    assert_eq!(w.metrics().late_records_dropped, 1);
}

/// With lateness 0 a window is dropped as it fires: nothing is kept and no
/// entry of fired windows is ever checkpointed.
#[test]
fn window_zero_lateness_keeps_nothing_after_firing() {
    let spec = late_spec(tumbling(1_000), 0);
    let mut h = OperatorHarness::new(vec![Box::new(window(&spec, 0, 1))]);
    h.batch(to_batch(&[row(1, 100), row(2, 1_100)])).unwrap();
    h.checkpoint(1).unwrap();
    h.watermark(999).unwrap();
    h.checkpoint(2).unwrap();
    let mut restored = StateImage::restore(&[h.image(0)], 0..MAXP);
    assert!(restored.take(FIRED_WINDOWS).is_empty());
    assert_eq!(restored.take(WINDOWS).len(), 1, "only [1000, 2000)");
}

/// Entries of a fired window move from `windows` to `fired_windows` at the
/// barrier after it fires, and are deleted at the barrier after the
/// watermark passes its lateness.
#[test]
fn window_fired_window_entries_move_then_are_deleted_at_the_next_barrier() {
    let spec = late_spec(tumbling(1_000), 500);
    let mut h = OperatorHarness::new(vec![Box::new(window(&spec, 0, 1))]);
    let keys: Vec<Row> = (0..20).map(|k| row(k, 100 + k)).collect();
    h.batch(to_batch(&keys)).unwrap();
    h.checkpoint(1).unwrap();
    let entries =
        |h: &OperatorHarness, name| StateImage::restore(&[h.image(0)], 0..MAXP).take(name).len();
    let open = entries(&h, WINDOWS);
    assert!(open > 1, "one entry per key group");
    assert_eq!(entries(&h, FIRED_WINDOWS), 0);

    h.watermark(999).unwrap();
    h.checkpoint(2).unwrap();
    assert_eq!(entries(&h, WINDOWS), 0);
    assert_eq!(entries(&h, FIRED_WINDOWS), open);

    h.watermark(1_200).unwrap();
    h.checkpoint(3).unwrap();
    assert_eq!(entries(&h, FIRED_WINDOWS), open, "kept until 1499");
    h.watermark(1_499).unwrap();
    assert_eq!(
        entries(&h, FIRED_WINDOWS),
        open,
        "the backend learns of the drop at the next barrier"
    );
    h.checkpoint(4).unwrap();
    assert_eq!(entries(&h, FIRED_WINDOWS), 0);
    let (clear, changes) = h.image(0).last_changes;
    assert!(!clear);
    assert_eq!(changes, open + 1, "a delete per entry and the watermark");
}

/// Per subtask of `p`: the window alone, and the rows of each.
fn feed(ws: &mut [Window], rows: &[Row], c: &mut Collector) {
    let p = ws.len() as u32;
    for (w, rows) in ws
        .iter_mut()
        .zip(super::snapshot::route(rows, &["user"], p))
    {
        if !rows.is_empty() {
            w.on_batch(to_batch(&rows), c).unwrap();
        }
    }
}

fn advance(ws: &mut [Window], wm: i64, c: &mut Collector) {
    for w in ws {
        w.on_watermark(wm, c).unwrap();
    }
}

/// Later rows override earlier ones: what an upserting consumer holds.
fn upserted(all: &[(i64, i64, i64, i64, i64)]) -> BTreeMap<(i64, i64, i64), (i64, i64)> {
    all.iter()
        .map(|&(u, s, e, n, f)| ((u, s, e), (n, f)))
        .collect()
}

/// Fired windows kept for lateness survive a checkpoint taken at
/// parallelism 2 and restored at 1, 2 or 3: late rows then re-fire them
/// with the restored values plus their own, exactly as an uninterrupted run
/// does, and the windows are dropped when the watermark passes their
/// lateness.
#[test]
fn window_fired_windows_survive_restore_at_any_parallelism_and_refire() {
    let spec = late_spec(sliding(1_000, 500), 1_000);
    let before: Vec<Row> = (0..40).map(|i| row(i % 8, 100 + i * 30)).collect();
    let late: Vec<Row> = (0..16).map(|i| row(i % 8, 550 + i)).collect();
    let too_late: Vec<Row> = (0..8).map(|i| row(i, 50)).collect();

    // Uninterrupted, at parallelism 1.
    let mut c = Collector::new();
    let mut one = [window(&spec, 0, 1)];
    feed(&mut one, &before, &mut c);
    advance(&mut one, 1_499, &mut c);
    let on_time = emitted(&mut c);
    feed(&mut one, &late, &mut c);
    let refired = emitted(&mut c);
    assert!(!refired.is_empty());
    advance(&mut one, 2_000, &mut c);
    feed(&mut one, &too_late, &mut c);
    advance(&mut one, i64::MAX, &mut c);
    let rest = emitted(&mut c);
    let mut expected = on_time.clone();
    expected.extend(&refired);
    expected.extend(&rest);

    for to in [1, 2, 3] {
        let mut old: Vec<OperatorHarness> = (0..2)
            .map(|i| OperatorHarness::new(vec![Box::new(window(&spec, i, 2))]))
            .collect();
        let mut got = Vec::new();
        for (i, rows) in super::snapshot::route(&before, &["user"], 2)
            .into_iter()
            .enumerate()
        {
            old[i].batch(to_batch(&rows)).unwrap();
        }
        for h in &mut old {
            let mut c = Collector::new();
            for e in h.watermark(1_499).unwrap() {
                c.push(e);
            }
            got.extend(emitted(&mut c));
            h.checkpoint(1).unwrap();
        }
        let images: Vec<&StateImage> = old.iter().map(|h| h.image(0)).collect();
        let mut new: Vec<Window> = (0..to).map(|i| window(&spec, i, to)).collect();
        for (i, w) in new.iter_mut().enumerate() {
            let range = key_group_range(MAXP, to, i as u32);
            w.restore_state(StateImage::restore(&images, range))
                .unwrap();
        }
        let fired: usize = new.iter().map(Window::fired_windows).sum();
        assert!(fired >= 2, "restored at {to}: fired windows kept");
        feed(&mut new, &late, &mut c);
        let mut again = emitted(&mut c);
        again.sort();
        let mut want = refired.clone();
        want.sort();
        assert_eq!(again, want, "restored at {to}: the late rows re-fire");
        advance(&mut new, 2_000, &mut c);
        feed(&mut new, &too_late, &mut c);
        advance(&mut new, i64::MAX, &mut c);
        got.extend(again);
        got.extend(emitted(&mut c));
        let late: u64 = new.iter().map(|w| w.metrics().late_records_dropped).sum();
        assert_eq!(late, too_late.len() as u64, "restored at {to}");
        assert_eq!(upserted(&got), upserted(&expected), "restored at {to}");
        assert_eq!(got.len(), expected.len(), "restored at {to}: no extra rows");
    }
}

/// Subtasks whose watermarks differed at the barrier: one fired a window,
/// the other not yet. Restored together, the window stays fired and the
/// other subtask's keys are emitted once, with the next batch.
#[test]
fn window_restore_of_a_fired_and_an_unfired_part_emits_the_unfired_keys() {
    let spec = late_spec(tumbling(1_000), 5_000);
    let rows: Vec<Row> = (0..16).map(|k| row(k, 200 + k)).collect();
    let parts = super::snapshot::route(&rows, &["user"], 2);
    let mut images = Vec::new();
    for (i, wm) in [(0, 999), (1, 500)] {
        let mut h = OperatorHarness::new(vec![Box::new(window(&spec, i, 2))]);
        h.batch(to_batch(&parts[i as usize])).unwrap();
        h.watermark(wm).unwrap();
        h.checkpoint(1).unwrap();
        images.push(h.image(0).clone());
    }
    let mut w = window(&spec, 0, 1);
    w.restore_state(StateImage::restore(
        &images.iter().collect::<Vec<_>>(),
        0..MAXP,
    ))
    .unwrap();
    assert_eq!((w.open_windows(), w.fired_windows()), (0, 1));
    let mut c = Collector::new();
    w.on_batch(to_batch(&[row(100, 5_000)]), &mut c).unwrap();
    let mut got: Vec<i64> = emitted(&mut c).iter().map(|r| r.0).collect();
    got.sort();
    let mut want: Vec<i64> = parts[1].iter().filter_map(|r| r.user).collect();
    want.sort();
    assert_eq!(got, want, "the keys the lagging subtask had not emitted");
    w.on_watermark(1_500, &mut c).unwrap();
    assert!(emitted(&mut c).is_empty(), "nothing fires twice");
}
