//! The `nexmark` source: its split across subtasks, its batches against the
//! generator, and the q1/q2 specs of `bench/nexmark` run through the chain.

use super::*;
use crate::operators::build_chain;
use crate::operators::harness::{OperatorHarness, batches, drain_source};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use eddy_sdk::ids::{JobId, VertexId};
use eddy_sdk::nexmark::GeneratorConfig;
use eddy_sdk::plan::{infer_schemas, validate};
use eddy_sdk::spec::{JobSpec, NexmarkTable, NodeKind, parse_yaml_or_json};

fn ctx(subtask: u32, parallelism: u32) -> TaskContext {
    TaskContext {
        job_id: JobId::from("j"),
        vertex: VertexId(0),
        subtask,
        parallelism,
        max_parallelism: 128,
        latency_interval: None,
        attempt: 0,
        exactly_once: false,
    }
}

fn spec(fields: &str) -> JobSpec {
    parse_yaml_or_json(&format!(
        "name: n\nnodes:\n  - {{id: src, kind: nexmark{fields}}}\n  - {{id: out, kind: blackhole, input: src}}\n"
    ))
    .unwrap()
}

fn source(spec: &JobSpec, subtask: u32, parallelism: u32) -> Nexmark {
    let NodeKind::Nexmark(n) = &spec.nodes[0].kind else {
        unreachable!("the first node is the nexmark source")
    };
    let schema = infer_schemas(spec)
        .unwrap()
        .get(&spec.nodes[0].id)
        .unwrap()
        .clone();
    Nexmark::new(&spec.nodes[0].id, n, schema, &ctx(subtask, parallelism))
}

/// Every row of every batch, each cell rendered, in emission order.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| {
                arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default())
                    .unwrap()
            })
            .collect();
        for i in 0..b.num_rows() {
            let cells: Vec<String> = formatters.iter().map(|f| f.value(i).to_string()).collect();
            out.push(cells.join("|"));
        }
    }
    out
}

/// The union of the subtasks' rows is the same at parallelism 1 and 3, for
/// every table, and no row is generated twice.
#[test]
fn nexmark_union_at_parallelism_3_equals_parallelism_1() {
    for table in ["bid", "auction", "person"] {
        let s = spec(&format!(", table: {table}, count: 20000, batch_size: 500"));
        let mut single = rows(&drain_source(&mut source(&s, 0, 1)));
        let mut split = Vec::new();
        for i in 0..3 {
            split.extend(rows(&drain_source(&mut source(&s, i, 3))));
        }
        single.sort();
        split.sort();
        assert_eq!(single.len(), split.len(), "{table}");
        assert!(single == split, "{table}: the split changed the rows");
        let mut dedup = split.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), split.len(), "{table}: duplicate rows");
    }
}

/// `count` bounds events of all types: 20 000 events hold 400 people, 1 200
/// auctions and 18 400 bids, whatever the split.
#[test]
fn nexmark_count_bounds_events_of_all_types() {
    for (table, want) in [("bid", 18_400), ("auction", 1_200), ("person", 400)] {
        let s = spec(&format!(", table: {table}, count: 20000"));
        for p in [1, 2, 7] {
            let n: usize = (0..p)
                .flat_map(|i| drain_source(&mut source(&s, i, p)))
                .map(|b| b.num_rows())
                .sum();
            assert_eq!(n, want, "{table} at parallelism {p}");
        }
    }
}

/// A subtask's bids are the generator's bids for its event numbers, in order:
/// event time is monotone and equal to `base + n * delay`.
#[test]
fn nexmark_subtask_rows_are_the_generators_events_in_order() {
    let s = spec(", count: 5000, events_per_second: 1000, batch_size: 300");
    let config = GeneratorConfig {
        inter_event_delay_us: 1000.0,
        ..GeneratorConfig::default()
    };
    let mut g = Generator::new(config.clone());
    for (subtask, p) in [(0, 1), (1, 3), (2, 3)] {
        let out = drain_source(&mut source(&s, subtask, p));
        assert!(out.iter().all(|b| b.num_rows() <= 300));
        let mut times = Vec::new();
        let mut got = Vec::new();
        for b in &out {
            let ts = b.column(5).as_primitive::<TimestampMillisecondType>();
            times.extend(ts.values().iter().copied());
            let (a, bidder, price) = (
                b.column(0).as_primitive::<Int64Type>(),
                b.column(1).as_primitive::<Int64Type>(),
                b.column(2).as_primitive::<Int64Type>(),
            );
            for i in 0..b.num_rows() {
                got.push((
                    a.value(i),
                    bidder.value(i),
                    price.value(i),
                    b.column(4).as_string::<i32>().value(i).to_string(),
                    b.column(6).as_string::<i32>().value(i).to_string(),
                ));
            }
        }
        // Event n belongs to split n mod 128; the subtask owns its key groups.
        let owned = eddy_sdk::keygroup::key_group_range(128, p, subtask);
        let want: Vec<_> = (0..5000u64)
            .filter(|n| owned.contains(&((n % 128) as u32)))
            .filter(|n| EventType::of(*n) == EventType::Bid)
            .map(|n| {
                let b = g.bid(n);
                assert_eq!(b.date_time, config.base_time_ms + n as i64);
                (
                    b.auction,
                    b.bidder,
                    b.price,
                    b.url.to_string(),
                    b.extra.to_string(),
                )
            })
            .collect();
        assert_eq!(got, want, "subtask {subtask} of {p}");
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "event time is monotone"
        );
        assert_eq!(times.len(), want.len());
    }
}

/// With `rows_per_second`, the first poll waits for tokens instead of emitting.
#[test]
fn nexmark_paced_source_idles_before_its_first_batch() {
    let s = spec(", count: 1000, rows_per_second: 10");
    let mut src = source(&s, 0, 1);
    let mut c = Collector::new();
    assert!(matches!(src.poll(&mut c).unwrap(), SourcePoll::Idle(_)));
    assert_eq!(c.drain().count(), 0);
}

/// Parses a `bench/nexmark` spec, bounded to `count` events and without its
/// sink, so the chain's output is the query's result.
fn bench_query(yaml: &str, count: u64) -> JobSpec {
    let mut spec = parse_yaml_or_json(yaml).unwrap();
    let sink = spec.nodes.pop().unwrap();
    assert!(
        sink.kind.is_sink(),
        "the last node of a bench query is its sink"
    );
    let NodeKind::Nexmark(n) = &mut spec.nodes[0].kind else {
        panic!("a bench query starts with its nexmark source")
    };
    assert_eq!(n.table, NexmarkTable::Bid);
    n.count = Some(count);
    n.batch_size = Some(1000);
    spec
}

/// Runs the single chain of a one-vertex job.
fn run_chain(spec: &JobSpec) -> Vec<RecordBatch> {
    let (graph, schemas) = validate(spec, None).unwrap();
    assert_eq!(graph.vertices.len(), 1);
    let chain = build_chain(spec, &graph, &schemas, &ctx(0, 1)).unwrap();
    let mut source = chain.source.unwrap();
    let mut h = OperatorHarness::new(chain.operators);
    let mut out = Vec::new();
    for b in drain_source(source.as_mut()) {
        out.extend(batches(&h.batch(b).unwrap()));
    }
    out.extend(batches(&h.end().unwrap()));
    out
}

/// Every bid of events `0..count`, straight from the generator.
fn reference_bids(count: u64) -> Vec<(i64, i64, i64, i64, String)> {
    let mut g = Generator::new(GeneratorConfig::default());
    (0..count)
        .filter(|n| EventType::of(*n) == EventType::Bid)
        .map(|n| {
            let b = g.bid(n);
            (
                b.auction,
                b.bidder,
                b.price,
                b.date_time,
                b.extra.to_string(),
            )
        })
        .collect()
}

#[test]
fn nexmark_q1_spec_matches_reference() {
    let out = run_chain(&bench_query(
        include_str!("../../../../bench/nexmark/q1.yaml"),
        30_000,
    ));
    let mut got = Vec::new();
    for b in &out {
        assert_eq!(b.num_columns(), 5);
        let price = b.column(2).as_primitive::<Float64Type>();
        let ts = b.column(3).as_primitive::<TimestampMillisecondType>();
        for i in 0..b.num_rows() {
            got.push((
                b.column(0).as_primitive::<Int64Type>().value(i),
                b.column(1).as_primitive::<Int64Type>().value(i),
                price.value(i),
                ts.value(i),
                b.column(4).as_string::<i32>().value(i).to_string(),
            ));
        }
    }
    let want: Vec<_> = reference_bids(30_000)
        .into_iter()
        .map(|(a, bidder, price, ts, extra)| (a, bidder, 0.908 * price as f64, ts, extra))
        .collect();
    assert_eq!(got.len(), 27_600);
    assert_eq!(got, want);
}

#[test]
fn nexmark_q2_spec_matches_reference() {
    let out = run_chain(&bench_query(
        include_str!("../../../../bench/nexmark/q2.yaml"),
        200_000,
    ));
    let got: Vec<(i64, i64)> = out
        .iter()
        .flat_map(|b| {
            assert_eq!(b.num_columns(), 2);
            assert_eq!(b.column(0).null_count(), 0);
            let (a, p) = (
                b.column(0).as_primitive::<Int64Type>(),
                b.column(1).as_primitive::<Int64Type>(),
            );
            (0..b.num_rows()).map(move |i| (a.value(i), p.value(i)))
        })
        .collect();
    let want: Vec<(i64, i64)> = reference_bids(200_000)
        .into_iter()
        .filter(|(a, ..)| a % 123 == 0)
        .map(|(a, _, p, ..)| (a, p))
        .collect();
    assert!(
        want.len() > 100,
        "the query selects something: {}",
        want.len()
    );
    assert_eq!(got, want);
}

/// The other bench specs parse, validate and build.
#[test]
fn nexmark_bench_specs_q0_q5_q11_q12_plan() {
    for yaml in [
        include_str!("../../../../bench/nexmark/q0.yaml"),
        include_str!("../../../../bench/nexmark/q5.yaml"),
        include_str!("../../../../bench/nexmark/q11.yaml"),
        include_str!("../../../../bench/nexmark/q12.yaml"),
    ] {
        let spec = parse_yaml_or_json(yaml).unwrap();
        let (graph, schemas) = validate(&spec, None).unwrap();
        for v in &graph.vertices {
            build_chain(
                &spec,
                &graph,
                &schemas,
                &TaskContext {
                    vertex: v.id,
                    ..ctx(0, 1)
                },
            )
            .unwrap();
        }
    }
}

/// Generator throughput for the q0 table (bids), single-threaded:
/// `cargo test -p eddy-taskmanager --release -- --ignored nexmark_generator_throughput --nocapture`.
#[test]
#[ignore = "a benchmark: run in release with --ignored"]
fn nexmark_generator_throughput() {
    let events = 50_000_000u64;
    let s = spec(&format!(", count: {events}"));
    let mut src = source(&s, 0, 1);
    let mut c = Collector::new();
    let started = std::time::Instant::now();
    let mut rows = 0;
    while let SourcePoll::Ready = src.poll(&mut c).unwrap() {
        for e in c.drain() {
            if let eddy_sdk::operator::Element::Batch(b) = e {
                rows += b.num_rows();
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "nexmark bid table: {events} events ({rows} bids) in {secs:.2} s = {:.1} M events/s, {:.1} M bids/s",
        events as f64 / secs / 1e6,
        rows as f64 / secs / 1e6
    );
    assert_eq!(rows, 46_000_000);
}
