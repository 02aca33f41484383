//! The `aggregate` node's spec: parsing, its output schema, and the errors
//! of a bad spec, each naming the node and field.

use super::*;
use crate::plan::schema::{infer_schemas, validate};
use crate::spec::{HumanDuration, NodeKind, parse_json, parse_yaml_or_json};
use arrow::datatypes::TimeUnit;
use std::time::Duration;

const SOURCE: &str = r#"name: totals
parallelism: 2
nodes:
  - {id: gen, kind: datagen, count: 10, fields: [{name: id, type: int64, gen: sequence},
      {name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms},
      {name: amount, type: float64, gen: random, min: 0, max: 10}]}
"#;

/// The source, then an `aggregate` node `agg` with `fields`, then a sink.
fn job(fields: &str) -> String {
    format!(
        "{SOURCE}  - {{id: agg, kind: aggregate, input: gen, {fields}}}\n  - {{id: out, kind: print, input: agg}}\n"
    )
}

#[track_caller]
fn expect_invalid(yaml: &str, field: &str, needles: &[&str]) {
    let e = parse_yaml_or_json(yaml)
        .and_then(|spec| validate(&spec, None).map(|_| ()))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidSpec, "{e}");
    assert_eq!(
        (e.node.as_deref(), e.field.as_deref()),
        (Some("agg"), Some(field)),
        "{e}"
    );
    for n in needles {
        assert!(
            e.message.contains(n),
            "`{}` does not mention `{n}`",
            e.message
        );
    }
}

#[test]
fn aggregate_parses_with_ttl_and_roundtrips_through_json() {
    let spec = parse_yaml_or_json(&job(
        "key_by: [id], aggregates: [{fn: count, as: n}], state_ttl: 1h",
    ))
    .unwrap();
    let node = spec.node(&NodeId::from("agg")).unwrap();
    let NodeKind::Aggregate(a) = &node.kind else {
        panic!("an aggregate node: {:?}", node.kind)
    };
    assert_eq!(a.key_by, ["id"]);
    assert_eq!(a.state_ttl, Some(HumanDuration(Duration::from_secs(3600))));
    assert_eq!(node.kind.name(), "aggregate");
    assert!(node.kind.is_stateful());
    assert_eq!(parse_json(&spec.to_json()).unwrap(), spec);

    let without = parse_yaml_or_json(&job("key_by: [id], aggregates: []")).unwrap();
    let NodeKind::Aggregate(a) = &without.nodes[1].kind else {
        panic!("an aggregate node")
    };
    assert_eq!(a.state_ttl, None, "no TTL unless asked for");
}

#[test]
fn aggregate_output_is_keys_then_aggregates_typed_as_a_window_s() {
    let spec = parse_yaml_or_json(&job(
        "key_by: [id, ts], aggregates: [{fn: count, as: n}, {fn: sum, column: amount, as: total}, \
         {fn: sum, column: id, as: ids}, {fn: max, column: ts, as: last}, {fn: avg, column: id, as: mean}]",
    ))
    .unwrap();
    let schemas = infer_schemas(&spec).unwrap();
    let out = schemas.get(&NodeId::from("agg")).unwrap();
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let got: Vec<(&str, DataType, bool)> = out
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
        .collect();
    assert_eq!(
        got,
        [
            ("id", DataType::Int64, false),
            ("ts", ts.clone(), false),
            ("n", DataType::Int64, false),
            ("total", DataType::Float64, true),
            ("ids", DataType::Int64, true),
            ("last", ts, true),
            ("mean", DataType::Float64, true),
        ]
    );
    let layout = group_aggregate_layout(
        &NodeId::from("agg"),
        match &spec.nodes[1].kind {
            NodeKind::Aggregate(a) => a,
            other => panic!("{other:?}"),
        },
        schemas.get(&NodeId::from("gen")).unwrap(),
    )
    .unwrap();
    assert_eq!(layout.key_indices, [0, 1]);
    assert_eq!(layout.state_ttl_ms, None);
}

#[test]
fn aggregate_unknown_columns_name_the_field_and_list_the_input() {
    expect_invalid(
        &job("key_by: [user], aggregates: [{fn: count, as: n}]"),
        "key_by",
        &["user", "`amount`"],
    );
    expect_invalid(
        &job("key_by: [id], aggregates: [{fn: sum, column: price, as: s}]"),
        "aggregates",
        &["price", "`amount`"],
    );
    expect_invalid(
        &job("key_by: [id], aggregates: [{fn: avg, column: ts, as: s}]"),
        "aggregates",
        &["numeric"],
    );
    expect_invalid(
        &job("key_by: [id], aggregates: [{fn: count, as: id}]"),
        "aggregates",
        &["`id`", "key columns"],
    );
}

#[test]
fn aggregate_missing_or_empty_key_by_is_rejected() {
    expect_invalid(
        &job("aggregates: [{fn: count, as: n}]"),
        "key_by",
        &["key_by"],
    );
    expect_invalid(
        &job("key_by: [], aggregates: [{fn: count, as: n}]"),
        "key_by",
        &["at least one"],
    );
}

#[test]
fn aggregate_bad_state_ttl_is_rejected() {
    expect_invalid(
        &job("key_by: [id], aggregates: [{fn: count, as: n}], state_ttl: soon"),
        "state_ttl",
        &["soon"],
    );
    expect_invalid(
        &job("key_by: [id], aggregates: [{fn: count, as: n}], state_ttl: 0s"),
        "state_ttl",
        &["at least 1ms"],
    );
    expect_invalid(
        &job("key_by: [id], aggregates: [{fn: count, as: n}], state_ttl: 5"),
        "state_ttl",
        &[],
    );
}
