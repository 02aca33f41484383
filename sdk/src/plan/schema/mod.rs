//! Schema inference: the Arrow schema of every node's output, computed from
//! the spec alone, with every column and SQL check that needs types.
//!
//! Both servers run [`validate`]: the JobManager to reject a bad spec at
//! submission (each error names the node and the field), the TaskManager to
//! build the exact schemas its operators produce. Nothing here does I/O.

mod aggregate;
mod kafka;
mod nexmark;
mod top_n;
mod window;

pub use aggregate::{GroupAggregateLayout, group_aggregate_layout};
pub use kafka::{RAW_VALUE, source_schema};
pub use nexmark::{nexmark_schema, nexmark_table_schema};
pub use top_n::{TopNLayout, top_n_layout};
pub use window::{
    AggregateLayout, WINDOW_END, WINDOW_START, WindowLayout, is_float, is_integer, is_timestamp,
    window_layout,
};

use crate::error::{ApiError, ErrorCode};
use crate::graph::{self, JobGraph};
use crate::ids::NodeId;
use crate::plan::expr;
use crate::spec::{
    self, DatagenSpec, FieldType, Generator, JobSpec, KafkaSpec, NodeKind, NodeSpec,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The output schema of every node of a job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schemas {
    by_node: HashMap<NodeId, SchemaRef>,
}

impl Schemas {
    /// The output schema of `node` (a sink's is its input's).
    pub fn get(&self, node: &NodeId) -> Option<&SchemaRef> {
        self.by_node.get(node)
    }
    pub fn len(&self) -> usize {
        self.by_node.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &SchemaRef)> {
        self.by_node.iter()
    }
}

/// Everything a submission or a deploy checks: the spec's structure, its
/// graph, and the schema of every node.
pub fn validate(spec: &JobSpec, total_slots: Option<u32>) -> Result<(JobGraph, Schemas), ApiError> {
    spec::validate_structure(spec, total_slots)?;
    let graph = graph::build(spec)?;
    let schemas = infer_schemas(spec)?;
    Ok((graph, schemas))
}

/// The output schema of every node, in topological order (inputs first).
pub fn infer_schemas(spec: &JobSpec) -> Result<Schemas, ApiError> {
    let mut schemas = Schemas::default();
    let mut pending: Vec<&NodeSpec> = spec.nodes.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut i = 0;
        while i < pending.len() {
            let node = pending[i];
            let input = match &node.input {
                None => None,
                Some(id) => match schemas.by_node.get(id) {
                    Some(s) => Some(Arc::clone(s)),
                    None if spec.node(id).is_none() => {
                        return Err(invalid(
                            node,
                            "input",
                            format!("input `{id}` is not a node of this job"),
                        ));
                    }
                    None => {
                        i += 1;
                        continue; // its input comes later in this walk
                    }
                },
            };
            let schema = node_schema(node, input)?;
            schemas.by_node.insert(node.id.clone(), schema);
            pending.swap_remove(i);
        }
        if pending.len() == before {
            let stuck = pending[0];
            return Err(invalid(
                stuck,
                "input",
                format!("node `{}` is part of a cycle", stuck.id),
            ));
        }
    }
    Ok(schemas)
}

fn node_schema(node: &NodeSpec, input: Option<SchemaRef>) -> Result<SchemaRef, ApiError> {
    if let NodeKind::Datagen(d) = &node.kind {
        return datagen_schema(node, d);
    }
    if let NodeKind::Nexmark(n) = &node.kind {
        return nexmark_schema(node, n);
    }
    if let NodeKind::Kafka(KafkaSpec::Source(k)) = &node.kind {
        return Ok(kafka::source_schema(k));
    }
    let Some(input) = input else {
        let kind = node.kind.name();
        return Err(invalid(
            node,
            "input",
            format!("missing field `input`: a {kind} node reads from another node"),
        ));
    };
    match &node.kind {
        NodeKind::Datagen(d) => datagen_schema(node, d),
        NodeKind::Nexmark(n) => nexmark_schema(node, n),
        NodeKind::Project(p) => expr::compile_projection(&input, &p.exprs)
            .map(|(_, s)| s)
            .map_err(|e| invalid(node, "exprs", e.to_string())),
        NodeKind::Filter(f) => {
            expr::compile_predicate(&input, &f.predicate)
                .map_err(|e| invalid(node, "predicate", e.to_string()))?;
            Ok(input)
        }
        NodeKind::Window(w) => window_layout(&node.id, w, &input).map(|l| l.output),
        NodeKind::Aggregate(a) => group_aggregate_layout(&node.id, a, &input).map(|l| l.output),
        NodeKind::TopN(t) => top_n_layout(&node.id, t, &input).map(|l| l.output),
        NodeKind::Print(_) | NodeKind::Blackhole(_) | NodeKind::File(_) => Ok(input),
        NodeKind::Kafka(KafkaSpec::Sink(k)) => {
            kafka::check_sink(node, k, &input)?;
            Ok(input)
        }
        NodeKind::Kafka(KafkaSpec::Source(k)) => Ok(kafka::source_schema(k)),
    }
}

/// The Arrow type a datagen field produces.
pub fn field_data_type(t: FieldType) -> DataType {
    match t {
        FieldType::Int64 => DataType::Int64,
        FieldType::Float64 => DataType::Float64,
        FieldType::TimestampMs => DataType::Timestamp(TimeUnit::Millisecond, None),
        FieldType::Utf8 => DataType::Utf8,
    }
}

fn datagen_schema(node: &NodeSpec, d: &DatagenSpec) -> Result<SchemaRef, ApiError> {
    if d.fields.is_empty() {
        return Err(invalid(node, "fields", "datagen needs at least one field"));
    }
    let mut names = HashSet::new();
    let mut fields = Vec::with_capacity(d.fields.len());
    for f in &d.fields {
        let bad = |msg: String| invalid(node, "fields", format!("field `{}`: {msg}", f.name));
        if f.name.is_empty() {
            return Err(invalid(node, "fields", "field names must not be empty"));
        }
        if !names.insert(f.name.as_str()) {
            return Err(bad("duplicate field name".into()));
        }
        match (&f.generator, f.data_type) {
            (
                Generator::Sequence { .. },
                FieldType::Int64 | FieldType::Float64 | FieldType::Utf8,
            ) => {}
            (Generator::Sequence { .. }, FieldType::TimestampMs) => {
                return Err(bad("a timestamp_ms field uses `gen: timestamp`".into()));
            }
            (Generator::Random { min, max }, t @ (FieldType::Int64 | FieldType::Float64)) => {
                if !(min.is_finite() && max.is_finite()) || min > max {
                    return Err(bad(format!(
                        "random needs finite min <= max, got [{min}, {max}]"
                    )));
                }
                if t == FieldType::Int64 {
                    let (lo, hi) = (min.ceil(), max.floor());
                    // i64 covers [-2^63, 2^63); both bounds are exact in f64.
                    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
                    if lo > hi || lo < -TWO_63 || hi >= TWO_63 {
                        return Err(bad(format!(
                            "random int64 needs an integer in [{min}, {max}] within the int64 range"
                        )));
                    }
                }
            }
            (Generator::Random { .. }, t) => {
                return Err(bad(format!(
                    "`gen: random` makes int64 or float64 values, not {}",
                    type_name(t)
                )));
            }
            (Generator::Timestamp { .. }, FieldType::TimestampMs) => {}
            (Generator::Timestamp { .. }, t) => {
                return Err(bad(format!(
                    "`gen: timestamp` makes timestamp_ms values, not {}",
                    type_name(t)
                )));
            }
        }
        fields.push(Field::new(
            f.name.clone(),
            field_data_type(f.data_type),
            false,
        ));
    }
    Ok(Arc::new(Schema::new(fields)))
}

fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::Int64 => "int64",
        FieldType::Float64 => "float64",
        FieldType::TimestampMs => "timestamp_ms",
        FieldType::Utf8 => "utf8",
    }
}

fn invalid(node: &NodeSpec, field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidSpec, msg)
        .with_node(node.id.as_str())
        .with_field(field)
}

#[cfg(test)]
mod tests;
