//! Session windows against a straightforward reference: per key, sort the
//! times and cut wherever two consecutive records are more than `gap` apart.

use super::*;
use crate::operators::harness::{OperatorHarness, batches, watermarks};
use crate::operators::watermark::WatermarkAssigner;
use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{Field, Float64Type, Schema, TimeUnit};
use eddy_sdk::ids::{JobId, VertexId};
use eddy_sdk::spec::{AggregateFn, AggregateSpec, EventTimeSpec, HumanDuration, WindowKind};
use std::collections::BTreeMap;

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int64, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("amount", DataType::Float64, true),
    ]))
}

#[derive(Clone, Debug)]
struct Row {
    user: Option<i64>,
    region: Option<&'static str>,
    ts: i64,
    amount: Option<f64>,
}

fn row(user: i64, ts: i64) -> Row {
    Row {
        user: Some(user),
        region: Some("eu"),
        ts,
        amount: Some(1.0),
    }
}

fn to_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.user))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.region))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.ts),
            )),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.amount))),
        ],
    )
    .unwrap()
}

fn spec(key_by: &[&str], gap_ms: u64, bound_ms: u64) -> WindowSpec {
    let agg = |func, column: Option<&str>, alias: &str| AggregateSpec {
        func,
        column: column.map(str::to_string),
        alias: alias.to_string(),
    };
    WindowSpec {
        key_by: key_by.iter().map(|s| s.to_string()).collect(),
        event_time: EventTimeSpec {
            column: "ts".into(),
            max_out_of_orderness: HumanDuration::from_millis(bound_ms),
        },
        window: WindowKind::Session {
            gap: HumanDuration::from_millis(gap_ms),
        },
        aggregates: vec![
            agg(AggregateFn::Count, None, "n"),
            agg(AggregateFn::Sum, Some("amount"), "total"),
            agg(AggregateFn::Max, Some("ts"), "last_ts"),
            agg(AggregateFn::Avg, Some("amount"), "mean"),
        ],
        allowed_lateness: HumanDuration::default(),
        watermark_alignment: None,
    }
}

fn ctx() -> TaskContext {
    TaskContext {
        job_id: JobId::from("j"),
        vertex: VertexId(1),
        subtask: 0,
        parallelism: 1,
        max_parallelism: 128,
        latency_interval: None,
        attempt: 0,
        exactly_once: false,
    }
}

fn session(spec: &WindowSpec) -> SessionWindow {
    SessionWindow::new(&NodeId::from("s"), spec, &input_schema(), &ctx()).unwrap()
}

/// (user, region, start, end) → (n, total bits, last_ts, mean bits).
type Key = (Option<i64>, Option<String>, i64, i64);
type Aggs = (i64, Option<u64>, Option<i64>, Option<u64>);

fn reference(rows: &[Row], key_by: &[&str], gap: i64) -> BTreeMap<Key, Aggs> {
    let mut by_key: BTreeMap<(Option<i64>, Option<String>), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let user = key_by.contains(&"user").then_some(r.user).flatten();
        let region = key_by
            .contains(&"region")
            .then(|| r.region.map(str::to_string))
            .flatten();
        by_key.entry((user, region)).or_default().push(r);
    }
    let mut out = BTreeMap::new();
    for ((user, region), mut rs) in by_key {
        rs.sort_by_key(|r| r.ts);
        let mut sessions: Vec<Vec<&Row>> = Vec::new();
        for r in rs {
            match sessions.last_mut() {
                Some(s) if r.ts - s.last().unwrap().ts <= gap => s.push(r),
                _ => sessions.push(vec![r]),
            }
        }
        for s in sessions {
            let amounts: Vec<f64> = s.iter().filter_map(|r| r.amount).collect();
            let total = (!amounts.is_empty()).then(|| amounts.iter().sum::<f64>());
            let key = (user, region.clone(), s[0].ts, s.last().unwrap().ts + gap);
            let aggs = (
                s.len() as i64,
                total.map(f64::to_bits),
                s.iter().map(|r| r.ts).max(),
                total.map(|t| (t / amounts.len() as f64).to_bits()),
            );
            out.insert(key, aggs);
        }
    }
    out
}

fn collect(out: &[RecordBatch], key_by: &[&str]) -> BTreeMap<Key, Aggs> {
    let mut got = BTreeMap::new();
    for b in out {
        let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
        for i in 0..b.num_rows() {
            let user = key_by.contains(&"user").then(|| col("user")).and_then(|c| {
                let c = c.as_primitive::<Int64Type>();
                c.is_valid(i).then(|| c.value(i))
            });
            let region = key_by
                .contains(&"region")
                .then(|| col("region"))
                .and_then(|c| {
                    let c = c.as_string::<i32>();
                    c.is_valid(i).then(|| c.value(i).to_string())
                });
            let ts = |name: &str| {
                col(name)
                    .as_primitive::<TimestampMillisecondType>()
                    .value(i)
            };
            let opt_f = |name: &str| {
                let c = col(name);
                let c = c.as_primitive::<Float64Type>();
                c.is_valid(i).then(|| c.value(i).to_bits())
            };
            let last = col("last_ts");
            let last = last.as_primitive::<TimestampMillisecondType>();
            let key = (user, region, ts("window_start"), ts("window_end"));
            let aggs = (
                col("n").as_primitive::<Int64Type>().value(i),
                opt_f("total"),
                last.is_valid(i).then(|| last.value(i)),
                opt_f("mean"),
            );
            assert!(
                got.insert(key.clone(), aggs).is_none(),
                "session {key:?} emitted twice"
            );
        }
    }
    got
}

/// Sparse per-key activity (steps of 0..=3 gaps) so sessions both continue
/// and break, delivered out of order within `jitter` ms.
fn rows(n: usize, keys: i64, gap: i64, jitter: i64) -> Vec<Row> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut clock = vec![1_767_225_600_000_i64; keys as usize];
    let mut out: Vec<(i64, Row)> = (0..n)
        .map(|i| {
            let k = (next() % keys as u64) as i64;
            clock[k as usize] += (next() % (3 * gap as u64 + 1)) as i64;
            let ts = clock[k as usize];
            let region = [Some("eu"), Some("us"), None][i % 3];
            let amount = (i % 13 != 12).then(|| (next() % 1000) as f64 / 4.0);
            // Delivery order: event time plus a random delay below the jitter.
            let arrival = ts + (next() % jitter as u64) as i64;
            let user = (i % 41 != 40).then_some(k);
            (
                arrival,
                Row {
                    user,
                    region,
                    ts,
                    amount,
                },
            )
        })
        .collect();
    out.sort_by_key(|(a, _)| *a);
    out.into_iter().map(|(_, r)| r).collect()
}

fn run(key_by: &[&str]) {
    let gap = 100;
    let spec = spec(key_by, gap as u64, 300);
    let wm = WatermarkAssigner::new(&input_schema(), "ts", 300).unwrap();
    let mut h = OperatorHarness::new(vec![Box::new(wm), Box::new(session(&spec))]);
    let data = rows(3_000, 9, gap, 300);
    let mut out = Vec::new();
    for chunk in data.chunks(61) {
        out.extend(batches(&h.batch(to_batch(chunk)).unwrap()));
    }
    assert_eq!(
        h.metrics(1).late_records_dropped,
        0,
        "jitter within the bound"
    );
    let end = h.end().unwrap();
    assert_eq!(watermarks(&end), [i64::MAX]);
    out.extend(batches(&end));
    let want = reference(&data, key_by, gap);
    let got = collect(&out, key_by);
    assert!(want.len() > 100, "the data should make many sessions");
    assert_eq!(got.len(), want.len(), "number of sessions");
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "session {k:?}");
    }
}

#[test]
fn session_int64_key_out_of_order_matches_reference() {
    run(&["user"]);
}

#[test]
fn session_composite_key_out_of_order_matches_reference() {
    run(&["region", "user"]);
}

#[test]
fn session_bridging_record_merges_two_sessions_across_batches() {
    let spec = spec(&["user"], 100, 0);
    let mut s = session(&spec);
    let mut c = Collector::new();
    // Key 1: [0, 100) and [200, 300); key 2 between them does not interfere.
    s.on_batch(to_batch(&[row(1, 0), row(1, 200), row(2, 150)]), &mut c)
        .unwrap();
    assert_eq!(s.open_sessions(), 3);
    // 100 touches both ends: [0, 100) + [100, 200) + [200, 300) is one session.
    s.on_batch(to_batch(&[row(1, 100)]), &mut c).unwrap();
    assert_eq!(s.open_sessions(), 2);
    s.on_watermark(i64::MAX, &mut c).unwrap();
    let out = batches(&c.drain().collect::<Vec<_>>());
    let got = collect(&out, &["user"]);
    let ones: Vec<_> = got.iter().filter(|(k, _)| k.0 == Some(1)).collect();
    assert_eq!(ones.len(), 1, "{got:?}");
    assert_eq!((ones[0].0.2, ones[0].0.3), (0, 300));
    assert_eq!(
        ones[0].1.0, 3,
        "all three records are in the merged session"
    );
}

#[test]
fn session_merge_within_one_batch_keeps_every_row() {
    let spec = spec(&["user"], 10, 0);
    let mut s = session(&spec);
    let mut c = Collector::new();
    // 0, 40, 20 (three sessions), then 10 and 30 bridge them: 0-10-20-30-40.
    let batch = [row(7, 0), row(7, 40), row(7, 20), row(7, 10), row(7, 30)];
    s.on_batch(to_batch(&batch), &mut c).unwrap();
    assert_eq!(s.open_sessions(), 1);
    s.on_watermark(49, &mut c).unwrap();
    let got = collect(&batches(&c.drain().collect::<Vec<_>>()), &["user"]);
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [(
            (Some(7), None, 0, 50),
            (5, Some(5.0f64.to_bits()), Some(40), Some(1.0f64.to_bits()))
        )]
    );
}

#[test]
fn session_fires_when_watermark_reaches_end_minus_one() {
    let spec = spec(&["user"], 100, 0);
    let mut s = session(&spec);
    let mut c = Collector::new();
    s.on_batch(to_batch(&[row(1, 1_000), row(1, 1_050)]), &mut c)
        .unwrap();
    s.on_watermark(1_148, &mut c).unwrap();
    let out: Vec<_> = c.drain().collect();
    assert!(
        batches(&out).is_empty(),
        "[1000, 1150) needs watermark 1149"
    );
    assert_eq!(watermarks(&out), [1_148]);
    s.on_watermark(1_149, &mut c).unwrap();
    let out = batches(&c.drain().collect::<Vec<_>>());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].num_rows(), 1);
    assert_eq!(s.open_sessions(), 0);
    // A watermark that does not advance is neither acted on nor forwarded.
    s.on_watermark(1_100, &mut c).unwrap();
    assert!(c.is_empty());
}

#[test]
fn session_late_records_are_dropped_and_counted() {
    let spec = spec(&["user"], 100, 0);
    let mut s = session(&spec);
    let mut c = Collector::new();
    s.on_batch(to_batch(&[row(1, 1_000)]), &mut c).unwrap();
    s.on_watermark(1_099, &mut c).unwrap(); // fires [1000, 1100)
    c.drain().for_each(drop);
    // 1000 + 100 - 1 <= 1099: late. 1001's session [1001, 1101) is still open.
    let mut late_ts = row(2, 0);
    late_ts.ts = 1_000;
    let mut no_ts = to_batch(&[row(3, 5_000)]);
    no_ts = RecordBatch::try_new(
        no_ts.schema(),
        vec![
            no_ts.column(0).clone(),
            no_ts.column(1).clone(),
            Arc::new(TimestampMillisecondArray::from(vec![None::<i64>])),
            no_ts.column(3).clone(),
        ],
    )
    .unwrap();
    s.on_batch(to_batch(&[late_ts, row(1, 999), row(1, 1_001)]), &mut c)
        .unwrap();
    s.on_batch(no_ts, &mut c).unwrap();
    assert_eq!(s.metrics().late_records_dropped, 3);
    assert_eq!(s.open_sessions(), 1);
    s.on_watermark(i64::MAX, &mut c).unwrap();
    let got = collect(&batches(&c.drain().collect::<Vec<_>>()), &["user"]);
    assert_eq!(
        got.keys().map(|k| (k.2, k.3)).collect::<Vec<_>>(),
        [(1_001, 1_101)]
    );
}

#[test]
fn session_fired_keys_are_compacted_and_keys_still_work() {
    let spec = spec(&["region", "user"], 10, 0);
    let mut s = session(&spec);
    let mut c = Collector::new();
    let many: Vec<Row> = (0..5_000).map(|k| row(k, k)).collect();
    s.on_batch(to_batch(&many), &mut c).unwrap();
    assert_eq!(s.keys_held(), 5_000);
    // Fire all but the last 100 keys' sessions.
    s.on_watermark(4_908, &mut c).unwrap();
    let fired: usize = batches(&c.drain().collect::<Vec<_>>())
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(fired, 4_900);
    assert_eq!(s.keys_held(), 100, "dead keys are dropped");
    // Old live keys still find their sessions; old dead keys start new ones.
    s.on_batch(to_batch(&[row(4_999, 5_005), row(3, 6_000)]), &mut c)
        .unwrap();
    s.on_watermark(i64::MAX, &mut c).unwrap();
    let got = collect(
        &batches(&c.drain().collect::<Vec<_>>()),
        &["region", "user"],
    );
    assert_eq!(got.len(), 101);
    assert_eq!(
        got[&(Some(4_999), Some("eu".into()), 4_999, 5_015)].0,
        2,
        "the surviving key's session was extended"
    );
    assert!(got.contains_key(&(Some(3), Some("eu".into()), 6_000, 6_010)));
}

#[test]
fn session_output_matches_the_planned_schema() {
    let spec = spec(&["region", "user"], 50, 0);
    let mut s = session(&spec);
    let mut c = Collector::new();
    s.on_batch(to_batch(&rows(200, 3, 50, 1)), &mut c).unwrap();
    s.on_watermark(i64::MAX, &mut c).unwrap();
    let planned = window_layout(&NodeId::from("s"), &spec, &input_schema())
        .unwrap()
        .output;
    let out = batches(&c.drain().collect::<Vec<_>>());
    assert!(!out.is_empty());
    for b in out {
        assert_eq!(b.schema(), planned);
    }
}

#[test]
fn session_build_picks_the_operator_by_window_kind() {
    let spec = spec(&["user"], 50, 0);
    assert!(super::super::build(&NodeId::from("s"), &spec, &input_schema(), &ctx()).is_ok());
    assert!(
        super::super::Window::new(&NodeId::from("s"), &spec, &input_schema(), &ctx()).is_err(),
        "the aligned-window operator refuses a session spec"
    );
}

#[path = "session_snapshot_tests.rs"]
mod snapshot;

#[path = "session_lateness_tests.rs"]
mod lateness;
