//! Parsing a job spec from YAML or JSON into [`JobSpec`], naming the node and
//! field of every error.
//!
//! Parsing goes through `serde_json::Value` so that each node is decoded on its
//! own and an error can say which node it is about.

use super::validate::check_duration_field;
use super::{DEFAULT_MAX_PARALLELISM, JobSpec, KafkaSpec, NodeKind, NodeSpec};
use crate::error::{ApiError, ErrorCode};
use crate::ids::NodeId;
use serde_json::{Map, Value};

/// Parses a spec written in YAML or JSON (JSON is valid YAML, but JSON is tried
/// first for clearer messages).
pub fn parse_yaml_or_json(text: &str) -> Result<JobSpec, ApiError> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_err) => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('{') {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("spec is not valid JSON: {json_err}"),
                ));
            }
            serde_yaml::from_str(text).map_err(|e| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("spec is not valid YAML: {e}"),
                )
            })?
        }
    };
    from_value(value)
}

/// Parses a spec from JSON text.
pub fn parse_json(text: &str) -> Result<JobSpec, ApiError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("spec is not valid JSON: {e}"),
        )
    })?;
    from_value(value)
}

/// Window fields checked before decoding (see [`check_duration_field`]).
const ALLOWED_LATENESS: &str = "allowed_lateness";
/// The window field whose `max_drift` is checked before decoding.
const WATERMARK_ALIGNMENT: &str = "watermark_alignment";

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidSpec, msg)
}

/// Decodes a spec from a JSON value.
pub fn from_value(value: Value) -> Result<JobSpec, ApiError> {
    let Value::Object(mut obj) = value else {
        return Err(invalid(
            "a job spec must be a mapping with `name` and `nodes`",
        ));
    };
    let name = match obj.remove("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(_) => return Err(invalid("`name` must be a non-empty string").with_field("name")),
        None => return Err(invalid("missing field `name`").with_field("name")),
    };
    let parallelism = take_u32(&mut obj, "parallelism", None)?.unwrap_or(1);
    let max_parallelism =
        take_u32(&mut obj, "max_parallelism", None)?.unwrap_or(DEFAULT_MAX_PARALLELISM);
    let nodes = match obj.remove("nodes") {
        Some(Value::Array(nodes)) => nodes,
        Some(_) => return Err(invalid("`nodes` must be a list").with_field("nodes")),
        None => return Err(invalid("missing field `nodes`").with_field("nodes")),
    };
    let checkpoint = take_section(&mut obj, "checkpoint")?;
    let restart = take_section(&mut obj, "restart")?;
    if let Some(field) = obj.keys().next() {
        return Err(invalid(format!(
            "unknown field `{field}`; a job has `name`, `parallelism`, `max_parallelism`, `nodes`, `checkpoint`, `restart`"
        ))
        .with_field(field.clone()));
    }
    let nodes = nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| parse_node(i, n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(JobSpec {
        name,
        parallelism,
        max_parallelism,
        nodes,
        checkpoint,
        restart,
    })
}

/// Decodes a job-level section (`checkpoint`, `restart`); errors name the
/// field as `<section>.<field>`.
fn take_section<T: serde::de::DeserializeOwned>(
    obj: &mut Map<String, Value>,
    section: &str,
) -> Result<Option<T>, ApiError> {
    match obj.remove(section) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(fields)) => {
            serde_json::from_value(Value::Object(fields.clone()))
                .map(Some)
                .map_err(|e| {
                    // Every field of a section is optional, so decoding each on
                    // its own finds the one at fault (serde's message does not
                    // name it for a bad value).
                    let culprit = fields.iter().find_map(|(k, v)| {
                        let one = Map::from_iter([(k.clone(), v.clone())]);
                        serde_json::from_value::<T>(Value::Object(one))
                            .err()
                            .map(|e| (k.clone(), e.to_string()))
                    });
                    let (field, msg) = culprit.unwrap_or_else(|| {
                        let msg = e.to_string();
                        (field_in_message(&msg).unwrap_or_default(), msg)
                    });
                    let field = if field.is_empty() {
                        section.to_string()
                    } else {
                        format!("{section}.{field}")
                    };
                    invalid(format!("{field}: {msg}")).with_field(field)
                })
        }
        Some(other) => {
            Err(invalid(format!("`{section}` must be a mapping, got {other}")).with_field(section))
        }
    }
}

fn take_u32(
    obj: &mut Map<String, Value>,
    field: &str,
    node: Option<&str>,
) -> Result<Option<u32>, ApiError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    let e = invalid(format!("`{field}` must be a non-negative integer, got {v}"))
                        .with_field(field);
                    match node {
                        Some(node) => e.with_node(node),
                        None => e,
                    }
                })?;
            Ok(Some(n))
        }
    }
}

fn parse_node(position: usize, value: Value) -> Result<NodeSpec, ApiError> {
    let Value::Object(mut obj) = value else {
        return Err(invalid(format!("node #{position} must be a mapping"))
            .with_field(format!("nodes[{position}]")));
    };
    let id = match obj.remove("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => {
            return Err(
                invalid(format!("node #{position} needs a non-empty string `id`"))
                    .with_field(format!("nodes[{position}].id")),
            );
        }
    };
    let input = match obj.remove("input") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(NodeId(s)),
        Some(other) => {
            return Err(invalid(format!("`input` must be a node id, got {other}"))
                .with_node(&id)
                .with_field("input"));
        }
    };
    let parallelism = take_u32(&mut obj, "parallelism", Some(&id))?;
    let kind_name = match obj.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(format!("`kind` must be a string, got {other}"))
                .with_node(&id)
                .with_field("kind"));
        }
        None => {
            return Err(invalid(format!(
                "missing field `kind` (one of {})",
                NodeKind::ALL.join(", ")
            ))
            .with_node(&id)
            .with_field("kind"));
        }
    };
    if !NodeKind::ALL.contains(&kind_name.as_str()) {
        return Err(invalid(format!(
            "unknown node kind `{kind_name}`; known kinds: {}",
            NodeKind::ALL.join(", ")
        ))
        .with_node(&id)
        .with_field("kind"));
    }
    if kind_name == "window" {
        if let Some(v) = obj.get(ALLOWED_LATENESS) {
            check_duration_field(&id, ALLOWED_LATENESS, v)?;
        }
        if let Some(v) = obj
            .get(WATERMARK_ALIGNMENT)
            .and_then(|a| a.get("max_drift"))
        {
            check_duration_field(&id, WATERMARK_ALIGNMENT, v)?;
        }
    }
    if kind_name == "kafka" {
        let kind = kafka_kind(&id, input.is_some(), obj)?;
        return Ok(NodeSpec {
            id: NodeId(id),
            input,
            parallelism,
            kind,
        });
    }
    let kind: NodeKind = serde_json::from_value(Value::Object(obj)).map_err(|e| {
        let msg = e.to_string();
        let field = field_in_message(&msg);
        let mut err = invalid(format!("{kind_name} node: {msg}")).with_node(&id);
        err.field = field;
        err
    })?;
    Ok(NodeSpec {
        id: NodeId(id),
        input,
        parallelism,
        kind,
    })
}

/// `kind: kafka` is a source without `input` and a sink with one: decoding
/// the side the node is makes an error name the field that does not belong.
fn kafka_kind(
    id: &str,
    has_input: bool,
    mut obj: Map<String, Value>,
) -> Result<NodeKind, ApiError> {
    obj.remove("kind");
    for field in [
        "idle_timeout",
        "partition_discovery_interval",
        "transaction_timeout",
    ] {
        if let Some(v) = obj.get(field) {
            check_duration_field(id, field, v)?;
        }
    }
    let side = if has_input { "sink" } else { "source" };
    let decode = |obj: &Map<String, Value>| -> Result<KafkaSpec, serde_json::Error> {
        let value = Value::Object(obj.clone());
        Ok(if has_input {
            KafkaSpec::Sink(serde_json::from_value(value)?)
        } else {
            KafkaSpec::Source(serde_json::from_value(value)?)
        })
    };
    let e = match decode(&obj) {
        Ok(spec) => return Ok(NodeKind::Kafka(spec)),
        Err(e) => e,
    };
    let msg = e.to_string();
    // serde names unknown and missing fields; for a bad value, the field at
    // fault is the one whose removal changes the error.
    let field = if msg.starts_with("unknown field") || msg.starts_with("missing field") {
        field_in_message(&msg)
    } else {
        obj.keys()
            .find(|k| {
                let mut without = obj.clone();
                without.remove(*k);
                decode(&without).map_or_else(|e2| e2.to_string() != msg, |_| true)
            })
            .cloned()
    };
    let mut err = invalid(format!("kafka {side}: {msg}")).with_node(id);
    err.field = field;
    Err(err)
}

/// serde names the offending field in backticks (`unknown field `x``, `missing
/// field `x``): surface it as the error's field.
fn field_in_message(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue's example job, as shipped in `examples/clicks.yaml`.
    const CLICKS: &str = include_str!("../../../examples/clicks.yaml");

    #[test]
    fn parse_issue_example_yaml_roundtrips_through_json() {
        let spec = parse_yaml_or_json(CLICKS).unwrap();
        assert_eq!(spec.name, "clicks");
        assert_eq!(spec.parallelism, 2);
        assert_eq!(spec.nodes.len(), 5);
        assert_eq!(spec.nodes[3].kind.name(), "window");
        let again = parse_json(&spec.to_json()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn parse_unknown_kind_names_node_and_field() {
        let err = parse_yaml_or_json("name: x\nnodes:\n  - {id: a, kind: teleport}\n").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidSpec);
        assert_eq!(err.node.as_deref(), Some("a"));
        assert_eq!(err.field.as_deref(), Some("kind"));
        assert!(err.message.contains("teleport"), "{}", err.message);
    }

    #[test]
    fn parse_unknown_field_names_it() {
        let err = parse_yaml_or_json(
            "name: x\nnodes:\n  - {id: f, kind: filter, input: a, predicat: x}\n",
        )
        .unwrap_err();
        assert_eq!(err.node.as_deref(), Some("f"));
        assert_eq!(err.field.as_deref(), Some("predicat"));
    }

    #[test]
    fn parse_bad_duration_is_invalid_spec() {
        let err = parse_yaml_or_json(
            "name: x\nnodes:\n  - {id: w, kind: window, input: a, key_by: [k], event_time: {column: ts}, window: {type: tumbling, size: soon}, aggregates: []}\n",
        )
        .unwrap_err();
        assert_eq!(err.node.as_deref(), Some("w"));
        assert!(err.message.contains("soon"), "{}", err.message);
    }

    const LATE_WINDOW: &str = "name: x\nnodes:\n  - {id: w, kind: window, input: a, key_by: [k], event_time: {column: ts}, window: {type: tumbling, size: 1s}, aggregates: []";

    #[test]
    fn parse_allowed_lateness_defaults_to_zero_and_roundtrips() {
        let spec = parse_yaml_or_json(&format!("{LATE_WINDOW}}}\n")).unwrap();
        let NodeKind::Window(w) = &spec.nodes[0].kind else {
            panic!("a window node")
        };
        assert!(w.allowed_lateness.is_zero());
        assert!(
            !spec.to_json().contains("allowed_lateness"),
            "zero is left out, so older specs read back unchanged"
        );
        let spec = parse_yaml_or_json(&format!("{LATE_WINDOW}, allowed_lateness: 5s}}\n")).unwrap();
        let NodeKind::Window(w) = &spec.nodes[0].kind else {
            panic!("a window node")
        };
        assert_eq!(w.allowed_lateness.as_millis_i64(), 5_000);
        assert_eq!(parse_json(&spec.to_json()).unwrap(), spec);
    }

    #[test]
    fn parse_bad_allowed_lateness_names_node_and_field() {
        for (value, says) in [
            ("'-5s'", "negative"),
            ("-5", "negative"),
            ("soon", "soon"),
            ("5", "duration"),
            ("[1s]", "duration"),
        ] {
            let err = parse_yaml_or_json(&format!("{LATE_WINDOW}, allowed_lateness: {value}}}\n"))
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidSpec, "{value}");
            assert_eq!(
                (err.node.as_deref(), err.field.as_deref()),
                (Some("w"), Some("allowed_lateness")),
                "{value}"
            );
            assert!(err.message.contains(says), "{value}: {}", err.message);
        }
    }

    #[test]
    fn parse_watermark_alignment_roundtrips_and_bad_drift_names_the_field() {
        let spec = parse_yaml_or_json(&format!(
            "{LATE_WINDOW}, watermark_alignment: {{max_drift: 20s}}}}\n"
        ))
        .unwrap();
        let NodeKind::Window(w) = &spec.nodes[0].kind else {
            panic!("a window node")
        };
        let drift = w.watermark_alignment.as_ref().unwrap().max_drift;
        assert_eq!(drift.as_millis_i64(), 20_000);
        assert_eq!(parse_json(&spec.to_json()).unwrap(), spec);
        for (value, says) in [
            ("{max_drift: '-1s'}", "negative"),
            ("{max_drift: soon}", "soon"),
            ("{max_drift: 1s, group: a}", "group"),
        ] {
            let err =
                parse_yaml_or_json(&format!("{LATE_WINDOW}, watermark_alignment: {value}}}\n"))
                    .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidSpec, "{value}");
            assert_eq!(err.node.as_deref(), Some("w"), "{value}");
            assert!(err.message.contains(says), "{value}: {}", err.message);
        }
    }

    #[test]
    fn parse_garbage_is_bad_request() {
        assert_eq!(
            parse_yaml_or_json("{not json").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_yaml_or_json("- just\n- a list").unwrap_err().code,
            ErrorCode::InvalidSpec
        );
    }
}
