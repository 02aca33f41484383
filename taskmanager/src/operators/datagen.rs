//! `datagen`: deterministic rows, built column by column as Arrow arrays.
//!
//! Row `r` is global: subtask `i` of `p` generates rows `i, i+p, i+2p, …`, so
//! the values do not depend on the parallelism and `count` bounds the total
//! over all subtasks. Column values are functions of `r`:
//! - `sequence`: `start + r * step` (utf8 renders the number);
//! - `random`: SplitMix64 at position `r` of a stream seeded by `(seed,
//!   field index)`, mapped to `[min, max]` for ints and `[min, max)` for floats;
//! - `timestamp`: `start + r * step`, truncated to ms (the step may be finer).
//!
//! `rows_per_second` is the total rate: each subtask paces at `rate / p` with a
//! token bucket and emits batches small enough that one leaves at least every
//! 50 ms, so a slow stream still has low latency.

use super::TaskContext;
use super::pacing::{LatencyMarks, Pacing};
use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringBuilder, TimestampMillisecondArray,
};
use arrow::datatypes::SchemaRef;
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{Collector, OperatorError, Source, SourcePoll};
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
    subtask: u64,
    parallelism: u64,
    /// Rows this subtask has generated; its next global row is `subtask + next * p`.
    next: u64,
    /// Rows this subtask generates in total (`None`: unbounded).
    total: Option<u64>,
    batch_size: usize,
    pacing: Option<Pacing>,
    marks: Option<LatencyMarks>,
}

impl Datagen {
    /// The schema is the node's, from `eddy_sdk::plan` (which also checked the
    /// generator/type combinations this relies on).
    pub fn new(node: &NodeId, spec: &DatagenSpec, schema: SchemaRef, ctx: &TaskContext) -> Self {
        let (subtask, parallelism) = (u64::from(ctx.subtask), u64::from(ctx.parallelism.max(1)));
        let columns = spec
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| column(spec.seed, i, f.data_type, &f.generator))
            .collect();
        // Subtask i owns rows i, i+p, … below count.
        let total = spec.count.map(|count| {
            if count > subtask {
                (count - subtask - 1) / parallelism + 1
            } else {
                0
            }
        });
        let batch_size = spec.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1);
        let pacing = spec
            .rows_per_second
            .map(|rate| Pacing::new(rate / parallelism as f64, batch_size, Instant::now()));
        Datagen {
            node: node.clone(),
            schema,
            columns,
            subtask,
            parallelism,
            next: 0,
            total,
            batch_size,
            pacing,
            marks: LatencyMarks::new(ctx.latency_interval, Instant::now()),
        }
    }

    /// Builds the batch of this subtask's rows `next..next + n`.
    fn generate(&self, n: usize) -> Result<RecordBatch, OperatorError> {
        let (first, p) = (
            self.subtask + self.next * self.parallelism,
            self.parallelism,
        );
        let rows = move || (0..n as u64).map(move |j| first.wrapping_add(j.wrapping_mul(p)));
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
        let remaining = self.total.map_or(u64::MAX, |t| t - self.next);
        if remaining == 0 {
            return Ok(SourcePoll::Finished);
        }
        let limit = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(self.batch_size);
        let n = match &mut self.pacing {
            None => limit,
            Some(p) => match p.take(limit, Instant::now()) {
                Ok(n) => n,
                Err(wait) => return Ok(SourcePoll::Idle(wait)),
            },
        };
        let batch = self.generate(n)?;
        self.next += n as u64;
        out.batch(batch);
        LatencyMarks::after_source_batch(&mut self.marks, self.pacing.as_ref(), out);
        Ok(SourcePoll::Ready)
    }
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
