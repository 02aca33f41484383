//! Session windows: per key, a record at time `t` opens or extends a session
//! `[t, t + gap)`; sessions that touch or overlap merge (Flink's rule: two
//! records at most `gap` apart share a session), also when an out-of-order
//! record bridges two of them. A session fires when the watermark reaches
//! `end - 1`, emitting the key columns, `window_start` (its first record's
//! time), `window_end` (its last record's time + gap) and the aggregates:
//! the schema of every window.
//!
//! Per batch, vectorized where it pays: the key hashes (the routing hash, so
//! key groups agree with the exchange) and row-format keys are computed for
//! the whole batch; each row then finds its key and session, and every
//! aggregate folds the batch in one pass over (row, session) pairs. Merges
//! within a batch redirect the absorbed session to the surviving one, so the
//! fold after the loop lands every row in its final session.
//!
//! Allowed lateness `L` (Flink's): a fired session is kept until the
//! watermark reaches `end - 1 + L`, and a late record may extend it or merge
//! it with its neighbours meanwhile. A session changed by late records whose
//! end the watermark has passed is fired again at once, emitting its merged
//! result (new bounds and values); one whose end moved past the watermark
//! (a record bridged it to an open session) fires again when the watermark
//! reaches its new end. Rows emitted earlier are not retracted. A record
//! whose own session `[t, t + gap)` is past its lateness
//! (`t + gap - 1 + L <= watermark`) is dropped and counted as late, as is a
//! record without an event time; with `L = 0` a session is dropped as it
//! fires.

use super::accumulators::Kind;
use super::session_state::{KeyTable, NOT_INDEXED, Slots};
use super::state::{KeyedBatch, NONE};
use super::{expired, fires};
use crate::operators::{TaskContext, bad_data, plan_error};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampMillisecondType};
use arrow::row::{RowConverter, SortField};
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{
    Barrier, Collector, Operator, OperatorError, OperatorMetrics, RestoredState, StateChanges,
};
use eddy_sdk::plan::schema::{WindowLayout, window_layout};
use eddy_sdk::spec::WindowSpec;
use std::collections::BTreeSet;
use std::sync::Arc;

#[path = "session_snapshot.rs"]
mod snapshot;
use snapshot::SessionCheckpoint;

pub struct SessionWindow {
    node: NodeId,
    layout: WindowLayout,
    gap: i64,
    /// Allowed lateness (ms).
    lateness: i64,
    kinds: Vec<Kind>,
    /// Row-format keys (`None`: the single-Int64-key fast path).
    rows: Option<RowConverter>,
    max_parallelism: u32,
    keys: KeyTable,
    slots: Slots,
    /// Open sessions by `(end, slot)`: the watermark fires from the front.
    timers: BTreeSet<(i64, u32)>,
    /// Fired sessions kept for late records, by `(end, slot)`: dropped from
    /// the front once the watermark passes `end - 1 + lateness`.
    cleanup: BTreeSet<(i64, u32)>,
    /// Sessions changed by late records in this batch, to fire again.
    refired: Vec<u32>,
    watermark: i64,
    metrics: OperatorMetrics,
    checkpoint: SessionCheckpoint,
    // Buffers reused across batches.
    hashes: Vec<u64>,
    kept: Vec<u32>,
    groups: Vec<u32>,
    touched: Vec<u32>,
    merged: Vec<u32>,
}

impl SessionWindow {
    pub fn new(
        node: &NodeId,
        spec: &WindowSpec,
        input: &SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Self, OperatorError> {
        let layout = window_layout(node, spec, input)
            .map_err(|e| plan_error(format!("node `{node}`: {}", e.message)))?;
        let gap = layout
            .session_gap_ms
            .ok_or_else(|| plan_error(format!("node `{node}` is not a session window")))?;
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
        let kinds: Vec<Kind> = layout.aggregates.iter().map(Kind::of).collect();
        Ok(SessionWindow {
            node: node.clone(),
            gap,
            lateness: layout.allowed_lateness_ms,
            keys: KeyTable::new(rows.as_ref()),
            slots: Slots::new(&kinds),
            kinds,
            layout,
            rows,
            max_parallelism: ctx.max_parallelism,
            timers: BTreeSet::new(),
            cleanup: BTreeSet::new(),
            refired: Vec::new(),
            watermark: i64::MIN,
            metrics: OperatorMetrics::default(),
            checkpoint: SessionCheckpoint::new(ctx),
            hashes: Vec::new(),
            kept: Vec::new(),
            groups: Vec::new(),
            touched: Vec::new(),
            merged: Vec::new(),
        })
    }

    /// Sessions currently open (not yet fired).
    pub fn open_sessions(&self) -> usize {
        self.timers.len()
    }

    /// Fired sessions kept for late records.
    pub fn fired_sessions(&self) -> usize {
        self.cleanup.len()
    }

    /// Keys held (with or without open sessions).
    pub fn keys_held(&self) -> usize {
        self.keys.num_keys()
    }

    /// Puts a record of key `k` at time `t` into its session, creating,
    /// extending or merging sessions; returns the session's slot.
    fn assign(&mut self, k: u32, t: i64) -> u32 {
        let end = t.saturating_add(self.gap);
        let slots = &mut self.slots;
        let open = &mut self.keys.open[k as usize];
        // Sessions are sorted by start and pairwise apart, so the ones this
        // record touches ([start, end] meets [t, t + gap]) are contiguous.
        let mut first = None;
        let mut last = 0;
        let mut insert_at = open.len();
        for (i, &s) in open.iter().enumerate() {
            let (s_start, s_end) = (slots.start[s as usize], slots.end[s as usize]);
            if s_start > end {
                insert_at = i;
                break;
            }
            if s_end >= t {
                first.get_or_insert(i);
                last = i;
            }
        }
        let Some(first) = first else {
            let s = slots.alloc(k, t, end);
            let was_empty = open.is_empty();
            open.insert(insert_at, s);
            if was_empty {
                self.keys.revived();
            }
            self.touched.push(s);
            return s;
        };
        let keep = open[first];
        let ki = keep as usize;
        slots.start[ki] = slots.start[ki].min(t);
        slots.end[ki] = slots.end[ki].max(end);
        for &other in &open[first + 1..=last] {
            let oi = other as usize;
            slots.start[ki] = slots.start[ki].min(slots.start[oi]);
            slots.end[ki] = slots.end[ki].max(slots.end[oi]);
            for acc in &mut slots.accs {
                acc.merge(ki, oi);
            }
            slots.redirect[oi] = keep;
            self.merged.push(other);
        }
        open.drain(first + 1..=last);
        self.touched.push(keep);
        keep
    }

    /// After a batch: re-index the sessions whose end moved or that fired
    /// or reopened, free the merged ones. A changed session the watermark
    /// has passed goes to `refired`; so does a fired one whose end did not
    /// move (after a restore without a watermark, the watermark may lag
    /// behind sessions that fired elsewhere).
    fn settle(&mut self) {
        self.touched.sort_unstable();
        self.touched.dedup();
        for &s in &self.touched {
            let i = s as usize;
            if self.slots.redirect[i] != NONE {
                continue; // merged away: handled below
            }
            let end = self.slots.end[i];
            let indexed = self.slots.indexed_end[i];
            let fired = fires(end, self.watermark) || (self.slots.fired[i] && end == indexed);
            if fired {
                self.refired.push(s);
            }
            if end != indexed || fired != self.slots.fired[i] {
                unindex(&mut self.slots, &mut self.timers, &mut self.cleanup, s);
                let index = if fired {
                    &mut self.cleanup
                } else {
                    &mut self.timers
                };
                index.insert((end, s));
                self.slots.indexed_end[i] = end;
                self.slots.fired[i] = fired;
            }
        }
        self.touched.clear();
        for &s in &self.merged {
            unindex(&mut self.slots, &mut self.timers, &mut self.cleanup, s);
            self.slots.release(s);
        }
        self.merged.clear();
    }

    /// Emits every session with `end - 1 <= watermark`, in end order, and
    /// keeps it for late records unless the watermark is also past its
    /// lateness; drops the fired sessions whose lateness has passed.
    fn fire(&mut self, watermark: i64) -> Result<Option<RecordBatch>, OperatorError> {
        let mut fired = Vec::new();
        while let Some(&(end, s)) = self.timers.first() {
            if !fires(end, watermark) {
                break;
            }
            self.timers.pop_first();
            fired.push(s);
        }
        let batch = if fired.is_empty() {
            None
        } else {
            Some(
                self.output(&fired)
                    .map_err(|e| bad_data(&self.node, "cannot build the sessions' output", e))?,
            )
        };
        for &s in &fired {
            let i = s as usize;
            let end = self.slots.end[i];
            if expired(end, watermark, self.lateness) {
                self.slots.indexed_end[i] = NOT_INDEXED;
                self.drop_session(s);
            } else {
                self.slots.fired[i] = true;
                self.cleanup.insert((end, s));
                self.checkpoint.mark(self.slots.key[i]);
            }
        }
        while let Some(&(end, s)) = self.cleanup.first() {
            if !expired(end, watermark, self.lateness) {
                break;
            }
            self.cleanup.pop_first();
            self.slots.indexed_end[s as usize] = NOT_INDEXED;
            self.drop_session(s);
        }
        if self.keys.wants_compaction() {
            self.checkpoint.before_compaction(&self.keys);
            let renumbered = self.keys.compact(&mut self.slots, self.rows.as_ref());
            self.checkpoint.after_compaction(&renumbered);
        }
        Ok(batch)
    }

    /// Frees session `s` (out of both indexes already) and takes it off its
    /// key's list.
    fn drop_session(&mut self, s: u32) {
        let k = self.slots.key[s as usize];
        let open = &mut self.keys.open[k as usize];
        open.retain(|&o| o != s);
        if open.is_empty() {
            self.keys.retired();
        }
        self.slots.release(s);
        self.checkpoint.mark(k);
    }

    /// Emits the sessions late records changed, in end order.
    fn emit_refired(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        if self.refired.is_empty() {
            return Ok(());
        }
        let mut refired = std::mem::take(&mut self.refired);
        refired.sort_unstable_by_key(|&s| (self.slots.end[s as usize], s));
        let batch = self
            .output(&refired)
            .map_err(|e| bad_data(&self.node, "cannot build the sessions' output", e))?;
        out.batch(batch);
        refired.clear();
        self.refired = refired;
        Ok(())
    }

    fn output(&self, fired: &[u32]) -> Result<RecordBatch, arrow::error::ArrowError> {
        let ks: Vec<u32> = fired.iter().map(|&s| self.slots.key[s as usize]).collect();
        let mut columns: Vec<ArrayRef> = self.keys.columns(&ks, self.rows.as_ref())?;
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            fired.iter().map(|&s| self.slots.start[s as usize]),
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            fired.iter().map(|&s| self.slots.end[s as usize]),
        )));
        for (acc, layout) in self.slots.accs.iter().zip(&self.layout.aggregates) {
            columns.push(acc.gather(fired, &layout.output_type)?);
        }
        RecordBatch::try_new(Arc::clone(&self.layout.output), columns)
    }
}

impl Operator for SessionWindow {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<(), OperatorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ts_col = batch.column(self.layout.event_time_index).clone();
        let ts = match ts_col.data_type() {
            DataType::Int64 => ts_col.as_primitive::<Int64Type>().values(),
            _ => ts_col.as_primitive::<TimestampMillisecondType>().values(),
        };
        let ts_nulls = ts_col.nulls().filter(|n| n.null_count() > 0);
        self.kept.clear();
        let mut late = 0u64;
        for (row, &t) in ts.iter().enumerate() {
            let is_late = ts_nulls.is_some_and(|n| n.is_null(row))
                || expired(t.saturating_add(self.gap), self.watermark, self.lateness);
            if is_late {
                late += 1;
            } else {
                self.kept.push(row as u32);
            }
        }
        self.metrics.late_records_dropped += late;
        if self.kept.is_empty() {
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

        let kept = std::mem::take(&mut self.kept);
        let mut groups = std::mem::take(&mut self.groups);
        groups.clear();
        for &r in &kept {
            let r = r as usize;
            let k = self
                .keys
                .find_or_insert(r, self.hashes[r], &keys, self.max_parallelism);
            self.checkpoint.mark(k);
            groups.push(self.assign(k, ts[r]));
        }
        // Rows whose session merged into another later in the batch go to
        // the survivor.
        if !self.merged.is_empty() {
            for g in &mut groups {
                *g = self.slots.resolve(*g);
            }
        }
        let num_slots = self.slots.num_slots();
        for (acc, input) in self.slots.accs.iter_mut().zip(inputs) {
            acc.update(input, &kept, &groups, num_slots);
        }
        self.kept = kept;
        self.groups = groups;
        self.settle();
        self.emit_refired(out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), OperatorError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        if let Some(batch) = self.fire(watermark)? {
            out.batch(batch);
        }
        out.watermark(watermark);
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    /// Reports the keys whose sessions changed since the last barrier.
    fn snapshot_state(
        &mut self,
        _barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        self.snapshot_sessions(changes);
        Ok(())
    }

    fn restore_state(&mut self, state: RestoredState) -> Result<(), OperatorError> {
        self.restore_sessions(state)
    }
}

/// Takes session `s` out of the index it is in (timers when open, cleanup
/// when fired), if any.
fn unindex(
    slots: &mut Slots,
    timers: &mut BTreeSet<(i64, u32)>,
    cleanup: &mut BTreeSet<(i64, u32)>,
    s: u32,
) {
    let i = s as usize;
    let indexed = slots.indexed_end[i];
    if indexed != NOT_INDEXED {
        let index = if slots.fired[i] { cleanup } else { timers };
        index.remove(&(indexed, s));
        slots.indexed_end[i] = NOT_INDEXED;
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
