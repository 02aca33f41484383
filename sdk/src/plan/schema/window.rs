//! The layout of a `window` node: which input columns are its keys, event
//! time and aggregate inputs, and the output schema. The schema inference and
//! the TaskManager's window operator both use it, so they cannot disagree.
//!
//! Output columns: the key columns (their input types), `window_start` and
//! `window_end` (Timestamp(ms), end exclusive; for a session window, its first
//! record's time and its last record's time plus the gap), then one column per
//! aggregate: `count` → Int64, `sum` → Int64 over integers and Float64 over
//! floats, `min`/`max` → the input type, `avg` → Float64.

use crate::error::{ApiError, ErrorCode};
use crate::ids::NodeId;
use crate::spec::{AggregateFn, WindowKind, WindowSpec};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use std::collections::HashSet;
use std::sync::Arc;

/// Names of the window-bound columns of a window's output.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// A window node, resolved against its input schema.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowLayout {
    /// Input columns of the key, in `key_by` order.
    pub key_indices: Vec<usize>,
    /// Input column of event time (Timestamp(ms) or Int64 ms since epoch).
    pub event_time_index: usize,
    /// Tumbling and sliding windows: their size (session windows: the gap).
    pub size_ms: i64,
    /// Equal to `size_ms` for tumbling windows; `size_ms` is a multiple of it.
    /// Session windows: the gap.
    pub slide_ms: i64,
    /// Set for session windows: per key, records at most this far apart
    /// share a session `[first, last + gap)`.
    pub session_gap_ms: Option<i64>,
    /// How long after firing a window (or session) is kept for late records:
    /// it is dropped once the watermark reaches `end - 1 + allowed_lateness_ms`.
    pub allowed_lateness_ms: i64,
    pub aggregates: Vec<AggregateLayout>,
    pub output: SchemaRef,
}

/// One aggregate output column.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateLayout {
    pub func: AggregateFn,
    /// The input column and its type (`None` only for `count` without a column,
    /// which counts rows).
    pub input: Option<(usize, DataType)>,
    pub output_type: DataType,
}

/// Resolves a window spec against its input schema, checking every column.
pub fn window_layout(
    node: &NodeId,
    spec: &WindowSpec,
    input: &SchemaRef,
) -> Result<WindowLayout, ApiError> {
    let invalid = |field: &str, msg: String| {
        ApiError::new(ErrorCode::InvalidSpec, msg)
            .with_node(node.as_str())
            .with_field(field)
    };
    let available = || {
        input
            .fields()
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let find = |field: &str, what: &str, name: &str| {
        input.index_of(name).map_err(|_| {
            invalid(
                field,
                format!(
                    "{what} `{name}` is not a column of the input; available columns: {}",
                    available()
                ),
            )
        })
    };

    let (size_ms, slide_ms, session_gap_ms) = match &spec.window {
        WindowKind::Tumbling { size } => (size.as_millis_i64(), size.as_millis_i64(), None),
        WindowKind::Sliding { size, slide } => (size.as_millis_i64(), slide.as_millis_i64(), None),
        WindowKind::Session { gap } => {
            let gap = gap.as_millis_i64();
            if gap <= 0 {
                return Err(invalid("window", "session gap must be at least 1ms".into()));
            }
            (gap, gap, Some(gap))
        }
    };
    if size_ms <= 0 {
        return Err(invalid("window", "window size must be at least 1ms".into()));
    }
    if slide_ms <= 0 {
        return Err(invalid(
            "window",
            "window slide must be at least 1ms".into(),
        ));
    }
    if slide_ms > size_ms {
        return Err(invalid(
            "window",
            format!("window slide ({slide_ms}ms) must not exceed its size ({size_ms}ms)"),
        ));
    }
    if size_ms % slide_ms != 0 {
        return Err(invalid(
            "window",
            format!(
                "window size ({size_ms}ms) must be a multiple of its slide ({slide_ms}ms), so every row is in the same number of windows"
            ),
        ));
    }

    if spec.key_by.is_empty() {
        return Err(invalid("key_by", "key_by needs at least one column".into()));
    }
    let mut key_indices = Vec::with_capacity(spec.key_by.len());
    let mut out_fields = Vec::with_capacity(spec.key_by.len() + 2 + spec.aggregates.len());
    let mut names = HashSet::new();
    for key in &spec.key_by {
        let i = find("key_by", "key column", key)?;
        if !names.insert(key.as_str()) {
            return Err(invalid(
                "key_by",
                format!("key column `{key}` is listed twice"),
            ));
        }
        let field = input.field(i);
        if !RowConverter::supports_fields(&[SortField::new(field.data_type().clone())]) {
            return Err(invalid(
                "key_by",
                format!(
                    "key column `{key}` has type {}, which cannot be a key",
                    field.data_type()
                ),
            ));
        }
        key_indices.push(i);
        out_fields.push(field.clone());
    }
    for bound in [WINDOW_START, WINDOW_END] {
        if !names.insert(bound) {
            return Err(invalid(
                "key_by",
                format!("a key column cannot be named `{bound}`: the output has that column"),
            ));
        }
        out_fields.push(Field::new(
            bound,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
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
                    "event-time column `{ts}` has type {other}; it must be a Timestamp(ms) or an Int64 of ms since epoch (CAST it in a project)"
                ),
            ));
        }
    }

    let mut aggregates = Vec::with_capacity(spec.aggregates.len());
    for agg in &spec.aggregates {
        let fname = fn_name(agg.func);
        if agg.alias.is_empty() {
            return Err(invalid(
                "aggregates",
                format!("the `{fname}` aggregate needs a non-empty `as` name"),
            ));
        }
        if !names.insert(agg.alias.as_str()) {
            return Err(invalid(
                "aggregates",
                format!(
                    "output column `{}` is defined twice (aggregate names must differ from each other, the key columns, `window_start` and `window_end`)",
                    agg.alias
                ),
            ));
        }
        let input_col = match &agg.column {
            Some(c) => {
                let i = find("aggregates", &format!("{fname} column"), c)?;
                Some((i, input.field(i).data_type().clone()))
            }
            None if agg.func == AggregateFn::Count => None,
            None => {
                return Err(invalid(
                    "aggregates",
                    format!("`{fname}` ({}) needs a `column`", agg.alias),
                ));
            }
        };
        let output_type = match (agg.func, &input_col) {
            (AggregateFn::Count, _) => Some(DataType::Int64),
            (AggregateFn::Sum, Some((_, t))) if is_integer(t) => Some(DataType::Int64),
            (AggregateFn::Sum | AggregateFn::Avg, Some((_, t))) if is_float(t) => {
                Some(DataType::Float64)
            }
            (AggregateFn::Avg, Some((_, t))) if is_integer(t) => Some(DataType::Float64),
            (AggregateFn::Min | AggregateFn::Max, Some((_, t)))
                if is_integer(t) || is_float(t) || is_timestamp(t) =>
            {
                Some(t.clone())
            }
            _ => None,
        };
        let Some(output_type) = output_type else {
            let (c, t) = match (&agg.column, &input_col) {
                (Some(c), Some((_, t))) => (c.as_str(), t.to_string()),
                _ => ("", String::new()),
            };
            let accepted = if matches!(agg.func, AggregateFn::Min | AggregateFn::Max) {
                "numeric or timestamp"
            } else {
                "numeric"
            };
            return Err(invalid(
                "aggregates",
                format!("`{fname}` needs a {accepted} column, but `{c}` has type {t}"),
            ));
        };
        // Count never yields null; the others are null for a window whose
        // values were all null.
        out_fields.push(Field::new(
            agg.alias.clone(),
            output_type.clone(),
            agg.func != AggregateFn::Count,
        ));
        aggregates.push(AggregateLayout {
            func: agg.func,
            input: input_col,
            output_type,
        });
    }

    Ok(WindowLayout {
        key_indices,
        event_time_index,
        size_ms,
        slide_ms,
        session_gap_ms,
        allowed_lateness_ms: spec.allowed_lateness.as_millis_i64(),
        aggregates,
        output: Arc::new(Schema::new(out_fields)),
    })
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

/// Integer types, accumulated as i64.
pub fn is_integer(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// Float types, accumulated as f64.
pub fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

/// Timestamps of any unit, accumulated (min/max only) as i64.
pub fn is_timestamp(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(_, _))
}
