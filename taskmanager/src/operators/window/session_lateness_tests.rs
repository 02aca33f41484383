//! Allowed lateness of session windows: a fired session is kept until the
//! watermark reaches `end - 1 + lateness`; a late record may extend it or
//! merge it with its neighbours, and the merged session fires again (at
//! once when the watermark has passed its end); records past the lateness
//! are dropped and counted; kept sessions go through checkpoints.

use super::snapshot::{alone, route};
use super::*;
use crate::operators::harness::StateImage;
use crate::operators::window::session::snapshot::SESSIONS;
use eddy_sdk::keygroup::key_group_range;
use eddy_sdk::operator::Element;

const MAXP: u32 = 128;

fn late_spec(gap_ms: u64, lateness_ms: u64) -> WindowSpec {
    let mut s = spec(&["user"], gap_ms, 0);
    s.allowed_lateness = HumanDuration::from_millis(lateness_ms);
    s
}

/// Emitted rows in order: (user, window_start, window_end, n).
fn rows_of(out: &[Element]) -> Vec<(i64, i64, i64, i64)> {
    let mut rows = Vec::new();
    for b in batches(out) {
        let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
        let ts = |name: &str| col(name).as_primitive::<TimestampMillisecondType>().clone();
        let (user, n) = (col("user"), col("n"));
        let (start, end) = (ts("window_start"), ts("window_end"));
        for i in 0..b.num_rows() {
            rows.push((
                user.as_primitive::<Int64Type>().value(i),
                start.value(i),
                end.value(i),
                n.as_primitive::<Int64Type>().value(i),
            ));
        }
    }
    rows
}

fn emitted(c: &mut Collector) -> Vec<(i64, i64, i64, i64)> {
    rows_of(&c.drain().collect::<Vec<_>>())
}

/// A late record inside a fired session re-fires it with the new values; a
/// record that starts before it re-fires it with the new start; a record
/// between two fired sessions merges them and the merged session fires once.
#[test]
fn session_late_record_within_lateness_updates_and_merges_fired_sessions() {
    let mut s = session(&late_spec(100, 500));
    let mut c = Collector::new();
    s.on_batch(to_batch(&[row(1, 1_000), row(1, 1_050)]), &mut c)
        .unwrap();
    s.on_watermark(1_149, &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(1, 1_000, 1_150, 2)]);
    assert_eq!((s.open_sessions(), s.fired_sessions()), (0, 1));

    s.on_batch(to_batch(&[row(1, 1_020)]), &mut c).unwrap();
    assert_eq!(
        emitted(&mut c),
        [(1, 1_000, 1_150, 3)],
        "same bounds, new values"
    );
    s.on_batch(to_batch(&[row(1, 950)]), &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(1, 950, 1_150, 4)], "an earlier start");

    // Watermark 1400: a new session of a late record fires at once...
    s.on_watermark(1_400, &mut c).unwrap();
    s.on_batch(to_batch(&[row(1, 1_200)]), &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(1, 1_200, 1_300, 1)]);
    assert_eq!(s.fired_sessions(), 2);
    // ... and 1140 bridges [950, 1150) and [1200, 1300): one session, fired.
    s.on_batch(to_batch(&[row(1, 1_140)]), &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(1, 950, 1_300, 6)]);
    assert_eq!((s.open_sessions(), s.fired_sessions()), (0, 1));
    assert_eq!(s.metrics().late_records_dropped, 0);

    // Kept until 1299 + 500.
    s.on_watermark(1_798, &mut c).unwrap();
    assert_eq!(s.fired_sessions(), 1);
    s.on_watermark(1_799, &mut c).unwrap();
    assert_eq!(s.fired_sessions(), 0);
    assert!(emitted(&mut c).is_empty(), "dropping emits nothing");
    assert_eq!(s.keys_held(), 1);
}

/// A late record that bridges a fired session and an open one reopens the
/// merged session: it fires when the watermark reaches its new end.
#[test]
fn session_late_record_bridging_a_fired_and_an_open_session_reopens_it() {
    let mut s = session(&late_spec(100, 1_000));
    let mut c = Collector::new();
    s.on_batch(
        to_batch(&[row(1, 1_000), row(1, 1_050), row(1, 1_250)]),
        &mut c,
    )
    .unwrap();
    s.on_watermark(1_200, &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(1, 1_000, 1_150, 2)]);
    assert_eq!((s.open_sessions(), s.fired_sessions()), (1, 1));
    s.on_batch(to_batch(&[row(1, 1_150)]), &mut c).unwrap();
    assert!(
        emitted(&mut c).is_empty(),
        "its end is ahead of the watermark"
    );
    assert_eq!((s.open_sessions(), s.fired_sessions()), (1, 0));
    s.on_watermark(1_349, &mut c).unwrap();
    assert_eq!(emitted(&mut c), [(1, 1_000, 1_350, 4)]);
}

/// A record whose own session is past its lateness is dropped and counted;
/// one within it after its key's session was dropped starts a new session,
/// fired at once.
#[test]
fn session_record_past_lateness_is_dropped_and_counted() {
    let mut s = session(&late_spec(100, 500));
    let mut c = Collector::new();
    s.on_batch(to_batch(&[row(1, 1_000), row(1, 1_050)]), &mut c)
        .unwrap();
    s.on_watermark(1_649, &mut c).unwrap(); // fires, and 1149 + 500 drops it
    assert_eq!(emitted(&mut c), [(1, 1_000, 1_150, 2)]);
    assert_eq!(s.fired_sessions(), 0);
    s.on_batch(
        to_batch(&[row(1, 1_000), row(2, 900), row(1, 1_100)]),
        &mut c,
    )
    .unwrap();
    assert_eq!(s.metrics().late_records_dropped, 2);
    assert_eq!(emitted(&mut c), [(1, 1_100, 1_200, 1)]);
}

/// A key's entry is rewritten when its session fires (now kept), and
/// deleted at the barrier after the watermark passes the lateness.
#[test]
fn session_kept_session_entry_is_deleted_at_the_barrier_after_its_drop() {
    let spec = late_spec(100, 500);
    let mut h = OperatorHarness::new(vec![Box::new(alone(&spec, 0, 1))]);
    h.batch(to_batch(&[row(1, 1_000), row(2, 5_000)])).unwrap();
    h.checkpoint(1).unwrap();
    assert_eq!(h.image(0).len(), 3, "two keys and the watermark");
    h.watermark(1_099).unwrap();
    h.checkpoint(2).unwrap();
    assert_eq!(
        h.image(0).last_changes,
        (false, 2),
        "key 1 and the watermark"
    );
    h.watermark(1_599).unwrap();
    assert_eq!(h.image(0).len(), 3);
    h.checkpoint(3).unwrap();
    assert_eq!(
        h.image(0).last_changes,
        (false, 2),
        "a delete and the watermark"
    );
    assert_eq!(h.image(0).len(), 2, "key 2 and the watermark");
}

/// Fired sessions kept for lateness survive a checkpoint at parallelism 2
/// restored at 1, 2 or 3: late records then re-fire them as an
/// uninterrupted run does, and records past the lateness are dropped.
#[test]
fn session_fired_sessions_survive_restore_at_any_parallelism_and_refire() {
    let spec = late_spec(100, 1_000);
    let before: Vec<Row> = (0..48)
        .map(|i| row(i % 12, 1_000 + (i / 12) * 60))
        .collect();
    let late: Vec<Row> = (0..12).map(|k| row(k, 1_000 + (k % 3) * 50)).collect();
    let too_late: Vec<Row> = (0..12).map(|k| row(k, 500)).collect();
    let run = |ws: &mut [SessionWindow], rows: &[Row], c: &mut Collector| {
        let p = ws.len() as u32;
        for (w, rows) in ws.iter_mut().zip(route(rows, &["user"], p)) {
            if !rows.is_empty() {
                w.on_batch(to_batch(&rows), c).unwrap();
            }
        }
    };
    let advance = |ws: &mut [SessionWindow], wm: i64, c: &mut Collector| {
        for w in ws {
            w.on_watermark(wm, c).unwrap();
        }
    };

    let mut c = Collector::new();
    let mut one = [alone(&spec, 0, 1)];
    run(&mut one, &before, &mut c);
    advance(&mut one, 1_400, &mut c);
    let on_time = emitted(&mut c);
    assert_eq!(on_time.len(), 12);
    run(&mut one, &late, &mut c);
    let mut refired = emitted(&mut c);
    refired.sort();
    assert_eq!(refired.len(), 12);
    advance(&mut one, 2_279, &mut c); // 1280 - 1 + 1000: all dropped
    run(&mut one, &too_late, &mut c);
    assert!(emitted(&mut c).is_empty());
    assert_eq!(one[0].metrics().late_records_dropped, 12);

    for to in [1, 2, 3] {
        let mut old: Vec<OperatorHarness> = (0..2)
            .map(|i| OperatorHarness::new(vec![Box::new(alone(&spec, i, 2))]))
            .collect();
        let mut got = Vec::new();
        for (h, rows) in old.iter_mut().zip(route(&before, &["user"], 2)) {
            h.batch(to_batch(&rows)).unwrap();
            got.extend(rows_of(&h.watermark(1_400).unwrap()));
            h.checkpoint(1).unwrap();
        }
        got.sort();
        let mut want = on_time.clone();
        want.sort();
        assert_eq!(got, want);
        let images: Vec<&StateImage> = old.iter().map(|h| h.image(0)).collect();
        let mut new: Vec<SessionWindow> = (0..to).map(|i| alone(&spec, i, to)).collect();
        for (i, w) in new.iter_mut().enumerate() {
            let range = key_group_range(MAXP, to, i as u32);
            w.restore_state(StateImage::restore(&images, range))
                .unwrap();
        }
        let kept: usize = new.iter().map(SessionWindow::fired_sessions).sum();
        assert_eq!(kept, 12, "restored at {to}");
        run(&mut new, &late, &mut c);
        let mut again = emitted(&mut c);
        again.sort();
        assert_eq!(again, refired, "restored at {to}");
        advance(&mut new, 2_279, &mut c);
        run(&mut new, &too_late, &mut c);
        assert!(emitted(&mut c).is_empty(), "restored at {to}");
        let dropped: u64 = new.iter().map(|w| w.metrics().late_records_dropped).sum();
        assert_eq!(dropped, 12, "restored at {to}");
        assert_eq!(new.iter().map(SessionWindow::keys_held).sum::<usize>(), 12);
    }
}

/// A fired flag other than 0 or 1 is corrupt state, not a panic.
#[test]
fn session_restore_rejects_a_bad_fired_flag() {
    let spec = late_spec(100, 1_000);
    let mut h = OperatorHarness::new(vec![Box::new(alone(&spec, 0, 1))]);
    h.batch(to_batch(&[row(1, 1_000)])).unwrap();
    h.watermark(1_200).unwrap();
    h.checkpoint(1).unwrap();
    let mut restored = StateImage::restore(&[h.image(0)], 0..MAXP);
    let mut entries = restored.take(SESSIONS);
    assert_eq!(entries[0].value[0], 2, "written with fired flags");
    entries[0].value[5 + 16] = 7;
    let mut bad = RestoredState::new(0..MAXP);
    for e in entries {
        bad.insert(SESSIONS, e);
    }
    let e = alone(&spec, 0, 1).restore_state(bad).unwrap_err();
    assert!(e.message.contains("fired flag"), "{}", e.message);
}
