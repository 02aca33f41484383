//! The layout of a `top_n` node: its group, ranking and event-time columns
//! resolved against the input schema, and its output schema (the input's,
//! plus the optional Int64 rank column). The schema inference and the
//! TaskManager's operator both use it, so they cannot disagree.

use super::window::{is_float, is_integer, is_timestamp};
use crate::error::{ApiError, ErrorCode};
use crate::ids::NodeId;
use crate::spec::{SortOrder, TopNSpec};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use std::collections::HashSet;
use std::sync::Arc;

/// A `top_n` node, resolved against its input schema.
#[derive(Clone, Debug, PartialEq)]
pub struct TopNLayout {
    /// Input columns of the group, in `partition_by` order.
    pub partition_indices: Vec<usize>,
    /// Input column ranked on (integer, float or timestamp).
    pub order_index: usize,
    pub descending: bool,
    pub n: usize,
    pub with_ties: bool,
    /// Input column of the group's event time (Timestamp(ms) or Int64 ms),
    /// one of the partition columns.
    pub event_time_index: usize,
    /// Whether the output ends with the rank column.
    pub rank: bool,
    pub output: SchemaRef,
}

/// Resolves a `top_n` spec against its input schema, checking every column.
pub fn top_n_layout(
    node: &NodeId,
    spec: &TopNSpec,
    input: &SchemaRef,
) -> Result<TopNLayout, ApiError> {
    let invalid = |field: &str, msg: String| {
        ApiError::new(ErrorCode::InvalidSpec, msg)
            .with_node(node.as_str())
            .with_field(field)
    };
    let find = |field: &str, what: &str, name: &str| {
        input.index_of(name).map_err(|_| {
            let available = input
                .fields()
                .iter()
                .map(|f| format!("`{}`", f.name()))
                .collect::<Vec<_>>()
                .join(", ");
            invalid(
                field,
                format!(
                    "{what} `{name}` is not a column of the input; available columns: {available}"
                ),
            )
        })
    };

    if spec.n == 0 {
        return Err(invalid("n", "n must be at least 1".into()));
    }
    if spec.partition_by.is_empty() {
        return Err(invalid(
            "partition_by",
            "partition_by needs at least one column (it must include the event-time column)".into(),
        ));
    }
    let mut partition_indices = Vec::with_capacity(spec.partition_by.len());
    let mut seen = HashSet::new();
    for col in &spec.partition_by {
        let i = find("partition_by", "partition column", col)?;
        if !seen.insert(col.as_str()) {
            return Err(invalid(
                "partition_by",
                format!("partition column `{col}` is listed twice"),
            ));
        }
        let t = input.field(i).data_type();
        if !RowConverter::supports_fields(&[SortField::new(t.clone())]) {
            return Err(invalid(
                "partition_by",
                format!("partition column `{col}` has type {t}, which cannot be a key"),
            ));
        }
        partition_indices.push(i);
    }

    let order_index = find("order_by", "order_by column", &spec.order_by)?;
    let t = input.field(order_index).data_type();
    if !(is_integer(t) || is_float(t) || is_timestamp(t)) {
        return Err(invalid(
            "order_by",
            format!(
                "order_by column `{}` has type {t}; it must be numeric or a timestamp",
                spec.order_by
            ),
        ));
    }

    let ts = &spec.event_time.column;
    let event_time_index = find("event_time", "event-time column", ts)?;
    match input.field(event_time_index).data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => {}
        other => {
            return Err(invalid(
                "event_time",
                format!(
                    "event-time column `{ts}` has type {other}; it must be a Timestamp(ms) or an Int64 of ms since epoch"
                ),
            ));
        }
    }
    if !spec.partition_by.iter().any(|c| c == ts) {
        return Err(invalid(
            "event_time",
            format!(
                "event-time column `{ts}` must be one of the partition_by columns, so every group has one event time"
            ),
        ));
    }

    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    if let Some(rank) = &spec.rank_column {
        if rank.is_empty() {
            return Err(invalid(
                "rank_column",
                "rank_column must not be empty".into(),
            ));
        }
        if input.index_of(rank).is_ok() {
            return Err(invalid(
                "rank_column",
                format!("rank column `{rank}` is already a column of the input"),
            ));
        }
        fields.push(Field::new(rank.clone(), DataType::Int64, false));
    }

    Ok(TopNLayout {
        partition_indices,
        order_index,
        descending: spec.order == SortOrder::Desc,
        n: spec.n as usize,
        with_ties: spec.with_ties,
        event_time_index,
        rank: spec.rank_column.is_some(),
        output: Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())),
    })
}

#[cfg(test)]
#[path = "top_n_tests.rs"]
mod tests;
