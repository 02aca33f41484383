//! `top_n` against straightforward references: sort each group, keep the
//! first `n` (and the ties), emitted once the watermark completes the group.

use super::*;
use crate::operators::harness::{OperatorHarness, batches, watermarks};
use crate::operators::watermark::WatermarkAssigner;
use crate::operators::window;
use arrow::array::{Float64Array, TimestampMillisecondArray};
use arrow::datatypes::{Field, Schema, TimeUnit, TimestampMillisecondType};
use eddy_sdk::ids::{JobId, VertexId};
use eddy_sdk::spec::{
    AggregateFn, AggregateSpec, EventTimeSpec, HumanDuration, SortOrder, TopNEventTime, WindowKind,
    WindowSpec,
};
use std::collections::BTreeMap;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// Like a window's output: a group column, bounds, a score and a row id.
fn input_schema(score: DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("window_end", ts_type(), true),
        Field::new("score", score, true),
        Field::new("id", DataType::Int64, false),
    ]))
}

#[derive(Clone, Copy, Debug)]
struct Row {
    g: i64,
    end: i64,
    score: Option<i64>,
    id: i64,
}

fn to_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        input_schema(DataType::Int64),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.g))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.end),
            )),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.score))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
        ],
    )
    .unwrap()
}

fn spec(n: u32, order: SortOrder, with_ties: bool) -> TopNSpec {
    TopNSpec {
        partition_by: vec!["g".into(), "window_end".into()],
        order_by: "score".into(),
        order,
        n,
        with_ties,
        event_time: TopNEventTime {
            column: "window_end".into(),
        },
        rank_column: Some("rank".into()),
    }
}

fn ctx() -> TaskContext {
    TaskContext {
        job_id: JobId::from("j"),
        vertex: VertexId(2),
        subtask: 0,
        parallelism: 1,
        max_parallelism: 128,
        latency_interval: None,
        attempt: 0,
        exactly_once: false,
    }
}

fn top_n(spec: &TopNSpec, input: &SchemaRef) -> TopN {
    TopN::new(&NodeId::from("top"), spec, input, &ctx()).unwrap()
}

/// (g, end) → sorted (score, id, rank) of the emitted rows.
type Groups = BTreeMap<(i64, i64), Vec<(i64, i64, i64)>>;

fn collect(out: &[RecordBatch]) -> Groups {
    let mut got: Groups = BTreeMap::new();
    for b in out {
        let g = b.column(0).as_primitive::<Int64Type>();
        let end = b.column(1).as_primitive::<TimestampMillisecondType>();
        let score = b.column(2).as_primitive::<Int64Type>();
        let id = b.column(3).as_primitive::<Int64Type>();
        let rank = b.column(4).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.entry((g.value(i), end.value(i))).or_default().push((
                score.value(i),
                id.value(i),
                rank.value(i),
            ));
        }
    }
    got.values_mut().for_each(|v| v.sort());
    got
}

/// Every group sorted best first; RANK() = 1 + rows strictly better.
fn reference(rows: &[Row], n: usize, order: SortOrder, with_ties: bool) -> Groups {
    let mut groups: BTreeMap<(i64, i64), Vec<(i64, i64)>> = BTreeMap::new();
    for r in rows {
        if let Some(s) = r.score {
            groups.entry((r.g, r.end)).or_default().push((s, r.id));
        }
    }
    groups
        .into_iter()
        .map(|(k, mut v)| {
            let better = |a: i64, b: i64| match order {
                SortOrder::Desc => a > b,
                SortOrder::Asc => a < b,
            };
            v.sort_by(|a, b| match order {
                SortOrder::Desc => b.0.cmp(&a.0),
                SortOrder::Asc => a.0.cmp(&b.0),
            });
            let ranked: Vec<(i64, i64, i64)> = v
                .iter()
                .map(|&(s, id)| {
                    let rank = 1 + v.iter().filter(|o| better(o.0, s)).count() as i64;
                    (s, id, rank)
                })
                .collect();
            let mut kept: Vec<_> = if with_ties {
                ranked.into_iter().filter(|r| r.2 <= n as i64).collect()
            } else {
                ranked.into_iter().take(n).collect()
            };
            kept.sort();
            (k, kept)
        })
        .collect()
}

/// Rows of 30 groups (10 keys x 3 window ends), scores in a small range so
/// ties are common, some null.
fn rows(count: usize) -> Vec<Row> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count as i64)
        .map(|id| Row {
            g: (next() % 10) as i64,
            end: 1_000 * (1 + (next() % 3) as i64),
            score: (id % 17 != 16).then(|| (next() % 12) as i64 - 4),
            id,
        })
        .collect()
}

fn check(n: u32, order: SortOrder, with_ties: bool) {
    let data = rows(2_000);
    let spec = spec(n, order, with_ties);
    let mut h = OperatorHarness::new(vec![Box::new(top_n(&spec, &input_schema(DataType::Int64)))]);
    let mut out = Vec::new();
    for chunk in data.chunks(37) {
        let step = h.batch(to_batch(chunk)).unwrap();
        assert!(batches(&step).is_empty(), "nothing before a watermark");
    }
    out.extend(batches(&h.watermark(i64::MAX).unwrap()));
    let got = collect(&out);
    let want = reference(&data, n as usize, order, with_ties);
    assert_eq!(got.len(), want.len());
    for (k, want_rows) in &want {
        let got_rows = &got[k];
        if with_ties {
            assert_eq!(got_rows, want_rows, "group {k:?}");
        } else {
            // Which of the rows tied at the n-th place wins is unspecified:
            // compare scores and ranks, and check every id is a real member.
            let strip = |v: &Vec<(i64, i64, i64)>| v.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>();
            assert_eq!(strip(got_rows), strip(want_rows), "group {k:?}");
            for r in got_rows {
                let src = data[r.1 as usize];
                assert_eq!((src.g, src.end, src.score), (k.0, k.1, Some(r.0)));
            }
        }
    }
}

#[test]
fn top_n_desc_with_ties_matches_reference() {
    check(1, SortOrder::Desc, true);
    check(3, SortOrder::Desc, true);
}

#[test]
fn top_n_asc_with_ties_matches_reference() {
    check(2, SortOrder::Asc, true);
}

#[test]
fn top_n_without_ties_keeps_exactly_n() {
    check(1, SortOrder::Desc, false);
    check(4, SortOrder::Asc, false);
}

#[test]
fn top_n_groups_complete_only_when_the_watermark_passes() {
    let spec = spec(1, SortOrder::Desc, true);
    let mut t = top_n(&spec, &input_schema(DataType::Int64));
    let mut c = Collector::new();
    let r = |g, end, score, id| Row {
        g,
        end,
        score: Some(score),
        id,
    };
    t.on_batch(
        to_batch(&[r(1, 1_000, 5, 0), r(1, 2_000, 9, 1), r(2, 1_000, 7, 2)]),
        &mut c,
    )
    .unwrap();
    t.on_watermark(998, &mut c).unwrap();
    let out: Vec<_> = c.drain().collect();
    assert!(
        batches(&out).is_empty(),
        "window_end 1000 needs watermark 999"
    );
    assert_eq!(watermarks(&out), [998]);
    // A better row still enters the open group.
    t.on_batch(to_batch(&[r(1, 1_000, 6, 3)]), &mut c).unwrap();
    t.on_watermark(999, &mut c).unwrap();
    let out: Vec<_> = c.drain().collect();
    let got = collect(&batches(&out));
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [((1, 1_000), vec![(6, 3, 1)]), ((2, 1_000), vec![(7, 2, 1)])]
    );
    assert_eq!(watermarks(&out), [999], "the watermark follows the output");
    assert_eq!(t.open_groups(), 1);
    // A row for an emitted group is late.
    t.on_batch(to_batch(&[r(1, 1_000, 100, 4)]), &mut c)
        .unwrap();
    assert_eq!(t.metrics().late_records_dropped, 1);
    // The end of input emits what is left.
    t.on_end(&mut c).unwrap();
    let got = collect(&batches(&c.drain().collect::<Vec<_>>()));
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [(1, 2_000)]);
}

#[test]
fn top_n_memory_is_bounded_by_n_plus_ties() {
    let spec = spec(2, SortOrder::Desc, true);
    let mut t = top_n(&spec, &input_schema(DataType::Int64));
    let mut c = Collector::new();
    // Rising scores: every row enters and pushes an older one out.
    for chunk in (0..10_000).collect::<Vec<i64>>().chunks(500) {
        let rows: Vec<Row> = chunk
            .iter()
            .map(|&i| Row {
                g: 0,
                end: 1_000,
                score: Some(i / 2), // pairs tie
                id: i,
            })
            .collect();
        t.on_batch(to_batch(&rows), &mut c).unwrap();
        assert!(t.rows_held() <= 3, "held {}", t.rows_held());
    }
    assert_eq!(t.rows_held(), 2, "the top two are one tied pair");
}

#[test]
fn top_n_float_scores_order_negatives_and_nan() {
    let schema = input_schema(DataType::Float64);
    let values = [-0.5, 3.25, f64::NAN, -7.0, 0.0, 3.0];
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![0; 6])),
            Arc::new(TimestampMillisecondArray::from(vec![10; 6])),
            Arc::new(Float64Array::from(values.to_vec())),
            Arc::new(Int64Array::from((0..6).collect::<Vec<i64>>())),
        ],
    )
    .unwrap();
    let ids = |order| {
        let mut t = top_n(&spec(3, order, false), &schema);
        let mut c = Collector::new();
        t.on_batch(batch.clone(), &mut c).unwrap();
        t.on_watermark(i64::MAX, &mut c).unwrap();
        let out = batches(&c.drain().collect::<Vec<_>>());
        out[0]
            .column(3)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    };
    // total_cmp order: NaN above every number.
    assert_eq!(ids(SortOrder::Desc), [2, 1, 5]);
    assert_eq!(ids(SortOrder::Asc), [3, 0, 4]);
}

#[test]
fn top_n_scores_preserve_unsigned_order() {
    let col: ArrayRef = Arc::new(arrow::array::UInt64Array::from(vec![
        0,
        u64::MAX,
        1 << 63,
        5,
    ]));
    let mut s = Vec::new();
    scores_of(&col, true, &mut s).unwrap();
    assert!(s[1] > s[2] && s[2] > s[3] && s[3] > s[0]);
    scores_of(&col, false, &mut s).unwrap();
    assert!(s[0] > s[3] && s[3] > s[2] && s[2] > s[1]);
}

/// The Nexmark q5 shape: bids -> sliding count per auction -> the auctions
/// with the most bids per window, against counting every window directly.
#[test]
fn top_n_after_sliding_window_count_matches_reference() {
    let bid_schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
    ]));
    let (size, slide) = (200i64, 50i64);
    let window_spec = WindowSpec {
        key_by: vec!["auction".into()],
        event_time: EventTimeSpec {
            column: "ts".into(),
            max_out_of_orderness: HumanDuration::from_millis(100),
        },
        window: WindowKind::Sliding {
            size: HumanDuration::from_millis(size as u64),
            slide: HumanDuration::from_millis(slide as u64),
        },
        aggregates: vec![AggregateSpec {
            func: AggregateFn::Count,
            column: None,
            alias: "n".into(),
        }],
        allowed_lateness: HumanDuration::default(),
        watermark_alignment: None,
    };
    let counts = window::build(&NodeId::from("counts"), &window_spec, &bid_schema, &ctx()).unwrap();
    let count_schema =
        eddy_sdk::plan::schema::window_layout(&NodeId::from("counts"), &window_spec, &bid_schema)
            .unwrap()
            .output;
    let top_spec = TopNSpec {
        partition_by: vec!["window_start".into(), "window_end".into()],
        order_by: "n".into(),
        order: SortOrder::Desc,
        n: 1,
        with_ties: true,
        event_time: TopNEventTime {
            column: "window_end".into(),
        },
        rank_column: None,
    };
    let mut h = OperatorHarness::new(vec![
        Box::new(WatermarkAssigner::new(&bid_schema, "ts", 100).unwrap()),
        counts,
        Box::new(top_n(&top_spec, &count_schema)),
    ]);
    // ~65 bids per window over 6 auctions: clear winners and ties; times
    // jittered backwards within the watermark bound.
    let mut seed = 7u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let bids: Vec<(i64, i64)> = (0..4_000i64)
        .map(|i| {
            let auction = (next() % 6) as i64;
            (auction, 10_000 + i * 3 - (next() % 90) as i64)
        })
        .collect();
    let mut out = Vec::new();
    for chunk in bids.chunks(64) {
        let b = RecordBatch::try_new(
            bid_schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(chunk.iter().map(|b| b.0))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    chunk.iter().map(|b| b.1),
                )),
            ],
        )
        .unwrap();
        out.extend(batches(&h.batch(b).unwrap()));
    }
    out.extend(batches(&h.end().unwrap()));
    assert_eq!(h.metrics(1).late_records_dropped, 0);

    // Reference: count per (window, auction), keep the maxima per window.
    let mut per_window: BTreeMap<(i64, i64), BTreeMap<i64, i64>> = BTreeMap::new();
    for &(auction, ts) in &bids {
        let mut start = ts - ts.rem_euclid(slide);
        while start > ts - size {
            *per_window
                .entry((start, start + size))
                .or_default()
                .entry(auction)
                .or_default() += 1;
            start -= slide;
        }
    }
    let want: BTreeMap<(i64, i64), Vec<(i64, i64)>> = per_window
        .into_iter()
        .map(|(w, counts)| {
            let max = counts.values().copied().max().unwrap();
            let winners = counts
                .into_iter()
                .filter(|&(_, n)| n == max)
                .collect::<Vec<_>>();
            (w, winners)
        })
        .collect();
    let mut got: BTreeMap<(i64, i64), Vec<(i64, i64)>> = BTreeMap::new();
    for b in &out {
        let auction = b.column(0).as_primitive::<Int64Type>();
        let start = b.column(1).as_primitive::<TimestampMillisecondType>();
        let end = b.column(2).as_primitive::<TimestampMillisecondType>();
        let n = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.entry((start.value(i), end.value(i)))
                .or_default()
                .push((auction.value(i), n.value(i)));
        }
    }
    got.values_mut().for_each(|v| v.sort());
    assert!(
        want.values().any(|w| w.len() > 1),
        "the data should produce ties"
    );
    assert_eq!(got, want);
}

/// A planned q5-shaped job builds top_n (and its sink) into the last vertex,
/// with no watermark assigner of its own.
#[test]
fn top_n_build_chain_from_a_planned_job() {
    let spec = eddy_sdk::spec::parse_yaml_or_json(
        r#"
name: q5
parallelism: 1
nodes:
  - {id: gen, kind: datagen, count: 10, fields: [{name: auction, type: int64, gen: sequence},
      {name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}]}
  - {id: counts, kind: window, input: gen, key_by: [auction], event_time: {column: ts},
     window: {type: session, gap: 1s}, aggregates: [{fn: count, as: n}]}
  - {id: hot, kind: top_n, input: counts, partition_by: [window_end], order_by: n, n: 1,
     event_time: {column: window_end}}
  - {id: out, kind: blackhole, input: hot}
"#,
    )
    .unwrap();
    let (graph, schemas) = eddy_sdk::plan::validate(&spec, None).unwrap();
    let chain = crate::operators::build_chain(&spec, &graph, &schemas, &ctx()).unwrap();
    assert!(chain.source.is_none());
    assert_eq!(chain.operators.len(), 2, "top_n and the sink, no assigner");
    assert_eq!(
        &chain.output_schema,
        schemas.get(&NodeId::from("hot")).unwrap()
    );
}

/// Runs a parallelism-1 job vertex by vertex, feeding each vertex's output
/// (batches and watermarks, in order) to the next, as the exchange would.
fn run_job(spec: &eddy_sdk::spec::JobSpec) -> Vec<RecordBatch> {
    use eddy_sdk::operator::Element;
    let (graph, schemas) = eddy_sdk::plan::validate(spec, None).unwrap();
    let mut elements: Vec<Element> = Vec::new();
    for v in &graph.vertices {
        let vctx = TaskContext {
            vertex: v.id,
            ..ctx()
        };
        let chain = crate::operators::build_chain(spec, &graph, &schemas, &vctx).unwrap();
        let mut h = OperatorHarness::new(chain.operators);
        let mut out = Vec::new();
        if let Some(mut source) = chain.source {
            for b in crate::operators::harness::drain_source(source.as_mut()) {
                out.extend(h.batch(b).unwrap());
            }
            out.extend(h.watermark(i64::MAX).unwrap());
            out.extend(h.end().unwrap());
        } else {
            for e in elements.drain(..) {
                out.extend(h.push(e).unwrap());
            }
        }
        elements = out;
    }
    batches(&elements)
}

/// A `bench/nexmark` spec over `count` events, without its sink.
fn bench_query(yaml: &str, count: u64) -> eddy_sdk::spec::JobSpec {
    let mut spec = eddy_sdk::spec::parse_yaml_or_json(yaml).unwrap();
    assert!(spec.nodes.pop().unwrap().kind.is_sink());
    let eddy_sdk::spec::NodeKind::Nexmark(n) = &mut spec.nodes[0].kind else {
        panic!("a bench query starts with its nexmark source")
    };
    n.count = Some(count);
    spec
}

/// (auction or bidder, date_time) of every bid of events `0..count`.
fn nexmark_bids(count: u64) -> Vec<(i64, i64, i64)> {
    use eddy_sdk::nexmark::{EventType, Generator, GeneratorConfig};
    let mut g = Generator::new(GeneratorConfig::default());
    (0..count)
        .filter(|n| EventType::of(*n) == EventType::Bid)
        .map(|n| {
            let b = g.bid(n);
            (b.auction, b.bidder, b.date_time)
        })
        .collect()
}

/// `bench/nexmark/q5.yaml` over 100 000 events equals the SQL's answer:
/// per 10 s window every 2 s, the auctions whose bid count is the maximum.
#[test]
fn nexmark_q5_spec_matches_reference() {
    let count = 100_000;
    let out = run_job(&bench_query(
        include_str!("../../../bench/nexmark/q5.yaml"),
        count,
    ));
    let mut per_window: BTreeMap<i64, BTreeMap<i64, i64>> = BTreeMap::new();
    for (auction, _, ts) in nexmark_bids(count) {
        let mut start = ts - ts.rem_euclid(2_000);
        while start > ts - 10_000 {
            *per_window
                .entry(start)
                .or_default()
                .entry(auction)
                .or_default() += 1;
            start -= 2_000;
        }
    }
    let mut want: Vec<(i64, i64)> = per_window
        .into_values()
        .flat_map(|counts| {
            let max = counts.values().copied().max().unwrap_or(0);
            counts.into_iter().filter(move |&(_, n)| n == max)
        })
        .collect();
    let mut got: Vec<(i64, i64)> = out
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_primitive::<Int64Type>().clone();
            let n = b.column(1).as_primitive::<Int64Type>().clone();
            (0..b.num_rows()).map(move |i| (a.value(i), n.value(i)))
        })
        .collect();
    want.sort();
    got.sort();
    assert!(want.len() > 5, "{}", want.len());
    assert_eq!(got, want);
}

/// `bench/nexmark/q11.yaml` over 100 000 events equals the SQL's answer:
/// per bidder, bids at most 10 s apart form one session.
#[test]
fn nexmark_q11_spec_matches_reference() {
    let count = 100_000;
    let out = run_job(&bench_query(
        include_str!("../../../bench/nexmark/q11.yaml"),
        count,
    ));
    let mut by_bidder: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (_, bidder, ts) in nexmark_bids(count) {
        by_bidder.entry(bidder).or_default().push(ts);
    }
    let mut want = Vec::new();
    for (bidder, mut times) in by_bidder {
        times.sort();
        let (mut first, mut last, mut n) = (times[0], times[0], 0);
        for t in times {
            if t - last > 10_000 {
                want.push((bidder, first, last + 10_000, n));
                (first, n) = (t, 0);
            }
            last = t;
            n += 1;
        }
        want.push((bidder, first, last + 10_000, n));
    }
    let mut got = Vec::new();
    for b in &out {
        let bidder = b.column(0).as_primitive::<Int64Type>();
        let start = b.column(1).as_primitive::<TimestampMillisecondType>();
        let end = b.column(2).as_primitive::<TimestampMillisecondType>();
        let n = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.push((bidder.value(i), start.value(i), end.value(i), n.value(i)));
        }
    }
    want.sort();
    got.sort();
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(got, want);
}

#[path = "top_n_snapshot_tests.rs"]
mod snapshot;
