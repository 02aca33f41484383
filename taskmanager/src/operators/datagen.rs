//! `datagen`: deterministic rows, built column by column as Arrow arrays.
//!
//! Row `r` is global: it belongs to split `r mod max_parallelism`, and a
//! subtask generates the rows of the splits (key groups) it owns, in
//! increasing `r` ([`super::splits`]), so the values do not depend on the
//! parallelism, `count` bounds the total over all subtasks, and the position
//! reached is checkpointed per split and moves with it when the parallelism
//! changes. Column values are functions of `r`:
//! - `sequence`: `start + r * step` (utf8 renders the number);
//! - `random`: SplitMix64 at position `r` of a stream seeded by `(seed,
//!   field index)`, mapped to `[min, max]` for ints and `[min, max)` for floats;
//! - `timestamp`: `start + r * step`, truncated to ms (the step may be finer).
//!
//! `rows_per_second` is the total rate: each subtask paces at its share of the
//! splits times the rate with a
//! token bucket and emits batches small enough that one leaves at least every
//! 50 ms, so a slow stream still has low latency.

use super::TaskContext;
use super::pacing::{LatencyMarks, Pacing};
use super::splits::Splits;
use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringBuilder, TimestampMillisecondArray,
};
use arrow::datatypes::SchemaRef;
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{
    Barrier, Collector, OperatorError, RestoredState, Source, SourcePoll, StateChanges,
};
use eddy_sdk::spec::{DatagenSpec, FieldType, Generator};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

/// Rows per batch when the spec does not say.
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How one column's values follow from the global row number.
#[derive(Clone, Debug)]
enum Column {
    SeqInt {
        start: i64,
        step: i64,
    },
    SeqFloat {
        start: i64,
        step: i64,
    },
    SeqUtf8 {
        start: i64,
        step: i64,
    },
    /// `span == 0` means the whole i64 range.
    RandInt {
        stream: u64,
        min: i64,
        span: u64,
    },
    RandFloat {
        stream: u64,
        min: f64,
        max: f64,
    },
    /// Milliseconds `start + floor(r * step_ns / 1e6)`: the step keeps
    /// sub-millisecond precision, so `step: 10us` advances event time by 1 ms
    /// every 100 rows.
    Timestamp {
        start: i64,
        step_ns: i128,
    },
}

pub struct Datagen {
    node: NodeId,
    schema: SchemaRef,
    columns: Vec<Column>,
    /// The rows this subtask owns and how far it got.
    splits: Splits,
    batch_size: usize,
    pacing: Option<Pacing>,
    marks: Option<LatencyMarks>,
}

impl Datagen {
    /// The schema is the node's, from `eddy_sdk::plan` (which also checked the
    /// generator/type combinations this relies on).
    pub fn new(node: &NodeId, spec: &DatagenSpec, schema: SchemaRef, ctx: &TaskContext) -> Self {
        let columns = spec
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| column(spec.seed, i, f.data_type, &f.generator))
            .collect();
        let splits = Splits::new(ctx.key_groups(), ctx.max_parallelism, spec.count);
        let batch_size = spec.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1);
        let pacing = spec
            .rows_per_second
            .map(|rate| Pacing::new(rate * splits.share(), batch_size, Instant::now()));
        Datagen {
            node: node.clone(),
            schema,
            columns,
            splits,
            batch_size,
            pacing,
            marks: LatencyMarks::new(ctx.latency_interval, Instant::now()),
        }
    }

    /// Builds the batch of the global rows `run`.
    fn generate(&self, run: std::ops::Range<u64>) -> Result<RecordBatch, OperatorError> {
        let n = (run.end - run.start) as usize;
        let rows = move || run.clone();
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| -> ArrayRef {
                match *c {
                    Column::SeqInt { start, step } => Arc::new(Int64Array::from_iter_values(
                        rows().map(|r| linear(start, step, r)),
                    )),
                    Column::SeqFloat { start, step } => Arc::new(Float64Array::from_iter_values(
                        rows().map(|r| linear(start, step, r) as f64),
                    )),
                    Column::SeqUtf8 { start, step } => {
                        let mut b = StringBuilder::with_capacity(n, n * 8);
                        for r in rows() {
                            // Writing into the builder appends to the current value; the
                            // empty append closes it. No per-row String.
                            let _ = write!(b, "{}", linear(start, step, r));
                            b.append_value("");
                        }
                        Arc::new(b.finish())
                    }
                    Column::RandInt { stream, min, span } => {
                        Arc::new(Int64Array::from_iter_values(rows().map(|r| {
                            let h = splitmix64_at(stream, r);
                            let offset = if span == 0 { h } else { h % span };
                            (min as u64).wrapping_add(offset) as i64
                        })))
                    }
                    Column::RandFloat { stream, min, max } => {
                        Arc::new(Float64Array::from_iter_values(rows().map(|r| {
                            // 53 random bits give a uniform float in [0, 1).
                            let unit = (splitmix64_at(stream, r) >> 11) as f64
                                * (1.0 / (1u64 << 53) as f64);
                            let v = min + unit * (max - min);
                            // Rounding can reach `max` itself; keep the interval half-open.
                            if v >= max && max > min {
                                max.next_down()
                            } else {
                                v
                            }
                        })))
                    }
                    Column::Timestamp { start, step_ns } => Arc::new(
                        TimestampMillisecondArray::from_iter_values(rows().map(|r| {
                            let offset_ms = (i128::from(r) * step_ns).div_euclid(1_000_000);
                            start.wrapping_add(offset_ms as i64)
                        })),
                    ),
                }
            })
            .collect();
        RecordBatch::try_new(Arc::clone(&self.schema), arrays).map_err(|e| {
            super::plan_error(format!(
                "datagen `{}` does not match its schema: {e}",
                self.node
            ))
        })
    }
}

impl Source for Datagen {
    fn poll(&mut self, out: &mut Collector) -> Result<SourcePoll, OperatorError> {
        let Some(run) = self.splits.next_run(self.batch_size as u64) else {
            return Ok(SourcePoll::Finished);
        };
        let limit = (run.end - run.start) as usize;
        let n = match &mut self.pacing {
            None => limit,
            Some(p) => match p.take(limit, Instant::now()) {
                Ok(n) => n,
                Err(wait) => return Ok(SourcePoll::Idle(wait)),
            },
        };
        let run = run.start..run.start + n as u64;
        let batch = self.generate(run.clone())?;
        self.splits.advance(run);
        out.batch(batch);
        LatencyMarks::after_source_batch(&mut self.marks, self.pacing.as_ref(), out);
        Ok(SourcePoll::Ready)
    }

    fn snapshot_state(
        &mut self,
        _barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        self.splits.snapshot(changes, SPLITS);
        Ok(())
    }

    fn restore_state(&mut self, state: RestoredState) -> Result<(), OperatorError> {
        restore_splits(&self.node, &mut self.splits, state)
    }
}

/// The state name of the generator sources' split positions.
pub(super) const SPLITS: &str = "splits";

/// Restores split positions; any other state is an error (the node id was
/// taken by another kind of operator).
pub(super) fn restore_splits(
    node: &NodeId,
    splits: &mut Splits,
    mut state: RestoredState,
) -> Result<(), OperatorError> {
    splits.restore(state.take(SPLITS)).map_err(|e| {
        OperatorError::new(
            eddy_sdk::FailureClass::Infrastructure,
            format!("node `{node}`: restored split positions are unusable"),
        )
        .with_source(e)
    })?;
    super::window::unknown_states(node, &state)
}

fn column(seed: u64, index: usize, data_type: FieldType, generator: &Generator) -> Column {
    let stream = splitmix64(seed ^ splitmix64(index as u64 + 1));
    match (generator, data_type) {
        (Generator::Sequence { start, step }, FieldType::Float64) => Column::SeqFloat {
            start: *start,
            step: *step,
        },
        (Generator::Sequence { start, step }, FieldType::Utf8) => Column::SeqUtf8 {
            start: *start,
            step: *step,
        },
        (Generator::Sequence { start, step }, _) => Column::SeqInt {
            start: *start,
            step: *step,
        },
        (Generator::Random { min, max }, FieldType::Float64) => Column::RandFloat {
            stream,
            min: *min,
            max: *max,
        },
        (Generator::Random { min, max }, _) => {
            // Validated: ceil(min) <= floor(max), both within i64.
            let (lo, hi) = (min.ceil() as i64, max.floor() as i64);
            let span = (i128::from(hi) - i128::from(lo) + 1) as u128;
            Column::RandInt {
                stream,
                min: lo,
                span: u64::try_from(span).unwrap_or(0),
            }
        }
        (Generator::Timestamp { start, step }, _) => Column::Timestamp {
            start: start.timestamp_millis(),
            step_ns: i128::try_from(step.0.as_nanos()).unwrap_or(i128::MAX),
        },
    }
}

/// `start + r * step`, wrapping (a sequence may run past i64; it never panics).
#[inline]
fn linear(start: i64, step: i64, r: u64) -> i64 {
    start.wrapping_add((r as i64).wrapping_mul(step))
}

/// SplitMix64's output at position `r` of the stream starting at `stream`.
#[inline]
fn splitmix64_at(stream: u64, r: u64) -> u64 {
    splitmix64(stream.wrapping_add(r.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

#[inline]
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
#[path = "datagen_tests.rs"]
mod tests;
