//! Structural validation of a [`JobSpec`]: unique ids, inputs that exist, no
//! cycles, sources without and other nodes with an input, sane parallelism.
//! Column and SQL checks need schemas and live in `plan`.

use super::{HumanDuration, JobSpec, KafkaSpec, NodeKind};
use crate::error::{ApiError, ErrorCode};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

fn invalid(node: &str, field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidSpec, msg)
        .with_node(node)
        .with_field(field)
}

/// Checks a node's duration field before the node is decoded, so that a bad
/// value is reported with its node and field (serde's message names
/// neither): a string such as `"5s"`, never negative.
pub(super) fn check_duration_field(node: &str, field: &str, value: &Value) -> Result<(), ApiError> {
    match value {
        Value::String(s) if s.trim_start().starts_with('-') => Err(invalid(
            node,
            field,
            format!("{field} must not be negative, got {s:?}"),
        )),
        Value::String(s) => s
            .parse::<HumanDuration>()
            .map(drop)
            .map_err(|e| invalid(node, field, format!("{field}: {e}"))),
        Value::Number(n) if n.as_f64().is_some_and(|f| f < 0.0) => Err(invalid(
            node,
            field,
            format!("{field} must not be negative, got {n}"),
        )),
        other => Err(invalid(
            node,
            field,
            format!("{field} must be a duration such as \"5s\", got {other}"),
        )),
    }
}

/// Checks the shape of the graph. `total_slots` (when known) bounds parallelism.
pub fn validate_structure(spec: &JobSpec, total_slots: Option<u32>) -> Result<(), ApiError> {
    if spec.parallelism == 0 {
        return Err(
            ApiError::new(ErrorCode::InvalidSpec, "parallelism must be at least 1")
                .with_field("parallelism"),
        );
    }
    if spec.max_parallelism == 0 || spec.max_parallelism > 32768 {
        return Err(ApiError::new(
            ErrorCode::InvalidSpec,
            "max_parallelism must be in 1..=32768",
        )
        .with_field("max_parallelism"));
    }
    if spec.parallelism > spec.max_parallelism {
        return Err(ApiError::new(
            ErrorCode::InvalidSpec,
            format!(
                "parallelism {} exceeds max_parallelism {}",
                spec.parallelism, spec.max_parallelism
            ),
        )
        .with_field("parallelism"));
    }
    if let Some(slots) = total_slots
        && spec.parallelism > slots
    {
        return Err(ApiError::new(
            ErrorCode::InsufficientSlots,
            format!(
                "parallelism {} needs {} slots but the cluster has {slots}",
                spec.parallelism, spec.parallelism
            ),
        )
        .with_field("parallelism"));
    }
    super::validate_sections(spec)?;
    if spec.nodes.is_empty() {
        return Err(
            ApiError::new(ErrorCode::InvalidSpec, "a job needs at least one node")
                .with_field("nodes"),
        );
    }
    let mut seen = HashSet::new();
    for node in &spec.nodes {
        let id = node.id.as_str();
        if !seen.insert(id) {
            return Err(invalid(id, "id", format!("duplicate node id `{id}`")));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                id,
                "id",
                "node ids may contain only letters, digits, `_` and `-`",
            ));
        }
        if let Some(p) = node.parallelism {
            if p == 0 {
                return Err(invalid(id, "parallelism", "parallelism must be at least 1"));
            }
            if p > spec.parallelism {
                return Err(invalid(
                    id,
                    "parallelism",
                    format!(
                        "node parallelism {p} exceeds the job's parallelism {}",
                        spec.parallelism
                    ),
                ));
            }
        }
    }
    let ids: HashMap<&str, usize> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    for node in &spec.nodes {
        let id = node.id.as_str();
        match (&node.input, node.kind.is_source()) {
            (Some(_), true) => {
                return Err(invalid(
                    id,
                    "input",
                    format!("a {} source takes no input", node.kind.name()),
                ));
            }
            (None, false) => {
                return Err(invalid(
                    id,
                    "input",
                    format!(
                        "missing field `input`: a {} node reads from another node",
                        node.kind.name()
                    ),
                ));
            }
            (Some(input), false) if !ids.contains_key(input.as_str()) => {
                return Err(invalid(
                    id,
                    "input",
                    format!("input `{input}` is not a node of this job"),
                ));
            }
            (Some(input), false) if spec.node(input).is_some_and(|n| n.kind.is_sink()) => {
                return Err(invalid(
                    id,
                    "input",
                    format!("input `{input}` is a sink and has no output"),
                ));
            }
            _ => {}
        }
        if let NodeKind::Blackhole(b) = &node.kind
            && b.rows_per_second
                .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err(invalid(
                id,
                "rows_per_second",
                "rows_per_second must be a positive number",
            ));
        }
        match &node.kind {
            NodeKind::Kafka(KafkaSpec::Source(k)) => k.validate(id)?,
            NodeKind::Kafka(KafkaSpec::Sink(k)) => k.validate(id, spec.checkpoint.is_some())?,
            _ => {}
        }
        if let NodeKind::Nexmark(n) = &node.kind {
            n.validate(id)?;
        }
        if let NodeKind::Datagen(d) = &node.kind {
            if d.fields.is_empty() {
                return Err(invalid(id, "fields", "datagen needs at least one field"));
            }
            if d.rows_per_second
                .is_some_and(|r| !(r > 0.0 && r.is_finite()))
            {
                return Err(invalid(
                    id,
                    "rows_per_second",
                    "rows_per_second must be a positive number",
                ));
            }
            if d.batch_size == Some(0) {
                return Err(invalid(id, "batch_size", "batch_size must be at least 1"));
            }
        }
    }
    // Every node has at most one input, so a cycle is a walk up the inputs that
    // comes back to where it started.
    for node in &spec.nodes {
        let mut cur = node.input.as_ref();
        let mut steps = 0;
        while let Some(input) = cur {
            if input == &node.id {
                return Err(invalid(
                    node.id.as_str(),
                    "input",
                    format!("node `{}` is part of a cycle", node.id),
                ));
            }
            steps += 1;
            if steps > spec.nodes.len() {
                break; // a cycle not through this node; reported when its own members are checked
            }
            cur = spec.node(input).and_then(|n| n.input.as_ref());
        }
    }
    if !spec.nodes.iter().any(|n| n.kind.is_source()) {
        return Err(
            ApiError::new(ErrorCode::InvalidSpec, "a job needs at least one source")
                .with_field("nodes"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_yaml_or_json;

    fn check(yaml: &str) -> Result<(), ApiError> {
        validate_structure(&parse_yaml_or_json(yaml)?, Some(4))
    }
    const GEN: &str =
        "  - {id: g, kind: datagen, count: 10, fields: [{name: id, type: int64, gen: sequence}]}\n";

    #[test]
    fn validate_missing_input_names_node() {
        let e = check(&format!(
            "name: x\nnodes:\n{GEN}  - {{id: s, kind: print, input: nope}}\n"
        ))
        .unwrap_err();
        assert_eq!(
            (e.node.as_deref(), e.field.as_deref()),
            (Some("s"), Some("input"))
        );
        let e = check(&format!(
            "name: x\nnodes:\n{GEN}  - {{id: s, kind: print}}\n"
        ))
        .unwrap_err();
        assert_eq!(e.node.as_deref(), Some("s"));
    }

    #[test]
    fn validate_cycle_is_rejected() {
        let e = check(&format!(
            "name: x\nnodes:\n{GEN}  - {{id: a, kind: filter, input: b, predicate: 'true'}}\n  - {{id: b, kind: filter, input: a, predicate: 'true'}}\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("cycle"), "{}", e.message);
        assert!(matches!(e.node.as_deref(), Some("a") | Some("b")));
    }

    #[test]
    fn validate_parallelism_zero_and_over_slots() {
        let e = check(&format!("name: x\nparallelism: 0\nnodes:\n{GEN}")).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidSpec, Some("parallelism"))
        );
        let e = check(&format!("name: x\nparallelism: 5\nnodes:\n{GEN}")).unwrap_err();
        assert_eq!(e.code, ErrorCode::InsufficientSlots);
    }

    #[test]
    fn validate_duplicate_ids() {
        let e = check(&format!("name: x\nnodes:\n{GEN}{GEN}")).unwrap_err();
        assert!(e.message.contains("duplicate"));
    }
}
