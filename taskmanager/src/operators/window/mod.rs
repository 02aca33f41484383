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
//! State is two maps from `window_end` to [`state::WindowState`]: windows not
//! fired yet, and windows fired but kept for late records. A watermark `wm`
//! fires every window with `end - 1 <= wm`, in end order, as one output
//! batch: key columns, `window_start`, `window_end`, aggregates, exactly the
//! schema `eddy_sdk::plan` declares. With an allowed lateness `L` (Flink's),
//! a fired window is kept until `end - 1 + L <= wm`; a row for a kept window
//! updates it and re-fires it at once: the rows of the keys it updated are
//! emitted again with their new values (an upsert of `(key, window)`). With
//! `L = 0` a window is dropped as it fires. A row whose windows are all past
//! `end - 1 + L` is dropped and counted as late (Flink's rule: a row still
//! goes to those of its sliding windows that are not). A row without an
//! event time cannot be in any window and is counted the same way.
//!
//! The operator sees only the key groups its subtask owns (the exchange
//! routes them); each group records its key group so state can be split by
//! key group later.

pub(crate) mod accumulators;
mod buckets;
mod checkpoint;
pub(crate) mod keys;
pub mod session;
mod session_state;
pub(crate) mod state;

use super::{TaskContext, bad_data, plan_error};
use accumulators::Kind;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampMillisecondType};
use arrow::row::{RowConverter, SortField};
use buckets::Buckets;
use checkpoint::{Checkpointed, FIRED_WINDOWS, WINDOWS};
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{
    Barrier, Collector, Operator, OperatorError, OperatorMetrics, RestoredState, StateChanges,
};
use eddy_sdk::plan::schema::{WindowLayout, window_layout};
use eddy_sdk::spec::WindowKind;
use eddy_sdk::spec::WindowSpec;
use state::{KeyedBatch, WindowState};
use std::collections::BTreeMap;

pub(crate) use checkpoint::{WATERMARK, corrupt_state, restored_watermark, unknown_states};
/// A map keyed by xxh3 hashes, used as they are (shared with `top_n`).
pub(crate) use state::HashHeads;

/// Whether watermark `wm` fires a window (or session) ending at `end`.
#[inline]
pub(super) fn fires(end: i64, wm: i64) -> bool {
    end.saturating_sub(1) <= wm
}

/// Whether watermark `wm` is past a window's allowed lateness: its state is
/// dropped and rows for it are late.
#[inline]
pub(super) fn expired(end: i64, wm: i64, lateness: i64) -> bool {
    end.saturating_sub(1).saturating_add(lateness) <= wm
}

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
    /// Windows not fired yet.
    windows: BTreeMap<i64, WindowState>,
    /// Windows fired but kept for late records (never also in `windows`).
    fired: BTreeMap<i64, WindowState>,
    /// Groups of fired windows to emit again (updated by late rows, or
    /// restored but not emitted yet), at the end of the batch.
    refire: BTreeMap<i64, Vec<u32>>,
    watermark: i64,
    metrics: OperatorMetrics,
    checkpoint: Checkpointed,
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
            fired: BTreeMap::new(),
            refire: BTreeMap::new(),
            watermark: i64::MIN,
            metrics: OperatorMetrics::default(),
            checkpoint: Checkpointed::new(ctx),
            hashes: Vec::new(),
            groups: Vec::new(),
            buckets: Buckets::default(),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.layout.output
    }

    /// Windows currently held and not fired yet.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Windows fired and kept for late records.
    pub fn fired_windows(&self) -> usize {
        self.fired.len()
    }

    /// The output rows of `groups` of window `end`.
    fn output(
        &self,
        state: &WindowState,
        groups: &[u32],
        end: i64,
    ) -> Result<RecordBatch, OperatorError> {
        let start = end.saturating_sub(self.layout.size_ms);
        state
            .output(
                groups,
                (start, end),
                self.rows.as_ref(),
                &self.layout.aggregates,
                &self.layout.output,
            )
            .map_err(|e| bad_data(&self.node, "cannot build a window's output", e))
    }

    /// Emits the groups of fired windows updated since they were emitted.
    fn emit_refired(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        let mut batches = Vec::with_capacity(self.refire.len());
        for (end, mut groups) in std::mem::take(&mut self.refire) {
            let Some(state) = self.fired.get(&end) else {
                continue; // dropped since: nothing to update downstream
            };
            groups.sort_unstable();
            groups.dedup();
            batches.push(self.output(state, &groups, end)?);
        }
        self.emit(batches, out)
    }

    /// Emits `batches` as one batch.
    fn emit(
        &self,
        mut batches: Vec<RecordBatch>,
        out: &mut Collector,
    ) -> Result<(), OperatorError> {
        match batches.len() {
            0 => {}
            1 => out.batch(batches.remove(0)),
            _ => out.batch(
                concat_batches(&self.layout.output, &batches)
                    .map_err(|e| bad_data(&self.node, "cannot build the output", e))?,
            ),
        }
        Ok(())
    }
}

impl Operator for Window {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<(), OperatorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (size, slide) = (self.layout.size_ms, self.layout.slide_ms);
        let (wm, lateness) = (self.watermark, self.layout.allowed_lateness_ms);
        let ts_col = batch.column(self.layout.event_time_index);
        let ts = match ts_col.data_type() {
            DataType::Int64 => ts_col.as_primitive::<Int64Type>().values(),
            _ => ts_col.as_primitive::<TimestampMillisecondType>().values(),
        };
        let ts_nulls = ts_col.nulls().filter(|n| n.null_count() > 0);

        // Each row's last window; rows whose last window has expired are late.
        self.buckets.clear();
        let mut late = 0u64;
        for (row, &t) in ts.iter().enumerate() {
            if ts_nulls.is_some_and(|n| n.is_null(row)) {
                late += 1;
                continue;
            }
            let end = t.saturating_sub(t.rem_euclid(slide)).saturating_add(size);
            if expired(end, wm, lateness) {
                late += 1;
                continue;
            }
            self.buckets.push(end, row as u32);
        }
        self.metrics.late_records_dropped += late;
        if self.buckets.is_empty() {
            return self.emit_refired(out);
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
                if expired(end, wm, lateness) {
                    break; // this and every earlier window of these rows is gone
                }
                // A window fired once stays fired (also when restored without
                // the watermark that fired it); one the watermark has passed
                // but that has not fired yet (restored) fires at the next one.
                let refire = self.fired.contains_key(&end)
                    || (fires(end, wm) && !self.windows.contains_key(&end));
                let (windows, dirty) = if refire {
                    (&mut self.fired, &mut self.checkpoint.fired)
                } else {
                    (&mut self.windows, &mut self.checkpoint.open)
                };
                dirty.insert(end);
                let state = windows
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
                if refire {
                    self.refire
                        .entry(end)
                        .or_default()
                        .extend_from_slice(&self.groups);
                }
            }
        }
        self.emit_refired(out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), OperatorError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        // Restored groups not emitted yet go first: their windows fired earlier.
        self.emit_refired(out)?;
        self.watermark = watermark;
        let lateness = self.layout.allowed_lateness_ms;
        let mut fired = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let end = *entry.key();
            if !fires(end, watermark) {
                break;
            }
            let mut state = entry.remove();
            if expired(end, watermark, lateness) {
                self.checkpoint.dropped(WINDOWS, end, &state);
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
            } else {
                fired.push(self.output(&state, &state.all_groups(), end)?);
                self.checkpoint.kept(end, &mut state);
                let previous = self.fired.insert(end, state);
                debug_assert!(previous.is_none(), "a window is open or fired, never both");
            }
        }
        while let Some(entry) = self.fired.first_entry() {
            let end = *entry.key();
            if !expired(end, watermark, lateness) {
                break;
            }
            let state = entry.remove();
            self.checkpoint.dropped(FIRED_WINDOWS, end, &state);
        }
        self.emit(fired, out)?;
        out.watermark(watermark);
        Ok(())
    }

    fn on_end(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        self.emit_refired(out)
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    /// Reports the windows that changed, fired or were dropped since the
    /// last barrier (everything at the first one after opening or restoring).
    fn snapshot_state(
        &mut self,
        _barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        self.snapshot_windows(changes);
        Ok(())
    }

    fn restore_state(&mut self, state: RestoredState) -> Result<(), OperatorError> {
        self.restore_windows(state)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
