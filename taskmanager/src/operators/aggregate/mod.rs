//! `aggregate`: keyed aggregates over the whole stream, without windows,
//! emitted as updates (Flink's mini-batch group aggregate).
//!
//! Per input batch, vectorized as the window operators are (and with their
//! key store and accumulators): every row's key hash (the routing hash of
//! `eddy_sdk::plan::hash`, so key groups agree with the exchange), its key
//! number, then one fold per aggregate over the whole batch. The output is
//! one row per key the batch changed, in order of first appearance, with
//! the key's current values: the key columns, then the aggregates, exactly
//! the schema `eddy_sdk::plan` declares. Downstream reads it as an upsert
//! stream keyed by `key_by`: a key's newest row wins. Watermarks pass
//! through unchanged; the end of input emits nothing more.
//!
//! State TTL (`state_ttl`, processing time, Flink's `OnCreateAndWrite` /
//! `NeverReturnExpired`): a key not updated for the TTL is forgotten. A row
//! for an expired key finds it absent and starts from zero (checked on
//! access), and sweeps drop expired keys from memory and, at the next
//! barrier, from the checkpointed state. A sweep runs at every barrier, and
//! at most once a second on batches and watermarks; it is skipped while no
//! key can have expired. The clock is injectable ([`Aggregate::with_clock`]).
//!
//! The operator sees only the key groups its subtask owns (the exchange
//! routes them). State layout and restore: `snapshot.rs`.

mod keys;
mod snapshot;

use super::window::accumulators::{Acc, Kind};
use super::window::state::{KeyedBatch, NONE};
use super::{TaskContext, bad_data, plan_error};
use crate::state::{Clock, SystemClock};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{
    Barrier, Collector, Operator, OperatorError, RestoredState, StateChanges,
};
use eddy_sdk::plan::schema::{GroupAggregateLayout, group_aggregate_layout};
use eddy_sdk::spec::GroupAggregateSpec;
use keys::KeyTable;
use snapshot::AggregateCheckpoint;
use std::ops::Range;
use std::sync::Arc;

/// Sweeps for expired keys outside barriers run at most this often.
const SWEEP_INTERVAL_MS: i64 = 1_000;

pub struct Aggregate {
    node: NodeId,
    layout: GroupAggregateLayout,
    kinds: Vec<Kind>,
    /// The keys' row format: checkpoint entry keys, and the in-memory key
    /// store unless `fast`.
    conv: RowConverter,
    /// One Int64 key: kept as plain values.
    fast: bool,
    max_parallelism: u32,
    /// The key groups this subtask owns.
    key_groups: Range<u32>,
    keys: KeyTable,
    /// One accumulator per aggregate, indexed by key number.
    accs: Vec<Acc>,
    clock: Arc<dyn Clock>,
    /// No live key expires before this time.
    next_expiry: i64,
    last_sweep: i64,
    checkpoint: AggregateCheckpoint,
    // Buffers reused across batches.
    hashes: Vec<u64>,
    rows: Vec<u32>,
    groups: Vec<u32>,
    touched: Vec<u32>,
    is_touched: Vec<bool>,
}

impl Aggregate {
    /// The operator of `node`, on the machine's clock.
    pub fn new(
        node: &NodeId,
        spec: &GroupAggregateSpec,
        input: &SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Self, OperatorError> {
        let layout = group_aggregate_layout(node, spec, input)
            .map_err(|e| plan_error(format!("node `{node}`: {}", e.message)))?;
        let key_types: Vec<DataType> = layout
            .key_indices
            .iter()
            .map(|&i| input.field(i).data_type().clone())
            .collect();
        let fast = key_types == [DataType::Int64];
        let conv = RowConverter::new(key_types.into_iter().map(SortField::new).collect())
            .map_err(|e| plan_error(format!("node `{node}`: {e}")))?;
        let kinds: Vec<Kind> = layout.aggregates.iter().map(Kind::of).collect();
        Ok(Aggregate {
            node: node.clone(),
            keys: KeyTable::new((!fast).then_some(&conv)),
            accs: kinds.iter().map(|&k| Acc::new(k)).collect(),
            kinds,
            layout,
            conv,
            fast,
            max_parallelism: ctx.max_parallelism,
            key_groups: ctx.key_groups(),
            clock: Arc::new(SystemClock),
            next_expiry: i64::MAX,
            last_sweep: i64::MIN,
            checkpoint: AggregateCheckpoint::default(),
            hashes: Vec::new(),
            rows: Vec::new(),
            groups: Vec::new(),
            touched: Vec::new(),
            is_touched: Vec::new(),
        })
    }

    /// The same operator on another clock (tests move time by hand).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.layout.output
    }

    /// Keys with state.
    pub fn live_keys(&self) -> usize {
        self.keys.live()
    }

    /// Keys held in memory, with state or expired but not compacted away.
    pub fn keys_held(&self) -> usize {
        self.keys.len()
    }

    /// Whether key `k`'s state outlived the TTL at `now`.
    #[inline]
    fn expired(&self, k: u32, now: i64) -> bool {
        match (self.keys.written(k), self.layout.state_ttl_ms) {
            (Some(written), Some(ttl)) => written.saturating_add(ttl) <= now,
            _ => false,
        }
    }

    /// Rows of the keys in `touched`, with their current values.
    fn updates(&self) -> Result<RecordBatch, OperatorError> {
        let what = "cannot build the updates";
        let mut columns: Vec<ArrayRef> = self
            .keys
            .columns(&self.touched, &self.conv)
            .map_err(|e| bad_data(&self.node, what, e))?;
        for (acc, layout) in self.accs.iter().zip(&self.layout.aggregates) {
            columns.push(
                acc.gather(&self.touched, &layout.output_type)
                    .map_err(|e| bad_data(&self.node, what, e))?,
            );
        }
        RecordBatch::try_new(Arc::clone(&self.layout.output), columns)
            .map_err(|e| bad_data(&self.node, what, e))
    }

    /// Sweeps unless one ran within the last [`SWEEP_INTERVAL_MS`].
    fn maybe_sweep(&mut self, now: i64) -> Result<(), OperatorError> {
        if now >= self.last_sweep.saturating_add(SWEEP_INTERVAL_MS) {
            self.sweep(now)?;
        }
        Ok(())
    }

    /// Forgets every key whose TTL ran out by `now`; the entries of those
    /// already in the checkpointed state are deleted at the next barrier.
    fn sweep(&mut self, now: i64) -> Result<(), OperatorError> {
        let Some(ttl) = self.layout.state_ttl_ms else {
            return Ok(());
        };
        if now < self.next_expiry {
            return Ok(());
        }
        self.last_sweep = now;
        let mut expired = Vec::new();
        let mut oldest = i64::MAX;
        for (k, written) in self.keys.live_keys() {
            if written.saturating_add(ttl) <= now {
                expired.push(k);
            } else {
                oldest = oldest.min(written);
            }
        }
        self.next_expiry = oldest.saturating_add(ttl);
        let stored: Vec<u32> = expired
            .iter()
            .copied()
            .filter(|&k| self.checkpoint.forget(k))
            .collect();
        if !stored.is_empty() {
            let rows = self
                .keys
                .rows(&stored, &self.conv)
                .map_err(|e| bad_data(&self.node, "cannot encode the expired keys", e))?;
            for (i, &k) in stored.iter().enumerate() {
                self.checkpoint
                    .deleted(self.keys.key_group(k), rows.row(i).data().to_vec());
            }
        }
        for &k in &expired {
            self.keys.kill(k);
            for acc in &mut self.accs {
                acc.reset(k as usize);
            }
        }
        if self.keys.wants_compaction() {
            self.compact();
        }
        Ok(())
    }

    /// Drops the expired keys from the key table and renumbers the others,
    /// moving their accumulators along.
    fn compact(&mut self) {
        let renumbered = self.keys.compact(&self.conv);
        let mut accs: Vec<Acc> = self.kinds.iter().map(|&k| Acc::new(k)).collect();
        let mut bytes = Vec::new();
        for (old, &new) in renumbered.iter().enumerate() {
            if new == NONE {
                continue;
            }
            for (from, to) in self.accs.iter().zip(&mut accs) {
                bytes.clear();
                from.export(old, &mut bytes);
                let imported = to.import(new as usize, &mut bytes.as_slice());
                debug_assert!(imported.is_some(), "export writes what import reads");
            }
        }
        self.accs = accs;
        self.checkpoint.renumber(&renumbered);
        self.is_touched.clear();
    }
}

impl Operator for Aggregate {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<(), OperatorError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let keyed = KeyedBatch::from_columns(
            &self.node,
            &self.layout.key_indices,
            &self.layout.aggregates,
            (!self.fast).then_some(&self.conv),
            &self.kinds,
            &batch,
            &mut self.hashes,
        )?;
        let batch_keys = keyed.keys();
        self.groups.clear();
        self.touched.clear();
        for r in 0..n {
            let k = self
                .keys
                .find_or_insert(r, self.hashes[r], &batch_keys, self.max_parallelism);
            self.groups.push(k);
            let i = k as usize;
            if i >= self.is_touched.len() {
                self.is_touched.resize(i + 1, false);
            }
            if !self.is_touched[i] {
                self.is_touched[i] = true;
                self.touched.push(k);
            }
        }
        for t in 0..self.touched.len() {
            let k = self.touched[t];
            self.is_touched[k as usize] = false;
            if self.expired(k, now) {
                // Never return expired state: the key starts from zero.
                for acc in &mut self.accs {
                    acc.reset(k as usize);
                }
            }
            self.keys.write(k, now);
            self.checkpoint.mark(k);
        }
        if let Some(ttl) = self.layout.state_ttl_ms {
            self.next_expiry = self.next_expiry.min(now.saturating_add(ttl));
        }
        self.rows.clear();
        self.rows.extend(0..n as u32);
        let num_keys = self.keys.len();
        for (acc, input) in self.accs.iter_mut().zip(&keyed.inputs) {
            acc.update(input, &self.rows, &self.groups, num_keys);
        }
        out.batch(self.updates()?);
        self.maybe_sweep(now)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), OperatorError> {
        let now = self.clock.now_ms();
        self.maybe_sweep(now)?;
        out.watermark(watermark);
        Ok(())
    }

    /// Sweeps expired keys, then reports the keys updated or expired since
    /// the last barrier (every key at the first one after opening or
    /// restoring).
    fn snapshot_state(
        &mut self,
        _barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        let now = self.clock.now_ms();
        self.sweep(now)?;
        self.snapshot_keys(changes)
    }

    fn restore_state(&mut self, state: RestoredState) -> Result<(), OperatorError> {
        self.restore_keys(state)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod snapshot_tests;
