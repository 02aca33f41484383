//! The layout of an `aggregate` node (keyed aggregates without windows), and
//! the key and aggregate column checks it shares with `window`.
//!
//! Output columns: the key columns (their input types), then one column per
//! aggregate, typed as a window's are: `count` → Int64, `sum` → Int64 over
//! integers and Float64 over floats, `min`/`max` → the input type, `avg` →
//! Float64. The schema inference and the TaskManager's operator both use
//! [`group_aggregate_layout`], so they cannot disagree.

use super::window::{AggregateLayout, is_float, is_integer, is_timestamp};
use crate::error::{ApiError, ErrorCode};
use crate::ids::NodeId;
use crate::spec::{AggregateFn, AggregateSpec, GroupAggregateSpec};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use std::collections::HashSet;
use std::sync::Arc;

/// An `aggregate` node, resolved against its input schema.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupAggregateLayout {
    /// Input columns of the key, in `key_by` order.
    pub key_indices: Vec<usize>,
    pub aggregates: Vec<AggregateLayout>,
    /// How long an idle key is kept (`None`: forever), at least 1ms.
    pub state_ttl_ms: Option<i64>,
    pub output: SchemaRef,
}

/// Resolves an `aggregate` spec against its input schema, checking every
/// column and the TTL.
pub fn group_aggregate_layout(
    node: &NodeId,
    spec: &GroupAggregateSpec,
    input: &SchemaRef,
) -> Result<GroupAggregateLayout, ApiError> {
    let columns = Columns { node, input };
    let state_ttl_ms = spec.state_ttl.map(|t| t.as_millis_i64());
    if state_ttl_ms.is_some_and(|t| t < 1) {
        return Err(columns.invalid("state_ttl", "state_ttl must be at least 1ms".into()));
    }
    let mut names = HashSet::new();
    let mut fields = Vec::with_capacity(spec.key_by.len() + spec.aggregates.len());
    let key_indices = columns.keys(&spec.key_by, &mut names, &mut fields)?;
    let aggregates =
        columns.aggregates(&spec.aggregates, &mut names, &mut fields, "the key columns")?;
    Ok(GroupAggregateLayout {
        key_indices,
        aggregates,
        state_ttl_ms,
        output: Arc::new(Schema::new(fields)),
    })
}

/// Column checks against one node's input; every error names the node and
/// the spec field at fault, and lists the available columns when one is
/// missing.
pub(super) struct Columns<'a> {
    pub node: &'a NodeId,
    pub input: &'a SchemaRef,
}

impl Columns<'_> {
    pub fn invalid(&self, field: &str, msg: String) -> ApiError {
        ApiError::new(ErrorCode::InvalidSpec, msg)
            .with_node(self.node.as_str())
            .with_field(field)
    }

    /// The index of input column `name`, which `field` names as `what`.
    pub fn find(&self, field: &str, what: &str, name: &str) -> Result<usize, ApiError> {
        self.input.index_of(name).map_err(|_| {
            let available = self
                .input
                .fields()
                .iter()
                .map(|f| format!("`{}`", f.name()))
                .collect::<Vec<_>>()
                .join(", ");
            self.invalid(
                field,
                format!(
                    "{what} `{name}` is not a column of the input; available columns: {available}"
                ),
            )
        })
    }

    /// The `key_by` columns: at least one, distinct, each usable as a key.
    /// Records their names and appends their fields to the output.
    pub fn keys<'s>(
        &self,
        key_by: &'s [String],
        names: &mut HashSet<&'s str>,
        out: &mut Vec<Field>,
    ) -> Result<Vec<usize>, ApiError> {
        if key_by.is_empty() {
            return Err(self.invalid("key_by", "key_by needs at least one column".into()));
        }
        let mut indices = Vec::with_capacity(key_by.len());
        for key in key_by {
            let i = self.find("key_by", "key column", key)?;
            if !names.insert(key.as_str()) {
                return Err(self.invalid("key_by", format!("key column `{key}` is listed twice")));
            }
            let field = self.input.field(i);
            if !RowConverter::supports_fields(&[SortField::new(field.data_type().clone())]) {
                return Err(self.invalid(
                    "key_by",
                    format!(
                        "key column `{key}` has type {}, which cannot be a key",
                        field.data_type()
                    ),
                ));
            }
            indices.push(i);
            out.push(field.clone());
        }
        Ok(indices)
    }

    /// The aggregates: each with a new output name (`others` says which
    /// names it must differ from besides the other aggregates'), an input
    /// column when the function needs one, and a type the function accepts.
    /// Appends their output fields.
    pub fn aggregates<'s>(
        &self,
        aggregates: &'s [AggregateSpec],
        names: &mut HashSet<&'s str>,
        out: &mut Vec<Field>,
        others: &str,
    ) -> Result<Vec<AggregateLayout>, ApiError> {
        let mut layouts = Vec::with_capacity(aggregates.len());
        for agg in aggregates {
            let fname = fn_name(agg.func);
            if agg.alias.is_empty() {
                return Err(self.invalid(
                    "aggregates",
                    format!("the `{fname}` aggregate needs a non-empty `as` name"),
                ));
            }
            if !names.insert(agg.alias.as_str()) {
                return Err(self.invalid(
                    "aggregates",
                    format!(
                        "output column `{}` is defined twice (aggregate names must differ from each other, {others})",
                        agg.alias
                    ),
                ));
            }
            let input_col = match &agg.column {
                Some(c) => {
                    let i = self.find("aggregates", &format!("{fname} column"), c)?;
                    Some((i, self.input.field(i).data_type().clone()))
                }
                None if agg.func == AggregateFn::Count => None,
                None => {
                    return Err(self.invalid(
                        "aggregates",
                        format!("`{fname}` ({}) needs a `column`", agg.alias),
                    ));
                }
            };
            let Some(output_type) = output_type(agg.func, input_col.as_ref().map(|(_, t)| t))
            else {
                let (c, t) = match (&agg.column, &input_col) {
                    (Some(c), Some((_, t))) => (c.as_str(), t.to_string()),
                    _ => ("", String::new()),
                };
                let accepted = if matches!(agg.func, AggregateFn::Min | AggregateFn::Max) {
                    "numeric or timestamp"
                } else {
                    "numeric"
                };
                return Err(self.invalid(
                    "aggregates",
                    format!("`{fname}` needs a {accepted} column, but `{c}` has type {t}"),
                ));
            };
            // Count never yields null; the others are null for a group whose
            // values were all null.
            out.push(Field::new(
                agg.alias.clone(),
                output_type.clone(),
                agg.func != AggregateFn::Count,
            ));
            layouts.push(AggregateLayout {
                func: agg.func,
                input: input_col,
                output_type,
            });
        }
        Ok(layouts)
    }
}

/// The output type of `func` over a column of type `input` (`None`: count
/// of rows), or `None` when the function does not accept that type.
fn output_type(func: AggregateFn, input: Option<&DataType>) -> Option<DataType> {
    match (func, input) {
        (AggregateFn::Count, _) => Some(DataType::Int64),
        (AggregateFn::Sum, Some(t)) if is_integer(t) => Some(DataType::Int64),
        (AggregateFn::Sum | AggregateFn::Avg, Some(t)) if is_float(t) => Some(DataType::Float64),
        (AggregateFn::Avg, Some(t)) if is_integer(t) => Some(DataType::Float64),
        (AggregateFn::Min | AggregateFn::Max, Some(t))
            if is_integer(t) || is_float(t) || is_timestamp(t) =>
        {
            Some(t.clone())
        }
        _ => None,
    }
}

fn fn_name(f: AggregateFn) -> &'static str {
    match f {
        AggregateFn::Count => "count",
        AggregateFn::Sum => "sum",
        AggregateFn::Min => "min",
        AggregateFn::Max => "max",
        AggregateFn::Avg => "avg",
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
