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

pub(crate) mod accumulators;
pub mod session;
mod session_state;
pub(crate) mod state;

use super::{TaskContext, bad_data, plan_error};
use accumulators::Kind;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampMillisecondType};
use arrow::row::{RowConverter, SortField};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{KeyGroup, NodeId};
use eddy_sdk::operator::{
    Barrier, Collector, Operator, OperatorError, OperatorMetrics, RestoredState, StateChanges,
};
use eddy_sdk::operator_state::own_key_group;
use eddy_sdk::plan::schema::{WindowLayout, window_layout};
use eddy_sdk::spec::WindowKind;
use eddy_sdk::spec::WindowSpec;
use state::{KeyedBatch, WindowState};

/// A map keyed by xxh3 hashes, used as they are (shared with `top_n`).
pub(crate) use state::HashHeads;
use std::collections::{BTreeMap, BTreeSet, HashMap};

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
                self.checkpoint.dirty.insert(end);
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
            self.checkpoint.fired(end, &state);
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

    /// Reports the windows that changed or fired since the last barrier
    /// (everything at the first one after opening or restoring).
    fn snapshot_state(
        &mut self,
        _barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        let all = self.checkpoint.start(changes);
        let ends: Vec<i64> = if all {
            self.checkpoint.dirty.clear();
            self.windows.keys().copied().collect()
        } else {
            std::mem::take(&mut self.checkpoint.dirty)
                .into_iter()
                .collect()
        };
        for end in ends {
            if let Some(state) = self.windows.get_mut(&end) {
                let dirty = state.take_dirty_key_groups();
                let mut by_kg = state.groups_by_key_group();
                if !all {
                    by_kg.retain(|kg, _| dirty.binary_search(kg).is_ok());
                }
                for (kg, groups) in by_kg {
                    changes.put(
                        WINDOWS,
                        KeyGroup(u32::from(kg)),
                        end.to_be_bytes().to_vec(),
                        state.encode(&groups),
                    );
                }
            }
        }
        self.checkpoint.finish(self.watermark, changes);
        Ok(())
    }

    fn restore_state(&mut self, mut state: RestoredState) -> Result<(), OperatorError> {
        if let Some(wm) = restored_watermark(&self.node, &mut state)? {
            self.watermark = wm;
        }
        for e in state.take(WINDOWS) {
            let end = e
                .key
                .as_slice()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| corrupt_state(&self.node, WINDOWS, "a window key is not 8 bytes"))?;
            let kg = u16::try_from(e.key_group.0)
                .map_err(|_| corrupt_state(&self.node, WINDOWS, "a key group is out of range"))?;
            self.windows
                .entry(end)
                .or_insert_with(|| WindowState::new(self.rows.as_ref(), &self.kinds))
                .decode_into(kg, &e.value, self.rows.as_ref())
                .map_err(|m| corrupt_state(&self.node, WINDOWS, &m))?;
        }
        unknown_states(&self.node, &state)
    }
}

/// Checkpoint state names of the window operators.
pub(super) const WINDOWS: &str = "windows";
pub(crate) const WATERMARK: &str = "watermark";

/// What a window operator must report at its next barrier.
struct Checkpointed {
    /// The subtask's own key group, for its watermark entry.
    own: KeyGroup,
    /// Windows updated since the last barrier.
    dirty: BTreeSet<i64>,
    /// Windows fired since the last barrier, with their key groups.
    fired: Vec<(i64, Vec<u16>)>,
    /// The watermark reported last (`None`: report everything next time).
    reported: Option<i64>,
}

impl Checkpointed {
    fn new(ctx: &TaskContext) -> Self {
        Checkpointed {
            own: own_key_group(&ctx.key_groups()),
            dirty: BTreeSet::new(),
            fired: Vec::new(),
            reported: None,
        }
    }

    fn fired(&mut self, end: i64, state: &WindowState) {
        self.dirty.remove(&end);
        self.fired
            .push((end, state.groups_by_key_group().into_keys().collect()));
    }

    /// Starts a snapshot: deletes the fired windows' entries, or everything
    /// when this is the first snapshot (returns whether it is).
    fn start(&mut self, changes: &mut StateChanges) -> bool {
        let all = self.reported.is_none();
        if all {
            changes.clear_all();
            self.fired.clear();
        }
        for (end, kgs) in self.fired.drain(..) {
            for kg in kgs {
                changes.delete(WINDOWS, KeyGroup(u32::from(kg)), end.to_be_bytes().to_vec());
            }
        }
        all
    }

    fn finish(&mut self, watermark: i64, changes: &mut StateChanges) {
        if self.reported != Some(watermark) {
            changes.put(
                WATERMARK,
                self.own,
                Vec::new(),
                watermark.to_be_bytes().to_vec(),
            );
            self.reported = Some(watermark);
        }
    }
}

/// The highest watermark among the restored ones (several when subtasks
/// merge): a window another subtask already fired is never fired again; a
/// row later than that watermark is late, as it would have been there.
pub(crate) fn restored_watermark(
    node: &NodeId,
    state: &mut RestoredState,
) -> Result<Option<i64>, OperatorError> {
    let mut wm = None;
    for e in state.take(WATERMARK) {
        let v = e
            .value
            .as_slice()
            .try_into()
            .map(i64::from_be_bytes)
            .map_err(|_| corrupt_state(node, WATERMARK, "a watermark is not 8 bytes"))?;
        wm = Some(wm.map_or(v, |w: i64| w.max(v)));
    }
    Ok(wm)
}

pub(crate) fn corrupt_state(node: &NodeId, state: &str, what: &str) -> OperatorError {
    OperatorError::new(
        FailureClass::Infrastructure,
        format!("node `{node}`: restored state `{state}` is unreadable: {what}"),
    )
}

/// Fails when the restored state holds states this operator does not know
/// (it was restored from another kind of operator with the same id).
pub(crate) fn unknown_states(node: &NodeId, state: &RestoredState) -> Result<(), OperatorError> {
    let unknown: Vec<&str> = state.remaining().collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(OperatorError::new(
            FailureClass::Infrastructure,
            format!(
                "node `{node}`: restored state has unknown states {unknown:?}: was it taken from another kind of operator with this id?"
            ),
        ))
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
