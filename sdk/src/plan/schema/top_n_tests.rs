//! Schema inference and validation of `top_n` nodes and session windows.

use crate::plan::schema::{infer_schemas, validate};
use crate::spec::parse_yaml_or_json;
use arrow::datatypes::{DataType, TimeUnit};

/// bids -> per-auction sliding count -> the hottest auction per window.
fn q5(top_n: &str) -> String {
    format!(
        r#"
name: q5
parallelism: 2
nodes:
  - {{id: gen, kind: datagen, count: 100, fields: [
      {{name: auction, type: int64, gen: sequence}},
      {{name: channel, type: utf8, gen: sequence}},
      {{name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}}]}}
  - {{id: counts, kind: window, input: gen, key_by: [auction], event_time: {{column: ts}},
     window: {{type: sliding, size: 10s, slide: 2s}}, aggregates: [{{fn: count, as: n}}]}}
  - {top_n}
  - {{id: out, kind: blackhole, input: hot}}
"#
    )
}

const HOT: &str = "{id: hot, kind: top_n, input: counts, partition_by: [window_start, window_end], order_by: n, n: 1, event_time: {column: window_end}}";

fn expect_invalid(yaml: &str, node: &str, field: &str, needle: &str) {
    let spec = parse_yaml_or_json(yaml).unwrap();
    let err = infer_schemas(&spec).unwrap_err();
    assert_eq!(err.node.as_deref(), Some(node), "{}", err.message);
    assert_eq!(err.field.as_deref(), Some(field), "{}", err.message);
    assert!(
        err.message.contains(needle),
        "`{needle}` not in: {}",
        err.message
    );
}

#[test]
fn top_n_output_is_the_input_schema_plus_optional_rank() {
    let spec = parse_yaml_or_json(&q5(HOT)).unwrap();
    let (_, schemas) = validate(&spec, None).unwrap();
    let get = |id: &str| schemas.get(&crate::ids::NodeId::from(id)).unwrap().clone();
    assert_eq!(get("hot"), get("counts"));
    let spec = parse_yaml_or_json(&q5(&HOT.replace("n: 1,", "n: 1, rank_column: rk,"))).unwrap();
    let hot = infer_schemas(&spec).unwrap();
    let hot = hot.get(&crate::ids::NodeId::from("hot")).unwrap();
    let last = hot.fields().last().unwrap();
    assert_eq!(
        (last.name().as_str(), last.data_type()),
        ("rk", &DataType::Int64)
    );
    assert_eq!(hot.fields().len(), 5);
}

#[test]
fn top_n_defaults_are_desc_with_ties() {
    let spec = parse_yaml_or_json(&q5(HOT)).unwrap();
    let crate::spec::NodeKind::TopN(t) = &spec.nodes[2].kind else {
        panic!("node 2 is the top_n")
    };
    assert_eq!(t.order, crate::spec::SortOrder::Desc);
    assert!(t.with_ties);
}

#[test]
fn top_n_bad_columns_name_node_and_field() {
    expect_invalid(
        &q5(&HOT.replace("n: 1,", "n: 0,")),
        "hot",
        "n",
        "at least 1",
    );
    expect_invalid(
        &q5(&HOT.replace("[window_start, window_end]", "[window_start, nope]")),
        "hot",
        "partition_by",
        "`nope`",
    );
    expect_invalid(
        &q5(&HOT.replace("order_by: n", "order_by: count")),
        "hot",
        "order_by",
        "`count`",
    );
    expect_invalid(
        &q5(&HOT.replace("column: window_end", "column: when")),
        "hot",
        "event_time",
        "`when`",
    );
    expect_invalid(
        &q5(&HOT.replace("[window_start, window_end]", "[window_start]")),
        "hot",
        "event_time",
        "partition_by",
    );
    expect_invalid(
        &q5(&HOT.replace("n: 1,", "n: 1, rank_column: n,")),
        "hot",
        "rank_column",
        "already",
    );
    expect_invalid(
        &q5(&HOT.replace(
            "[window_start, window_end]",
            "[window_start, window_end, window_end]",
        )),
        "hot",
        "partition_by",
        "twice",
    );
}

#[test]
fn top_n_order_by_must_be_numeric_or_timestamp() {
    // A top_n straight over the window's keys: key `channel` is Utf8.
    let yaml = q5(HOT)
        .replace("key_by: [auction]", "key_by: [channel]")
        .replace("order_by: n", "order_by: channel");
    expect_invalid(&yaml, "hot", "order_by", "Utf8");
    // Timestamps rank fine.
    let spec =
        parse_yaml_or_json(&q5(&HOT.replace("order_by: n", "order_by: window_start"))).unwrap();
    assert!(infer_schemas(&spec).is_ok());
}

#[test]
fn top_n_event_time_must_be_a_time_column() {
    let yaml = q5(&HOT
        .replace(
            "[window_start, window_end]",
            "[window_start, window_end, n]",
        )
        .replace("column: window_end", "column: n"));
    // An Int64 of ms is accepted, like a window's event time.
    assert!(infer_schemas(&parse_yaml_or_json(&yaml).unwrap()).is_ok());
    let yaml = q5(HOT)
        .replace("key_by: [auction]", "key_by: [channel]")
        .replace("[window_start, window_end]", "[channel]")
        .replace("column: window_end", "column: channel");
    expect_invalid(&yaml, "hot", "event_time", "Timestamp(ms)");
}

#[test]
fn session_window_schema_matches_other_windows() {
    let yaml = q5(HOT).replace(
        "{type: sliding, size: 10s, slide: 2s}",
        "{type: session, gap: 10s}",
    );
    let schemas = infer_schemas(&parse_yaml_or_json(&yaml).unwrap()).unwrap();
    let counts = schemas.get(&crate::ids::NodeId::from("counts")).unwrap();
    let names: Vec<_> = counts.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["auction", "window_start", "window_end", "n"]);
    assert_eq!(
        counts.field(1).data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, None)
    );
}

#[test]
fn session_window_zero_gap_is_rejected() {
    let yaml = q5(HOT).replace(
        "{type: sliding, size: 10s, slide: 2s}",
        "{type: session, gap: 0ms}",
    );
    expect_invalid(&yaml, "counts", "window", "gap");
    let yaml = q5(HOT).replace(
        "{type: sliding, size: 10s, slide: 2s}",
        "{type: session, gap: 1s, size: 2s}",
    );
    let err = parse_yaml_or_json(&yaml).unwrap_err();
    assert_eq!(err.node.as_deref(), Some("counts"));
}
