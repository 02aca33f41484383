//! Chains built from job specs, run end to end through the harness.

use super::*;
use crate::operators::harness::{OperatorHarness, batches, watermarks};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use eddy_sdk::operator::{Collector, Element, SourcePoll};
use eddy_sdk::plan::{hash, validate};
use eddy_sdk::spec::parse_yaml_or_json;

/// The issue's example job, smaller, writing to `OUT`.
const CLICKS: &str = r#"
name: clicks
parallelism: 1
nodes:
  - {id: gen, kind: datagen, count: 5000, batch_size: 777, fields: [
      {name: id, type: int64, gen: sequence, start: 0},
      {name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}]}
  - {id: enrich, kind: project, input: gen,
     exprs: ["id", "ts", "id % 1000 AS user_id", "CAST(id % 100 AS DOUBLE) AS amount"]}
  - {id: big, kind: filter, input: enrich, predicate: "amount >= 50"}
  - {id: per_user, kind: window, input: big, key_by: [user_id],
     event_time: {column: ts, max_out_of_orderness: 200ms},
     window: {type: tumbling, size: 1s},
     aggregates: [{fn: count, as: n}, {fn: sum, column: amount, as: total}]}
  - {id: out, kind: file, input: per_user, path: OUT, format: jsonl}
"#;

fn ctx(vertex: u32) -> TaskContext {
    TaskContext {
        job_id: JobId::from("job-1"),
        vertex: VertexId(vertex),
        subtask: 0,
        parallelism: 1,
        max_parallelism: 128,
        latency_interval: None,
        attempt: 0,
        exactly_once: false,
    }
}

/// Runs a chain as the runtime would: poll the source (or push `input`),
/// then the final watermark and the end of input.
fn run(chain: Chain, input: Vec<RecordBatch>) -> Vec<Element> {
    let mut h = OperatorHarness::new(chain.operators);
    let mut out = Vec::new();
    if let Some(mut source) = chain.source {
        let mut c = Collector::new();
        loop {
            let poll = source.poll(&mut c).unwrap();
            for e in c.drain().collect::<Vec<_>>() {
                out.extend(h.push(e).unwrap());
            }
            match poll {
                SourcePoll::Ready => {}
                SourcePoll::Finished => break,
                SourcePoll::Idle(d) => panic!("unpaced datagen idled for {d:?}"),
            }
        }
    }
    for b in input {
        out.extend(h.batch(b).unwrap());
    }
    out.extend(h.watermark(i64::MAX).unwrap());
    out.extend(h.end().unwrap());
    out
}

#[test]
fn build_chain_issue_example_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let spec = parse_yaml_or_json(&CLICKS.replace("OUT", &out_dir.to_string_lossy())).unwrap();
    let (graph, schemas) = validate(&spec, None).unwrap();

    let first = build_chain(&spec, &graph, &schemas, &ctx(0)).unwrap();
    assert!(first.source.is_some());
    assert_eq!(
        first.operators.len(),
        4,
        "project, filter, watermark assigner, prune"
    );
    let sent: Vec<&str> = first
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        sent,
        ["ts", "user_id", "amount"],
        "only what the window reads crosses the exchange (not `id`)"
    );
    let upstream = run(first, Vec::new());
    let data = batches(&upstream);
    assert_eq!(
        data.iter().map(RecordBatch::num_rows).sum::<usize>(),
        2_500,
        "half the rows have amount >= 50"
    );
    for b in &data {
        let amount = b.column(2).as_primitive::<Float64Type>();
        assert!(amount.values().iter().all(|&a| a >= 50.0));
    }
    let wms = watermarks(&upstream);
    assert!(
        wms.windows(2).all(|w| w[0] < w[1]),
        "watermarks only advance: {wms:?}"
    );
    assert_eq!(wms.last(), Some(&i64::MAX));

    // The exchange routes by key; at parallelism 1 everything goes to subtask 0.
    let mut routed = Vec::new();
    for b in &data {
        for (target, part) in hash::partition_by_key(b, &[1], 128, 1).unwrap() {
            assert_eq!(target, 0);
            routed.push(part);
        }
    }
    let second = build_chain(&spec, &graph, &schemas, &ctx(1)).unwrap();
    assert!(second.source.is_none());
    assert_eq!(
        &second.output_schema,
        schemas.get(&NodeId::from("per_user")).unwrap()
    );
    run(second, routed);

    // 5 windows of 1000 ids; in each, the users with id % 100 >= 50 once.
    let text = std::fs::read_to_string(out_dir.join("part-0.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2_500);
    assert_eq!(
        lines[0],
        serde_json::json!({"user_id": 50, "window_start": "2026-01-01T00:00:00.000Z",
                           "window_end": "2026-01-01T00:00:01.000Z", "n": 1, "total": 50.0})
    );
    assert!(lines.iter().all(|l| l["n"] == 1));
}

#[test]
fn build_chain_unknown_vertex_or_subtask_is_an_error() {
    let spec = parse_yaml_or_json(&CLICKS.replace("OUT", "/nonexistent")).unwrap();
    let (graph, schemas) = validate(&spec, None).unwrap();
    assert!(build_chain(&spec, &graph, &schemas, &ctx(9)).is_err());
    let bad = TaskContext {
        subtask: 1,
        ..ctx(0)
    };
    assert!(build_chain(&spec, &graph, &schemas, &bad).is_err());
}

fn project_filter_spec(exprs: &str, predicate: &str) -> eddy_sdk::spec::JobSpec {
    parse_yaml_or_json(&format!(
        "name: p\nnodes:\n  - {{id: gen, kind: datagen, count: 300, fields: [{{name: id, type: int64, gen: sequence}}]}}\n  \
         - {{id: enrich, kind: project, input: gen, exprs: {exprs}}}\n  \
         - {{id: keep, kind: filter, input: enrich, predicate: \"{predicate}\"}}\n"
    ))
    .unwrap()
}

#[test]
fn project_and_filter_compute_the_issue_expressions() {
    let spec = project_filter_spec(
        r#"["id", "CAST(id % 100 AS DOUBLE) AS amount", "'x' AS tag"]"#,
        "amount >= 50",
    );
    let (graph, schemas) = validate(&spec, None).unwrap();
    let out = batches(&run(
        build_chain(&spec, &graph, &schemas, &ctx(0)).unwrap(),
        Vec::new(),
    ));
    let ids: Vec<i64> = out
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let expected: Vec<i64> = (0..300).filter(|i| i % 100 >= 50).collect();
    assert_eq!(ids, expected);
    assert_eq!(out[0].schema().field(2).data_type(), &DataType::Utf8);
    assert_eq!(out[0].column(2).as_string::<i32>().value(0), "x");
}

#[test]
fn filter_null_predicate_keeps_nothing() {
    let spec = project_filter_spec(
        r#"["id", "CASE WHEN id % 2 = 0 THEN id END AS even"]"#,
        "even > 10",
    );
    let (graph, schemas) = validate(&spec, None).unwrap();
    let out = batches(&run(
        build_chain(&spec, &graph, &schemas, &ctx(0)).unwrap(),
        Vec::new(),
    ));
    let ids: Vec<i64> = out
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(ids, (12..300).step_by(2).collect::<Vec<_>>());
}

#[test]
fn project_evaluation_error_is_bad_data_naming_the_node() {
    let spec = project_filter_spec(r#"["id / (id - id) AS boom"]"#, "boom > 0");
    let (graph, schemas) = validate(&spec, None).unwrap();
    let chain = build_chain(&spec, &graph, &schemas, &ctx(0)).unwrap();
    let mut source = chain.source.unwrap();
    let mut h = OperatorHarness::new(chain.operators);
    let mut c = Collector::new();
    source.poll(&mut c).unwrap();
    let batch = c.drain().next().unwrap();
    let e = h.push(batch).unwrap_err();
    assert_eq!(e.class, FailureClass::BadData);
    assert!(e.message.contains("`enrich`"), "{}", e.message);
    let cause = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(cause.to_lowercase().contains("divide by zero"), "{cause}");
}

/// A planned `aggregate` job: the producer sends only the key and the
/// aggregate's input across the exchange, the consumer's chain starts with
/// the (stateful) aggregate, and each key's last update holds its totals.
#[test]
fn build_chain_aggregate_job_runs_end_to_end() {
    let spec = parse_yaml_or_json(
        r#"
name: totals
nodes:
  - {id: gen, kind: datagen, count: 1000, batch_size: 64, fields: [
      {name: id, type: int64, gen: sequence, start: 0},
      {name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}]}
  - {id: enrich, kind: project, input: gen, exprs: ["id", "ts", "id % 7 AS k"]}
  - {id: totals, kind: aggregate, input: enrich, key_by: [k], state_ttl: 1h,
     aggregates: [{fn: count, as: n}, {fn: sum, column: id, as: total}]}
  - {id: out, kind: blackhole, input: totals}
"#,
    )
    .unwrap();
    let (graph, schemas) = validate(&spec, None).unwrap();
    let first = build_chain(&spec, &graph, &schemas, &ctx(0)).unwrap();
    let sent: Vec<&str> = first
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(sent, ["id", "k"], "`ts` is read by no consumer");
    let data = batches(&run(first, Vec::new()));

    let second = build_chain(&spec, &graph, &schemas, &ctx(1)).unwrap();
    assert_eq!(second.operators.len(), 2, "aggregate, blackhole");
    assert!(matches!(
        second.stateful.as_slice(),
        [(crate::runtime::StatePosition::Operator(0), id)] if id.as_str() == "totals"
    ));
    // The blackhole swallows the updates: read them off the aggregate.
    let mut agg = OperatorHarness::new(second.operators.into_iter().take(1).collect());
    let mut last = std::collections::BTreeMap::new();
    for b in data {
        for u in batches(&agg.batch(b).unwrap()) {
            let (k, n, total) = (
                u.column(0).as_primitive::<Int64Type>(),
                u.column(1).as_primitive::<Int64Type>(),
                u.column(2).as_primitive::<Int64Type>(),
            );
            for i in 0..u.num_rows() {
                last.insert(k.value(i), (n.value(i), total.value(i)));
            }
        }
    }
    assert_eq!(last.len(), 7);
    for (k, (n, total)) in last {
        let ids = (0..1000).filter(|i| i % 7 == k);
        assert_eq!(
            (n, total),
            (ids.clone().count() as i64, ids.sum::<i64>()),
            "key {k}"
        );
    }
}
