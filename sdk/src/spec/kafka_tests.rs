use super::*;
use crate::error::ErrorCode;
use crate::spec::{JobSpec, NodeKind, parse_json, parse_yaml_or_json, validate_structure};

/// The issue's example, as written there.
const BIG_ORDERS: &str = r#"
name: big-orders
parallelism: 2
checkpoint: {interval: 5s}
nodes:
  - {id: orders, kind: kafka, bootstrap_servers: "127.0.0.1:9092", topics: [orders],
     start_from: earliest, format: json,
     schema: [{name: order_id, type: int64}, {name: user_id, type: int64},
              {name: amount, type: float64}, {name: ts, type: timestamp_ms}],
     event_time: {column: ts, max_out_of_orderness: 1s}, idle_timeout: 10s,
     on_error: dead_letter, dead_letter_topic: orders-bad,
     properties: {fetch.min.bytes: "1"}}
  - {id: big, kind: filter, input: orders, predicate: "amount >= 10"}
  - {id: out, kind: kafka, input: big, bootstrap_servers: "127.0.0.1:9092", topic: big-orders,
     format: json, key: [user_id], delivery: exactly_once}
"#;

fn source(spec: &JobSpec) -> &KafkaSourceSpec {
    match &spec.nodes[0].kind {
        NodeKind::Kafka(KafkaSpec::Source(s)) => s,
        other => panic!("a kafka source, got {other:?}"),
    }
}

fn check(yaml: &str) -> Result<JobSpec, ApiError> {
    let spec = parse_yaml_or_json(yaml)?;
    validate_structure(&spec, Some(4))?;
    Ok(spec)
}

#[test]
fn kafka_issue_example_parses_validates_and_roundtrips() {
    let spec = check(BIG_ORDERS).unwrap();
    let s = source(&spec);
    assert_eq!(s.topics.as_deref(), Some(&["orders".to_string()][..]));
    assert_eq!(s.on_error, OnError::DeadLetter);
    assert_eq!(s.idle_timeout.unwrap().as_millis_i64(), 10_000);
    assert_eq!(s.properties["fetch.min.bytes"], "1");
    assert!(spec.nodes[0].kind.is_source() && spec.nodes[0].kind.is_stateful());
    let NodeKind::Kafka(KafkaSpec::Sink(sink)) = &spec.nodes[2].kind else {
        panic!("a kafka sink")
    };
    assert_eq!(sink.delivery, Delivery::ExactlyOnce);
    assert_eq!(sink.partitioning(), SinkPartitioning::Key);
    assert!(spec.nodes[2].kind.is_sink() && spec.nodes[2].kind.is_stateful());
    assert_eq!(parse_json(&spec.to_json()).unwrap(), spec);
}

#[test]
fn kafka_start_from_forms_parse() {
    for (text, want) in [
        ("latest", StartFrom::Latest),
        ("earliest", StartFrom::Earliest),
        (
            "{timestamp: '2026-12-01T00:00:00Z'}",
            StartFrom::Timestamp("2026-12-01T00:00:00Z".parse().unwrap()),
        ),
    ] {
        let spec = check(&format!(
            "name: x\nnodes:\n  - {{id: k, kind: kafka, bootstrap_servers: 'h:1', topics: [t], format: raw, start_from: {text}}}\n  - {{id: p, kind: print, input: k}}\n"
        ))
        .unwrap();
        assert_eq!(source(&spec).start_from, want, "{text}");
        assert_eq!(parse_json(&spec.to_json()).unwrap(), spec);
    }
}

/// Each bad node is reported with the node and the field at fault.
#[test]
fn kafka_bad_fields_name_node_and_field() {
    let src = "{id: k, kind: kafka, bootstrap_servers: 'h:1'";
    let sink = "{id: o, kind: kafka, input: g, bootstrap_servers: 'h:1'";
    let gen_node = "{id: g, kind: datagen, fields: [{name: id, type: int64, gen: sequence}]}";
    for (nodes, node, field, says) in [
        (format!("{src}, format: raw}}"), "k", "topics", "topics"),
        (
            format!("{src}, topics: [a], topic_pattern: 'a.*', format: raw}}"),
            "k",
            "topic_pattern",
            "not both",
        ),
        (
            format!("{src}, topic_pattern: '(', format: raw}}"),
            "k",
            "topic_pattern",
            "regular expression",
        ),
        (format!("{src}, topics: [a]}}"), "k", "schema", "schema"),
        (
            format!("{src}, topics: ['a b'], format: raw}}"),
            "k",
            "topics",
            "topic name",
        ),
        (
            format!("{src}, topics: [a], format: raw, topic: b}}"),
            "k",
            "topic",
            "unknown field",
        ),
        (
            format!("{src}, topics: [a], format: raw, start_from: soonish}}"),
            "k",
            "start_from",
            "soonish",
        ),
        (
            format!("{src}, topics: [a], format: raw, idle_timeout: 1s}}"),
            "k",
            "idle_timeout",
            "event_time",
        ),
        (
            format!("{src}, topics: [a], format: raw, idle_timeout: forever}}"),
            "k",
            "idle_timeout",
            "forever",
        ),
        (
            format!(
                "{src}, topics: [a], schema: [{{name: v, type: int64}}], on_error: dead_letter}}"
            ),
            "k",
            "dead_letter_topic",
            "dead_letter_topic",
        ),
        (
            format!(
                "{src}, topics: [a], schema: [{{name: v, type: utf8}}], event_time: {{column: v}}}}"
            ),
            "k",
            "event_time",
            "timestamp_ms",
        ),
        (
            format!("{src}, topics: [a], format: raw, properties: {{group.id: g}}}}"),
            "k",
            "properties",
            "group_id",
        ),
        (
            format!("{src}, topics: [a], format: raw, start_from: committed}}"),
            "k",
            "start_from",
            "group_id",
        ),
        (
            format!("{gen_node}\n  - {sink}, topic: t, delivery: exactly_once}}"),
            "o",
            "delivery",
            "checkpoint",
        ),
        (
            format!("{gen_node}\n  - {sink}, topic: t, topics: [t]}}"),
            "o",
            "topics",
            "unknown field",
        ),
        (
            format!("{gen_node}\n  - {sink}, topic: t, partitioning: key}}"),
            "o",
            "partitioning",
            "key",
        ),
        (
            format!("{gen_node}\n  - {sink}, topic: t, transaction_timeout: 10s}}"),
            "o",
            "transaction_timeout",
            "exactly_once",
        ),
    ] {
        let yaml = format!("name: x\nnodes:\n  - {nodes}\n");
        let e = check(&yaml).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidSpec, "{yaml}");
        assert_eq!(
            (e.node.as_deref(), e.field.as_deref()),
            (Some(node), Some(field)),
            "{yaml}: {}",
            e.message
        );
        assert!(e.message.contains(says), "{yaml}: {}", e.message);
    }
}

#[cfg(feature = "plan")]
#[test]
fn kafka_sink_key_columns_are_checked_against_the_input() {
    let yaml = "name: x\ncheckpoint: {interval: 1s}\nnodes:\n  - {id: g, kind: datagen, fields: [{name: id, type: int64, gen: sequence}]}\n  - {id: o, kind: kafka, input: g, bootstrap_servers: 'h:1', topic: t, key: [nope]}\n";
    let spec = check(yaml).unwrap();
    let e = crate::plan::infer_schemas(&spec).unwrap_err();
    assert_eq!(
        (e.node.as_deref(), e.field.as_deref()),
        (Some("o"), Some("key"))
    );
}

/// A window fed by a Kafka source with `event_time` takes the source's
/// per-partition watermarks; without it, the window's assigner as usual.
#[test]
fn kafka_source_event_time_replaces_the_window_assigner() {
    for (event_time, assigner) in [(", event_time: {column: ts}", false), ("", true)] {
        let spec = check(&format!(
            "name: x\nnodes:\n  - {{id: k, kind: kafka, bootstrap_servers: 'h:1', topics: [t], schema: [{{name: u, type: int64}}, {{name: ts, type: timestamp_ms}}]{event_time}}}\n  - {{id: f, kind: filter, input: k, predicate: 'u > 0'}}\n  - {{id: w, kind: window, input: f, key_by: [u], event_time: {{column: ts}}, window: {{type: tumbling, size: 1s}}, aggregates: [{{fn: count, as: n}}]}}\n  - {{id: o, kind: print, input: w}}\n"
        ))
        .unwrap();
        let graph = crate::graph::build(&spec).unwrap();
        assert_eq!(
            graph.vertices[0].watermark.is_some(),
            assigner,
            "{event_time}"
        );
    }
}
