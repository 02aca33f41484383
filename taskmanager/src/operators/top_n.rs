//! `top_n`: per group of rows sharing the `partition_by` columns, the `n`
//! rows with the highest (`order: desc`) or lowest (`asc`) `order_by` value,
//! with or without the rows tied with the n-th; each group is emitted once,
//! when the watermark reaches its event time minus one (the event-time column
//! is an exclusive end, like `window_end`, and one of the partition columns).
//!
//! Memory is bounded by the answer, not the input: a group keeps at most `n`
//! rows (plus those tied with the n-th), in Arrow's row format, and a row that
//! cannot enter its group is rejected from the batch-level threshold check
//! without being copied. Per batch, the group hashes (the routing hash over
//! the partition columns, so key groups agree with the exchange), the group
//! keys and the ranking values are computed vectorized; only the surviving
//! rows are converted.
//!
//! Ranking values of every supported type map order-preservingly to `i64`
//! ("score", higher is better), so the per-row work is an integer compare.
//! Rows with a null ranking value are not ranked. A row whose group has
//! already been emitted, or without an event time, is dropped and counted
//! as late.

use super::window::HashHeads;
use super::{TaskContext, bad_data, plan_error};
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, UInt64Type};
use arrow::error::ArrowError;
use arrow::row::{OwnedRow, RowConverter, SortField};
use eddy_sdk::ids::NodeId;
use eddy_sdk::keygroup::key_group_of_hash;
use eddy_sdk::operator::{
    Barrier, Collector, Operator, OperatorError, OperatorMetrics, RestoredState, StateChanges,
};
use eddy_sdk::plan::hash::hash_columns;
use eddy_sdk::plan::schema::{TopNLayout, top_n_layout};
use eddy_sdk::spec::TopNSpec;
use std::collections::BTreeMap;
use std::sync::Arc;

#[path = "top_n_snapshot.rs"]
mod snapshot;
use snapshot::TopNCheckpoint;

/// End of a group's hash chain.
const NONE: u32 = u32::MAX;

struct Group {
    hash: u64,
    /// The partition columns, in row format.
    key: OwnedRow,
    /// Key group of `hash`: the group's checkpoint entry goes under it.
    key_group: u16,
    /// The event time it is emitted at (its timer).
    time: i64,
    /// The previous group with the same hash, or `NONE`.
    next: u32,
    /// Best first; equal scores in arrival order.
    kept: Vec<(i64, OwnedRow)>,
    /// Whether a barrier reported it (it has an entry in the backend, to
    /// delete once it is emitted).
    written: bool,
}

pub struct TopN {
    node: NodeId,
    layout: TopNLayout,
    /// Partition columns to row format (group identity).
    keys: RowConverter,
    /// Whole input rows to row format (the rows a group keeps).
    rows: RowConverter,
    max_parallelism: u32,
    heads: HashHeads,
    groups: Vec<Option<Group>>,
    free: Vec<u32>,
    /// Open groups by event time: the watermark emits from the front.
    timers: BTreeMap<i64, Vec<u32>>,
    watermark: i64,
    metrics: OperatorMetrics,
    checkpoint: TopNCheckpoint,
    // Buffers reused across batches.
    hashes: Vec<u64>,
    scores: Vec<i64>,
}

impl TopN {
    pub fn new(
        node: &NodeId,
        spec: &TopNSpec,
        input: &SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Self, OperatorError> {
        let layout = top_n_layout(node, spec, input)
            .map_err(|e| plan_error(format!("node `{node}`: {}", e.message)))?;
        let converter = |types: Vec<DataType>| {
            RowConverter::new(types.into_iter().map(SortField::new).collect())
                .map_err(|e| plan_error(format!("node `{node}`: {e}")))
        };
        let keys = converter(
            layout
                .partition_indices
                .iter()
                .map(|&i| input.field(i).data_type().clone())
                .collect(),
        )?;
        let rows = converter(
            input
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
        )?;
        Ok(TopN {
            node: node.clone(),
            layout,
            keys,
            rows,
            max_parallelism: ctx.max_parallelism,
            heads: HashHeads::default(),
            groups: Vec::new(),
            free: Vec::new(),
            timers: BTreeMap::new(),
            watermark: i64::MIN,
            metrics: OperatorMetrics::default(),
            checkpoint: TopNCheckpoint::new(ctx),
            hashes: Vec::new(),
            scores: Vec::new(),
        })
    }

    /// Groups waiting for the watermark.
    pub fn open_groups(&self) -> usize {
        self.groups.len() - self.free.len()
    }

    /// Rows held over all open groups.
    pub fn rows_held(&self) -> usize {
        self.groups.iter().flatten().map(|g| g.kept.len()).sum()
    }

    /// The group of `key` (hash `hash`), created at event time `time` if new.
    fn group_of(&mut self, hash: u64, key: arrow::row::Row<'_>, time: i64) -> u32 {
        let head = self.heads.get(&hash).copied().unwrap_or(NONE);
        let mut g = head;
        while g != NONE {
            let group = self.groups[g as usize]
                .as_ref()
                .expect("hash chains link only open groups");
            if group.key.row() == key {
                return g;
            }
            g = group.next;
        }
        let group = Group {
            hash,
            key: key.owned(),
            key_group: key_group_of_hash(hash, self.max_parallelism).0 as u16,
            time,
            next: head,
            kept: Vec::new(),
            written: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.groups[id as usize] = Some(group);
                id
            }
            None => {
                self.groups.push(Some(group));
                (self.groups.len() - 1) as u32
            }
        };
        self.heads.insert(hash, id);
        self.timers.entry(time).or_default().push(id);
        self.checkpoint.mark(id);
        id
    }

    /// Whether a row of `score` could enter a group holding `kept`.
    fn admits(&self, kept: &[(i64, OwnedRow)], score: i64) -> bool {
        let n = self.layout.n;
        match kept.get(n - 1) {
            None => true,
            Some(&(nth, _)) if self.layout.with_ties => score >= nth,
            Some(&(nth, _)) => score > nth,
        }
    }

    /// Removes group `g` from its hash chain and frees it; returns it.
    fn unlink(&mut self, g: u32) -> Group {
        let group = self.groups[g as usize]
            .take()
            .expect("the timer index lists only open groups");
        let head = self.heads.get(&group.hash).copied().unwrap_or(NONE);
        if head == g {
            if group.next == NONE {
                self.heads.remove(&group.hash);
            } else {
                self.heads.insert(group.hash, group.next);
            }
        } else {
            let mut prev = head;
            while prev != NONE {
                let p = self.groups[prev as usize]
                    .as_mut()
                    .expect("hash chains link only open groups");
                if p.next == g {
                    p.next = group.next;
                    break;
                }
                prev = p.next;
            }
        }
        self.free.push(g);
        group
    }

    /// Emits every group with `time - 1 <= watermark`, in time order.
    fn fire(&mut self, watermark: i64) -> Result<Option<RecordBatch>, OperatorError> {
        let mut out_rows: Vec<OwnedRow> = Vec::new();
        let mut ranks: Vec<i64> = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().saturating_sub(1) > watermark {
                break;
            }
            for g in entry.remove() {
                let group = self.unlink(g);
                self.checkpoint.fired(&group);
                let (mut rank, mut prev) = (1, None);
                for (i, (score, row)) in group.kept.into_iter().enumerate() {
                    // SQL RANK(): 1 + rows strictly ahead.
                    if prev != Some(score) {
                        rank = i as i64 + 1;
                        prev = Some(score);
                    }
                    ranks.push(rank);
                    out_rows.push(row);
                }
            }
        }
        if out_rows.is_empty() {
            return Ok(None);
        }
        self.output(&out_rows, ranks)
            .map(Some)
            .map_err(|e| bad_data(&self.node, "cannot build the top_n output", e))
    }

    fn output(&self, rows: &[OwnedRow], ranks: Vec<i64>) -> Result<RecordBatch, ArrowError> {
        let mut columns = self.rows.convert_rows(rows.iter().map(|r| r.row()))?;
        if self.layout.rank {
            columns.push(Arc::new(Int64Array::from(ranks)));
        }
        RecordBatch::try_new(Arc::clone(&self.layout.output), columns)
    }
}

impl Operator for TopN {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<(), OperatorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ts_col = batch.column(self.layout.event_time_index).clone();
        let ts_col = cast(&ts_col, &DataType::Int64)
            .map_err(|e| bad_data(&self.node, "cannot read the event time", e))?;
        let ts = ts_col.as_primitive::<Int64Type>();
        let order_col = batch.column(self.layout.order_index);
        let mut scores = std::mem::take(&mut self.scores);
        scores_of(order_col, self.layout.descending, &mut scores)
            .map_err(|e| bad_data(&self.node, "cannot read the order_by column", e))?;
        let order_nulls = order_col.logical_nulls();

        let key_cols: Vec<ArrayRef> = self
            .layout
            .partition_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let mut hashes = std::mem::take(&mut self.hashes);
        hash_columns(&key_cols, &mut hashes)
            .map_err(|e| bad_data(&self.node, "cannot hash the partition columns", e))?;
        let keys = self
            .keys
            .convert_columns(&key_cols)
            .map_err(|e| bad_data(&self.node, "cannot encode the partition columns", e))?;

        // Rows that may enter their group, with their group, checked against
        // the groups as they were before this batch (a conservative filter).
        let mut late = 0u64;
        let mut accepted: Vec<u32> = Vec::new();
        let mut targets: Vec<u32> = Vec::new();
        for r in 0..batch.num_rows() {
            if ts.is_null(r) || ts.value(r).saturating_sub(1) <= self.watermark {
                late += 1;
                continue;
            }
            if order_nulls.as_ref().is_some_and(|n| n.is_null(r)) {
                continue;
            }
            let g = self.group_of(hashes[r], keys.row(r), ts.value(r));
            let group = self.groups[g as usize]
                .as_ref()
                .expect("group_of returns an open group");
            if self.admits(&group.kept, scores[r]) {
                accepted.push(r as u32);
                targets.push(g);
            }
        }
        self.metrics.late_records_dropped += late;
        if !accepted.is_empty() {
            let indices = UInt32Array::from(std::mem::take(&mut accepted));
            let taken = take_record_batch(&batch, &indices)
                .map_err(|e| bad_data(&self.node, "cannot copy the ranked rows", e))?;
            let rows = self
                .rows
                .convert_columns(taken.columns())
                .map_err(|e| bad_data(&self.node, "cannot encode the ranked rows", e))?;
            let (n, with_ties) = (self.layout.n, self.layout.with_ties);
            for (i, (&r, &g)) in indices.values().iter().zip(&targets).enumerate() {
                let group = self.groups[g as usize]
                    .as_mut()
                    .expect("group_of returns an open group");
                self.checkpoint.mark(g);
                insert(
                    &mut group.kept,
                    scores[r as usize],
                    rows.row(i),
                    n,
                    with_ties,
                );
            }
        }
        self.hashes = hashes;
        scores.clear();
        self.scores = scores;
        Ok(())
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

    /// The input is complete: every group still open is final.
    fn on_end(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        if let Some(batch) = self.fire(i64::MAX)? {
            out.batch(batch);
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    /// Reports the groups that changed or were emitted since the last barrier.
    fn snapshot_state(
        &mut self,
        _barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        self.snapshot_groups(changes);
        Ok(())
    }

    fn restore_state(&mut self, state: RestoredState) -> Result<(), OperatorError> {
        self.restore_groups(state)
    }
}

/// Puts a row of `score` into `kept` (best first, ties in arrival order) and
/// trims it to `n` rows, or to the rows tied with the n-th when `with_ties`.
fn insert(
    kept: &mut Vec<(i64, OwnedRow)>,
    score: i64,
    row: arrow::row::Row<'_>,
    n: usize,
    with_ties: bool,
) {
    let pos = kept.partition_point(|&(s, _)| s >= score);
    if pos >= n && !(with_ties && kept.get(n - 1).is_some_and(|&(s, _)| s == score)) {
        return;
    }
    kept.insert(pos, (score, row.owned()));
    if kept.len() > n {
        let keep = if with_ties {
            let nth = kept[n - 1].0;
            kept.partition_point(|&(s, _)| s >= nth)
        } else {
            n
        };
        kept.truncate(keep);
    }
}

/// Each row's ranking value as an `i64` whose order is the ranking order
/// (higher is better); nulls get an arbitrary value (the caller skips them).
fn scores_of(column: &ArrayRef, descending: bool, out: &mut Vec<i64>) -> Result<(), ArrowError> {
    out.clear();
    let t = column.data_type();
    if matches!(t, DataType::UInt64) {
        // Flipping the sign bit maps u64 order onto i64 order.
        out.extend(
            column
                .as_primitive::<UInt64Type>()
                .values()
                .iter()
                .map(|&v| (v ^ (1 << 63)) as i64),
        );
    } else if matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64) {
        let f = cast(column, &DataType::Float64)?;
        // The IEEE bits, with negative numbers' magnitude bits flipped, order
        // as `f64::total_cmp` does (NaN above every number).
        out.extend(f.as_primitive::<Float64Type>().values().iter().map(|v| {
            let b = v.to_bits() as i64;
            b ^ (((b >> 63) as u64) >> 1) as i64
        }));
    } else {
        let i = cast(column, &DataType::Int64)?;
        out.extend_from_slice(i.as_primitive::<Int64Type>().values());
    }
    if !descending {
        // Bitwise not reverses the order and, unlike negation, never overflows.
        out.iter_mut().for_each(|s| *s = !*s);
    }
    Ok(())
}

#[cfg(test)]
#[path = "top_n_tests.rs"]
mod tests;
