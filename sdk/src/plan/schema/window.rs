//! The layout of a `window` node: which input columns are its keys, event
//! time and aggregate inputs, and the output schema. The schema inference and
//! the TaskManager's window operator both use it, so they cannot disagree.
//!
//! Output columns: the key columns (their input types), `window_start` and
//! `window_end` (Timestamp(ms), end exclusive; for a session window, its first
//! record's time and its last record's time plus the gap), then one column per
//! aggregate: `count` → Int64, `sum` → Int64 over integers and Float64 over
//! floats, `min`/`max` → the input type, `avg` → Float64.

use super::aggregate::Columns;
use crate::error::{ApiError, ErrorCode};
use crate::ids::NodeId;
use crate::spec::{AggregateFn, WindowKind, WindowSpec};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
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

    if let Some(a) = &spec.watermark_alignment
        && a.max_drift.is_zero()
    {
        return Err(invalid(
            "watermark_alignment",
            "watermark_alignment.max_drift must be positive: at 0 a window reads only its slowest input".into(),
        ));
    }

    let columns = Columns { node, input };
    let mut out_fields = Vec::with_capacity(spec.key_by.len() + 2 + spec.aggregates.len());
    let mut names = HashSet::new();
    let key_indices = columns.keys(&spec.key_by, &mut names, &mut out_fields)?;
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

    let aggregates = columns.aggregates(
        &spec.aggregates,
        &mut names,
        &mut out_fields,
        "the key columns, `window_start` and `window_end`",
    )?;

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
