//! `nexmark`: the Nexmark benchmark source. The events come from
//! `eddy_sdk::nexmark::Generator` (the formulas, and where they come from, are
//! documented there); this module walks this subtask's share of the event
//! numbers and turns the events of its table into Arrow batches.
//!
//! Event numbers are global: event `n` belongs to split `n mod
//! max_parallelism` and a subtask walks the events of the splits (key groups)
//! it owns in increasing `n` (below `count`, which counts events of all three
//! types; see [`super::splits`]), so the union over the subtasks is the same
//! stream at any parallelism, and the position reached is checkpointed per
//! split. The generator is a function
//! of the event number, so a subtask skips the other types' events at the cost
//! of one remainder each and never computes them.
//!
//! `rows_per_second` paces the events walked (total over all subtasks, like
//! `count`) with the same token bucket as `datagen`.

mod columns;

use super::TaskContext;
use super::datagen::DEFAULT_BATCH_SIZE;
use super::datagen::{SPLITS, restore_splits};
use super::pacing::{LatencyMarks, Pacing};
use super::splits::Splits;
use arrow::datatypes::SchemaRef;
use columns::Columns;
use eddy_sdk::ids::NodeId;
use eddy_sdk::nexmark::{EventType, Generator};
use eddy_sdk::operator::{
    Barrier, Collector, OperatorError, RestoredState, Source, SourcePoll, StateChanges,
};
use eddy_sdk::spec::NexmarkSpec;
use std::time::Instant;

pub struct Nexmark {
    node: NodeId,
    schema: SchemaRef,
    wanted: EventType,
    generator: Generator,
    columns: Columns,
    /// The events this subtask owns and how far it got.
    splits: Splits,
    batch_size: usize,
    pacing: Option<Pacing>,
    marks: Option<LatencyMarks>,
}

impl Nexmark {
    /// The schema is the node's, from `eddy_sdk::plan` (which validated the
    /// spec with the same code).
    pub fn new(node: &NodeId, spec: &NexmarkSpec, schema: SchemaRef, ctx: &TaskContext) -> Self {
        let splits = Splits::new(ctx.key_groups(), ctx.max_parallelism, spec.count);
        let batch_size = spec.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1);
        let pacing = spec
            .rows_per_second
            .map(|rate| Pacing::new(rate * splits.share(), batch_size, Instant::now()));
        tracing::debug!(
            job_id = %ctx.job_id,
            vertex = %ctx.vertex,
            subtask = ctx.subtask,
            node = %node,
            table = spec.table.name(),
            events = ?splits.remaining(),
            "nexmark source"
        );
        Nexmark {
            node: node.clone(),
            schema,
            wanted: spec.table.event_type(),
            generator: Generator::new(spec.generator_config()),
            columns: Columns::new(spec.table, batch_size),
            splits,
            batch_size,
            pacing,
            marks: LatencyMarks::new(ctx.latency_interval, Instant::now()),
        }
    }
}

impl Source for Nexmark {
    fn poll(&mut self, out: &mut Collector) -> Result<SourcePoll, OperatorError> {
        if self.splits.is_finished() {
            return Ok(SourcePoll::Finished);
        }
        let budget = match &mut self.pacing {
            None => u64::MAX,
            Some(p) => match p.take(self.batch_size, Instant::now()) {
                Ok(n) => n as u64,
                Err(wait) => return Ok(SourcePoll::Idle(wait)),
            },
        };
        let (mut walked, mut rows) = (0u64, 0usize);
        while walked < budget && rows < self.batch_size {
            let Some(run) = self.splits.next_run(budget - walked) else {
                break;
            };
            let mut end = run.start;
            for n in run.clone() {
                if rows == self.batch_size {
                    break;
                }
                if EventType::of(n) == self.wanted {
                    self.columns.push(&mut self.generator, n);
                    rows += 1;
                }
                end = n + 1;
            }
            walked += end - run.start;
            self.splits.advance(run.start..end);
            if end < run.end {
                break;
            }
        }
        if rows > 0 {
            let batch = self
                .columns
                .finish(&self.schema, self.batch_size)
                .map_err(|e| {
                    super::plan_error(format!(
                        "nexmark `{}` does not match its schema: {e}",
                        self.node
                    ))
                })?;
            out.batch(batch);
            LatencyMarks::after_source_batch(&mut self.marks, self.pacing.as_ref(), out);
        }
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

#[cfg(test)]
mod tests;
