use super::*;
use crate::spec::parse_yaml_or_json;

/// The issue's example job, as shipped in `examples/clicks.yaml`.
const CLICKS: &str = include_str!("../../../../examples/clicks.yaml");

fn ts_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

fn columns(s: &SchemaRef) -> Vec<(String, DataType)> {
    s.fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect()
}

#[test]
fn infer_schemas_issue_example_window_output() {
    let spec = parse_yaml_or_json(CLICKS).unwrap();
    let (graph, schemas) = validate(&spec, Some(2)).unwrap();
    assert_eq!(graph.vertices.len(), 2);
    assert_eq!(schemas.len(), 5);
    let get = |id: &str| schemas.get(&NodeId::from(id)).unwrap();
    assert_eq!(
        columns(get("gen")),
        [("id".into(), DataType::Int64), ("ts".into(), ts_ms())]
    );
    assert_eq!(
        columns(get("enrich")),
        [
            ("id".into(), DataType::Int64),
            ("ts".into(), ts_ms()),
            ("user_id".into(), DataType::Int64),
            ("amount".into(), DataType::Float64)
        ]
    );
    assert_eq!(get("big"), get("enrich"));
    let window = [
        ("user_id".into(), DataType::Int64),
        ("window_start".into(), ts_ms()),
        ("window_end".into(), ts_ms()),
        ("n".into(), DataType::Int64),
        ("total".into(), DataType::Float64),
    ];
    assert_eq!(columns(get("per_user")), window);
    assert_eq!(
        columns(get("out")),
        window,
        "a sink outputs its input schema"
    );
}

/// Builds the CLICKS job with one node replaced (by id).
fn clicks_with(id: &str, node_yaml: &str) -> String {
    CLICKS
        .lines()
        .scan(false, |replacing, line| {
            let starts_node = line.trim_start().starts_with("- {id:");
            if starts_node {
                *replacing = line.contains(&format!("{{id: {id},"));
                if *replacing {
                    return Some(Some(format!("  - {node_yaml}")));
                }
            }
            Some(if *replacing {
                None
            } else {
                Some(line.to_string())
            })
        })
        .flatten()
        .collect::<Vec<_>>()
        .join("\n")
}

fn window_with(rest: &str) -> String {
    clicks_with(
        "per_user",
        &format!("{{id: per_user, kind: window, input: big, {rest}}}"),
    )
}

const KEY_TIME: &str = "key_by: [user_id], event_time: {column: ts}";
const TUMBLE: &str = "window: {type: tumbling, size: 1s}";

#[track_caller]
fn expect_invalid(yaml: &str, node: &str, field: &str, needles: &[&str]) {
    let spec = parse_yaml_or_json(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let e = validate(&spec, None).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidSpec, "{e}");
    assert_eq!(
        (e.node.as_deref(), e.field.as_deref()),
        (Some(node), Some(field)),
        "{e}"
    );
    for n in needles {
        assert!(
            e.message.contains(n),
            "`{}` does not mention `{n}`",
            e.message
        );
    }
    assert!(
        e.message.starts_with(|c: char| !c.is_uppercase()),
        "{}",
        e.message
    );
}

#[test]
fn infer_project_unknown_column_lists_available_columns() {
    let yaml = clicks_with(
        "enrich",
        r#"{id: enrich, kind: project, input: gen, exprs: ["id", "idd + 1 AS x"]}"#,
    );
    expect_invalid(&yaml, "enrich", "exprs", &["idd", "`id`", "`ts`"]);
}

#[test]
fn infer_project_bad_syntax_and_duplicates() {
    let yaml = clicks_with(
        "enrich",
        r#"{id: enrich, kind: project, input: gen, exprs: ["id +* 2"]}"#,
    );
    expect_invalid(&yaml, "enrich", "exprs", &["id +* 2"]);
    let yaml = clicks_with(
        "enrich",
        r#"{id: enrich, kind: project, input: gen, exprs: ["id", "ts AS id"]}"#,
    );
    expect_invalid(&yaml, "enrich", "exprs", &["duplicate"]);
    let yaml = clicks_with(
        "enrich",
        r#"{id: enrich, kind: project, input: gen, exprs: []}"#,
    );
    expect_invalid(&yaml, "enrich", "exprs", &[]);
}

#[test]
fn infer_filter_non_boolean_and_bad_sql() {
    let yaml = clicks_with(
        "big",
        r#"{id: big, kind: filter, input: enrich, predicate: "amount + 1"}"#,
    );
    expect_invalid(&yaml, "big", "predicate", &["amount + 1", "boolean"]);
    let yaml = clicks_with(
        "big",
        r#"{id: big, kind: filter, input: enrich, predicate: "amount >= "}"#,
    );
    expect_invalid(&yaml, "big", "predicate", &["amount >="]);
    let yaml = clicks_with(
        "big",
        r#"{id: big, kind: filter, input: enrich, predicate: "nope > 1"}"#,
    );
    expect_invalid(&yaml, "big", "predicate", &["nope", "`user_id`"]);
}

#[test]
fn infer_window_key_and_event_time_checks() {
    expect_invalid(
        &window_with(&format!(
            "key_by: [who], event_time: {{column: ts}}, {TUMBLE}, aggregates: []"
        )),
        "per_user",
        "key_by",
        &["who", "`user_id`"],
    );
    expect_invalid(
        &window_with(&format!(
            "key_by: [], event_time: {{column: ts}}, {TUMBLE}, aggregates: []"
        )),
        "per_user",
        "key_by",
        &[],
    );
    expect_invalid(
        &window_with(&format!(
            "key_by: [id, id], event_time: {{column: ts}}, {TUMBLE}, aggregates: []"
        )),
        "per_user",
        "key_by",
        &["twice"],
    );
    expect_invalid(
        &window_with(&format!(
            "key_by: [user_id], event_time: {{column: when}}, {TUMBLE}, aggregates: []"
        )),
        "per_user",
        "event_time",
        &["when", "`ts`"],
    );
    expect_invalid(
        &window_with(&format!(
            "key_by: [user_id], event_time: {{column: amount}}, {TUMBLE}, aggregates: []"
        )),
        "per_user",
        "event_time",
        &["Float64"],
    );
}

#[test]
fn infer_window_int64_event_time_is_accepted() {
    let spec = parse_yaml_or_json(&window_with(&format!(
        "key_by: [user_id], event_time: {{column: id}}, {TUMBLE}, aggregates: []"
    )))
    .unwrap();
    let schemas = infer_schemas(&spec).unwrap();
    assert_eq!(
        schemas
            .get(&NodeId::from("per_user"))
            .unwrap()
            .field(2)
            .data_type(),
        &ts_ms()
    );
}

#[test]
fn infer_window_size_and_slide_checks() {
    let w = |window: &str| window_with(&format!("{KEY_TIME}, window: {window}, aggregates: []"));
    expect_invalid(
        &w("{type: tumbling, size: 0s}"),
        "per_user",
        "window",
        &["size"],
    );
    expect_invalid(
        &w("{type: sliding, size: 1s, slide: 0s}"),
        "per_user",
        "window",
        &["slide"],
    );
    expect_invalid(
        &w("{type: sliding, size: 1s, slide: 2s}"),
        "per_user",
        "window",
        &["exceed"],
    );
    expect_invalid(
        &w("{type: sliding, size: 1s, slide: 300ms}"),
        "per_user",
        "window",
        &["multiple"],
    );
    let ok = parse_yaml_or_json(&w("{type: sliding, size: 1s, slide: 250ms}")).unwrap();
    assert!(infer_schemas(&ok).is_ok());
}

#[test]
fn infer_window_watermark_alignment_needs_a_positive_drift() {
    let w = |alignment: &str| {
        window_with(&format!(
            "{KEY_TIME}, {TUMBLE}, aggregates: [], watermark_alignment: {alignment}"
        ))
    };
    expect_invalid(
        &w("{max_drift: 0s}"),
        "per_user",
        "watermark_alignment",
        &["max_drift", "positive"],
    );
    let ok = parse_yaml_or_json(&w("{max_drift: 10s}")).unwrap();
    assert!(infer_schemas(&ok).is_ok());
}

#[test]
fn infer_window_aggregate_checks() {
    let a = |aggs: &str| window_with(&format!("{KEY_TIME}, {TUMBLE}, aggregates: [{aggs}]"));
    expect_invalid(
        &a("{fn: sum, as: s}"),
        "per_user",
        "aggregates",
        &["column"],
    );
    expect_invalid(
        &a("{fn: sum, column: nope, as: s}"),
        "per_user",
        "aggregates",
        &["nope", "`amount`"],
    );
    expect_invalid(
        &a("{fn: avg, column: ts, as: s}"),
        "per_user",
        "aggregates",
        &["numeric"],
    );
    expect_invalid(
        &a("{fn: count, as: n}, {fn: max, column: id, as: n}"),
        "per_user",
        "aggregates",
        &["`n`"],
    );
    expect_invalid(
        &a("{fn: count, as: user_id}"),
        "per_user",
        "aggregates",
        &["user_id"],
    );
    expect_invalid(
        &a("{fn: count, as: window_end}"),
        "per_user",
        "aggregates",
        &["window_end"],
    );
    expect_invalid(&a("{fn: count, as: ''}"), "per_user", "aggregates", &[]);
}

#[test]
fn infer_window_aggregate_output_types() {
    let spec = parse_yaml_or_json(&window_with(&format!(
        "{KEY_TIME}, {TUMBLE}, aggregates: [{{fn: count, column: amount, as: c}}, {{fn: sum, column: id, as: s}}, \
         {{fn: min, column: amount, as: lo}}, {{fn: max, column: ts, as: last}}, {{fn: avg, column: id, as: mean}}]"
    )))
    .unwrap();
    let schemas = infer_schemas(&spec).unwrap();
    let out = schemas.get(&NodeId::from("per_user")).unwrap();
    assert_eq!(
        columns(out)[3..],
        [
            ("c".into(), DataType::Int64),
            ("s".into(), DataType::Int64),
            ("lo".into(), DataType::Float64),
            ("last".into(), ts_ms()),
            ("mean".into(), DataType::Float64)
        ]
    );
    assert!(!out.field(3).is_nullable() && out.field(4).is_nullable());
}

#[test]
fn infer_datagen_generator_type_checks() {
    let gen_with = |fields: &str| {
        clicks_with(
            "gen",
            &format!(
                "{{id: gen, kind: datagen, fields: [{fields}, {{name: ts, type: timestamp_ms, gen: timestamp, start: '2026-01-01T00:00:00Z', step: 1ms}}]}}"
            ),
        )
    };
    expect_invalid(
        &gen_with("{name: id, type: utf8, gen: random, min: 0, max: 1}"),
        "gen",
        "fields",
        &["id", "random"],
    );
    expect_invalid(
        &gen_with(
            "{name: id, type: int64, gen: timestamp, start: '2026-01-01T00:00:00Z', step: 1s}",
        ),
        "gen",
        "fields",
        &["timestamp"],
    );
    expect_invalid(
        &gen_with("{name: id, type: timestamp_ms, gen: sequence}"),
        "gen",
        "fields",
        &["timestamp"],
    );
    expect_invalid(
        &gen_with("{name: id, type: int64, gen: random, min: 5, max: 1}"),
        "gen",
        "fields",
        &["min"],
    );
    expect_invalid(
        &gen_with("{name: id, type: int64, gen: random, min: 0.2, max: 0.8}"),
        "gen",
        "fields",
        &["integer"],
    );
    expect_invalid(
        &gen_with("{name: ts, type: int64, gen: sequence}"),
        "gen",
        "fields",
        &["duplicate"],
    );
    let ok = parse_yaml_or_json(&gen_with(
        "{name: label, type: utf8, gen: sequence}, {name: id, type: int64, gen: sequence}",
    ))
    .unwrap();
    let schemas = infer_schemas(&ok).unwrap();
    assert_eq!(
        schemas
            .get(&NodeId::from("gen"))
            .unwrap()
            .field(0)
            .data_type(),
        &DataType::Utf8
    );
}

#[test]
fn validate_runs_structure_checks_first() {
    let spec = parse_yaml_or_json(CLICKS).unwrap();
    assert_eq!(
        validate(&spec, Some(1)).unwrap_err().code,
        ErrorCode::InsufficientSlots
    );
}
