//! `window`: keyed event-time windows with aggregates. Tumbling and sliding
//! windows are [`Window`] (this file); session windows are
//! [`session::SessionWindow`]; [`build`] picks one.
//!
//! Per batch, vectorized: every row's key hash (the routing hash of
//! `eddy_sdk::plan::hash`, so key groups agree with the exchange), its last
//! window (`start = ts - ts mod slide`, `end = start + size`), then the rows of
//! each window are folded into that window's state in one pass per window.
//! A sliding window of `size = k * slide` puts each row in `k` windows.
//!
//! State is a map from `window_end` to [`state::WindowState`]. A watermark
//! `wm` fires (emits and drops) every window with `end - 1 <= wm`, in end
//! order, as one output batch: key columns, `window_start`, `window_end`,
//! aggregates, exactly the schema `eddy_sdk::plan` declares. A row whose
//! windows have all fired is dropped and counted as late (Flink's rule: a row
//! still goes to those of its sliding windows that have not fired). A row
//! without an event time cannot be in any window and is counted the same way.
//!
//! The operator sees only the key groups its subtask owns (the exchange
//! routes them); each group records its key group so state can be split by
//! key group later.

mod accumulators;
pub mod session;
mod session_state;
mod state;

use super::{TaskContext, bad_data, plan_error};
use accumulators::Kind;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampMillisecondType};
use arrow::row::{RowConverter, SortField};
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{Collector, Operator, OperatorError, OperatorMetrics};
use eddy_sdk::plan::schema::{WindowLayout, window_layout};
use eddy_sdk::spec::WindowKind;
use eddy_sdk::spec::WindowSpec;
use state::{KeyedBatch, WindowState};

/// A map keyed by xxh3 hashes, used as they are (shared with `top_n`).
pub(crate) use state::HashHeads;
use std::collections::{BTreeMap, HashMap};

/// The operator of a `window` node: session windows or aligned ones.
pub fn build(
    node: &NodeId,
    spec: &WindowSpec,
    input: &SchemaRef,
    ctx: &TaskContext,
) -> Result<Box<dyn Operator>, OperatorError> {
    Ok(match spec.window {
        WindowKind::Session { .. } => {
            Box::new(session::SessionWindow::new(node, spec, input, ctx)?)
        }
        WindowKind::Tumbling { .. } | WindowKind::Sliding { .. } => {
            Box::new(Window::new(node, spec, input, ctx)?)
        }
    })
}

/// Tumbling and sliding windows.
pub struct Window {
    node: NodeId,
    layout: WindowLayout,
    kinds: Vec<Kind>,
    /// Row-format keys (`None`: the single-Int64-key fast path).
    rows: Option<RowConverter>,
    max_parallelism: u32,
    windows: BTreeMap<i64, WindowState>,
    watermark: i64,
    metrics: OperatorMetrics,
    // Buffers reused across batches.
    hashes: Vec<u64>,
    groups: Vec<u32>,
    buckets: Buckets,
}

impl Window {
    pub fn new(
        node: &NodeId,
        spec: &WindowSpec,
        input: &SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Self, OperatorError> {
        let layout = window_layout(node, spec, input)
            .map_err(|e| plan_error(format!("node `{node}`: {}", e.message)))?;
        if layout.session_gap_ms.is_some() {
            return Err(plan_error(format!(
                "node `{node}`: session windows are built by `window::build`"
            )));
        }
        let key_types: Vec<&DataType> = layout
            .key_indices
            .iter()
            .map(|&i| input.field(i).data_type())
            .collect();
        let rows = match key_types.as_slice() {
            [DataType::Int64] => None,
            types => {
                let fields = types.iter().map(|t| SortField::new((*t).clone())).collect();
                Some(
                    RowConverter::new(fields)
                        .map_err(|e| plan_error(format!("node `{node}`: {e}")))?,
                )
            }
        };
        let kinds = layout.aggregates.iter().map(Kind::of).collect();
        Ok(Window {
            node: node.clone(),
            layout,
            kinds,
            rows,
            max_parallelism: ctx.max_parallelism,
            windows: BTreeMap::new(),
            watermark: i64::MIN,
            metrics: OperatorMetrics::default(),
            hashes: Vec::new(),
            groups: Vec::new(),
            buckets: Buckets::default(),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.layout.output
    }

    /// Windows currently held (not yet fired).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }
}

impl Operator for Window {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<(), OperatorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (size, slide) = (self.layout.size_ms, self.layout.slide_ms);
        let ts_col = batch.column(self.layout.event_time_index);
        let ts = match ts_col.data_type() {
            DataType::Int64 => ts_col.as_primitive::<Int64Type>().values(),
            _ => ts_col.as_primitive::<TimestampMillisecondType>().values(),
        };
        let ts_nulls = ts_col.nulls().filter(|n| n.null_count() > 0);

        // Each row's last window; rows whose last window has fired are late.
        self.buckets.clear();
        let mut late = 0u64;
        for (row, &t) in ts.iter().enumerate() {
            if ts_nulls.is_some_and(|n| n.is_null(row)) {
                late += 1;
                continue;
            }
            let end = t.saturating_sub(t.rem_euclid(slide)).saturating_add(size);
            if end.saturating_sub(1) <= self.watermark {
                late += 1;
                continue;
            }
            self.buckets.push(end, row as u32);
        }
        self.metrics.late_records_dropped += late;
        if self.buckets.is_empty() {
            return Ok(());
        }

        let keyed = KeyedBatch::new(
            &self.node,
            &self.layout,
            self.rows.as_ref(),
            &self.kinds,
            &batch,
            &mut self.hashes,
        )?;
        let (keys, inputs) = (keyed.keys(), &keyed.inputs);

        let per_row = size / slide;
        for (last_end, rows) in self.buckets.iter() {
            for k in 0..per_row {
                let end = last_end.saturating_sub(k * slide);
                if end.saturating_sub(1) <= self.watermark {
                    break; // this and every earlier window of these rows has fired
                }
                let state = self
                    .windows
                    .entry(end)
                    .or_insert_with(|| WindowState::new(self.rows.as_ref(), &self.kinds));
                state.update(
                    rows,
                    &self.hashes,
                    &keys,
                    inputs,
                    self.max_parallelism,
                    &mut self.groups,
                );
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), OperatorError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        let mut fired = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let end = *entry.key();
            if end.saturating_sub(1) > watermark {
                break;
            }
            let state = entry.remove();
            let start = end.saturating_sub(self.layout.size_ms);
            let batch = state
                .finish(
                    start,
                    end,
                    self.rows.as_ref(),
                    &self.layout.aggregates,
                    &self.layout.output,
                )
                .map_err(|e| bad_data(&self.node, "cannot build a window's output", e))?;
            fired.push(batch);
        }
        match fired.len() {
            0 => {}
            1 => out.batch(fired.remove(0)),
            _ => out.batch(
                concat_batches(&self.layout.output, &fired)
                    .map_err(|e| bad_data(&self.node, "cannot build the output", e))?,
            ),
        }
        out.watermark(watermark);
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }
}

/// The rows of one batch grouped by their last window end, without per-row
/// allocation: row vectors are kept and reused across batches.
#[derive(Default)]
struct Buckets {
    ends: Vec<i64>,
    rows: Vec<Vec<u32>>,
    used: usize,
    index: HashMap<i64, usize>,
    last: Option<(i64, usize)>,
}

impl Buckets {
    fn clear(&mut self) {
        for r in &mut self.rows[..self.used] {
            r.clear();
        }
        self.ends.clear();
        self.used = 0;
        self.index.clear();
        self.last = None;
    }

    fn is_empty(&self) -> bool {
        self.used == 0
    }

    #[inline]
    fn push(&mut self, end: i64, row: u32) {
        // Rows mostly arrive in time order, so the last bucket is the usual hit.
        let slot = match self.last {
            Some((e, slot)) if e == end => slot,
            _ => {
                let slot = *self.index.entry(end).or_insert_with(|| {
                    if self.rows.len() == self.used {
                        self.rows.push(Vec::new());
                    }
                    self.ends.push(end);
                    self.used += 1;
                    self.used - 1
                });
                self.last = Some((end, slot));
                slot
            }
        };
        self.rows[slot].push(row);
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &[u32])> {
        self.ends
            .iter()
            .copied()
            .zip(self.rows[..self.used].iter().map(Vec::as_slice))
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
