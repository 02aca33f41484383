use super::*;
use crate::operators::harness::{OperatorHarness, batches, watermarks};
use crate::operators::watermark::WatermarkAssigner;
use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{Field, Float64Type, Schema, TimeUnit};
use eddy_sdk::ids::{JobId, VertexId};
use eddy_sdk::spec::{AggregateFn, AggregateSpec, EventTimeSpec, HumanDuration, WindowKind};
use std::collections::BTreeMap;
use std::sync::Arc;

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int64, true),
        Field::new("region", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("amount", DataType::Float64, true),
        Field::new("id", DataType::Int64, false),
    ]))
}

#[derive(Clone, Debug)]
struct Row {
    user: Option<i64>,
    region: Option<String>,
    ts: i64,
    amount: Option<f64>,
    id: i64,
}

fn to_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.user).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.region.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.ts).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.amount).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn spec(key_by: &[&str], window: WindowKind, bound_ms: u64) -> WindowSpec {
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
        window,
        aggregates: vec![
            agg(AggregateFn::Count, None, "n"),
            agg(AggregateFn::Sum, Some("amount"), "total"),
            agg(AggregateFn::Min, Some("id"), "first_id"),
            agg(AggregateFn::Max, Some("ts"), "last_ts"),
            agg(AggregateFn::Avg, Some("amount"), "mean"),
            agg(AggregateFn::Count, Some("amount"), "priced"),
        ],
        allowed_lateness: HumanDuration::default(),
        watermark_alignment: None,
    }
}

fn tumbling(ms: u64) -> WindowKind {
    WindowKind::Tumbling {
        size: HumanDuration::from_millis(ms),
    }
}

fn sliding(size: u64, slide: u64) -> WindowKind {
    WindowKind::Sliding {
        size: HumanDuration::from_millis(size),
        slide: HumanDuration::from_millis(slide),
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

/// A watermark assigner feeding the window, as a job graph chains them.
fn harness(spec: &WindowSpec) -> OperatorHarness {
    let wm = WatermarkAssigner::new(
        &input_schema(),
        "ts",
        spec.event_time.max_out_of_orderness.as_millis_i64(),
    )
    .unwrap();
    let window = Window::new(&NodeId::from("w"), spec, &input_schema(), &ctx()).unwrap();
    OperatorHarness::new(vec![Box::new(wm), Box::new(window)])
}

/// (key, window_start, window_end) → (n, total, first_id, last_ts, mean, priced).
type Key = (Option<i64>, Option<String>, i64, i64);
type Aggs = (i64, Option<u64>, Option<i64>, Option<i64>, Option<u64>, i64);

/// The straightforward definition: every window of every row, grouped.
fn reference(rows: &[Row], key_by: &[&str], size: i64, slide: i64) -> BTreeMap<Key, Aggs> {
    let mut groups: BTreeMap<Key, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let last_start = r.ts.div_euclid(slide) * slide;
        let mut start = last_start;
        while start > r.ts - size {
            let user = key_by.contains(&"user").then_some(r.user).flatten();
            let region = key_by
                .contains(&"region")
                .then(|| r.region.clone())
                .flatten();
            groups
                .entry((user, region, start, start + size))
                .or_default()
                .push(r);
            start -= slide;
        }
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let amounts: Vec<f64> = rs.iter().filter_map(|r| r.amount).collect();
            let total = (!amounts.is_empty()).then(|| amounts.iter().sum::<f64>());
            let mean = total.map(|t| t / amounts.len() as f64);
            let aggs = (
                rs.len() as i64,
                total.map(f64::to_bits),
                rs.iter().map(|r| r.id).min(),
                rs.iter().map(|r| r.ts).max(),
                mean.map(f64::to_bits),
                amounts.len() as i64,
            );
            (k, aggs)
        })
        .collect()
}

fn collect(out: &[RecordBatch], key_by: &[&str]) -> BTreeMap<Key, Aggs> {
    let mut got = BTreeMap::new();
    for b in out {
        let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
        let nk = key_by.len();
        assert_eq!(b.schema().field(nk).name(), "window_start");
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
            let first = col("first_id");
            let first = first.as_primitive::<Int64Type>();
            let last = col("last_ts");
            let last = last.as_primitive::<TimestampMillisecondType>();
            let key = (user, region, ts("window_start"), ts("window_end"));
            let aggs = (
                col("n").as_primitive::<Int64Type>().value(i),
                opt_f("total"),
                first.is_valid(i).then(|| first.value(i)),
                last.is_valid(i).then(|| last.value(i)),
                opt_f("mean"),
                col("priced").as_primitive::<Int64Type>().value(i),
            );
            assert!(
                got.insert(key.clone(), aggs).is_none(),
                "window {key:?} emitted twice"
            );
        }
    }
    got
}

/// Rows over ~10 s with keys cycling and timestamps jittered backwards by up
/// to `jitter` ms (less than the watermark bound, so nothing is late).
fn rows(n: usize, jitter: i64) -> Vec<Row> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|i| {
            let i = i as i64;
            let user = if i % 50 == 49 { None } else { Some(i % 7) };
            let region = if i % 40 == 39 {
                None
            } else {
                Some(["eu", "us", "apac"][(i % 3) as usize].to_string())
            };
            // Quarters add exactly, so the sum does not depend on the order rows
            // are folded in (which differs between windows of a sliding batch).
            let amount = if i % 11 == 10 {
                None
            } else {
                Some((next() % 1000) as f64 / 4.0)
            };
            let ts = 1_767_225_600_000 + i * 5 - (next() % jitter as u64) as i64;
            Row {
                user,
                region,
                ts,
                amount,
                id: i,
            }
        })
        .collect()
}

fn run(key_by: &[&str], window: WindowKind, size: i64, slide: i64) {
    let spec = spec(key_by, window, 200);
    let mut h = harness(&spec);
    let data = rows(2_000, 150);
    let mut out = Vec::new();
    for chunk in data.chunks(97) {
        out.extend(batches(&h.batch(to_batch(chunk)).unwrap()));
    }
    assert_eq!(
        h.metrics(1).late_records_dropped,
        0,
        "jitter within the bound is never late"
    );
    let end = h.end().unwrap();
    assert_eq!(watermarks(&end), [i64::MAX]);
    out.extend(batches(&end));
    let expected = reference(&data, key_by, size, slide);
    let got = collect(&out, key_by);
    assert_eq!(got.len(), expected.len());
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "window {k:?}");
    }
}

#[test]
fn window_tumbling_int64_key_matches_reference() {
    run(&["user"], tumbling(1_000), 1_000, 1_000);
}

#[test]
fn window_tumbling_composite_key_matches_reference() {
    run(&["region", "user"], tumbling(700), 700, 700);
}

#[test]
fn window_sliding_matches_reference() {
    run(&["user"], sliding(1_000, 250), 1_000, 250);
    run(&["region"], sliding(600, 200), 600, 200);
}

#[test]
fn window_fires_in_end_order_as_one_batch_per_watermark() {
    let spec = spec(&["user"], tumbling(1_000), 0);
    let mut w = Window::new(&NodeId::from("w"), &spec, &input_schema(), &ctx()).unwrap();
    let mut c = Collector::new();
    let row = |user, ts| Row {
        user: Some(user),
        region: None,
        ts,
        amount: Some(1.0),
        id: ts,
    };
    w.on_batch(
        to_batch(&[row(1, 2_500), row(2, 500), row(1, 1_500), row(1, 600)]),
        &mut c,
    )
    .unwrap();
    assert!(c.is_empty(), "nothing fires before a watermark");
    assert_eq!(w.open_windows(), 3);
    w.on_watermark(1_998, &mut c).unwrap();
    let out: Vec<_> = c.drain().collect();
    assert_eq!(watermarks(&out), [1_998]);
    let fired = batches(&out);
    assert_eq!(fired.len(), 1);
    let ends = fired[0]
        .column(2)
        .as_primitive::<TimestampMillisecondType>()
        .values()
        .to_vec();
    assert_eq!(
        ends,
        [1_000, 1_000],
        "window [1000, 2000) needs watermark 1999"
    );
    w.on_watermark(1_999, &mut c).unwrap();
    let fired = batches(&c.drain().collect::<Vec<_>>());
    assert_eq!(fired[0].num_rows(), 1);
    assert_eq!(w.open_windows(), 1);
    // A watermark that does not advance neither fires nor is forwarded.
    w.on_watermark(1_500, &mut c).unwrap();
    assert!(c.is_empty());
}

#[test]
fn window_late_records_are_dropped_and_counted() {
    let spec = spec(&["user"], sliding(1_000, 500), 0);
    let mut w = Window::new(&NodeId::from("w"), &spec, &input_schema(), &ctx()).unwrap();
    let mut c = Collector::new();
    let row = |ts| Row {
        user: Some(1),
        region: None,
        ts,
        amount: Some(2.0),
        id: ts,
    };
    w.on_batch(to_batch(&[row(1_200)]), &mut c).unwrap();
    w.on_watermark(1_499, &mut c).unwrap(); // fires [500, 1500)
    c.drain().for_each(drop);
    // 1_100 is in [500, 1500) (fired) and [1000, 2000) (open): kept for the
    // open one, not late. 900 is only in fired windows: late.
    w.on_batch(to_batch(&[row(1_100), row(900), row(400)]), &mut c)
        .unwrap();
    assert_eq!(w.metrics().late_records_dropped, 2);
    w.on_watermark(i64::MAX, &mut c).unwrap();
    let out = batches(&c.drain().collect::<Vec<_>>());
    let n = out[0]
        .column(3)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    let ends = out[0]
        .column(2)
        .as_primitive::<TimestampMillisecondType>()
        .values()
        .to_vec();
    assert_eq!(ends, [2_000]);
    assert_eq!(
        n,
        [2],
        "window [1000, 2000) holds 1200 and the late-but-not-for-it 1100"
    );
}

#[test]
fn window_output_matches_the_planned_schema() {
    let spec = spec(&["region", "user"], tumbling(1_000), 0);
    let mut h = harness(&spec);
    h.batch(to_batch(&rows(100, 1))).unwrap();
    let out = batches(&h.end().unwrap());
    let planned = window_layout(&NodeId::from("w"), &spec, &input_schema())
        .unwrap()
        .output;
    assert!(!out.is_empty());
    for b in out {
        assert_eq!(b.schema(), planned);
    }
}

#[path = "snapshot_tests.rs"]
mod snapshot;

#[path = "lateness_tests.rs"]
mod lateness;
