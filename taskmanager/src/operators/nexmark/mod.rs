//! `nexmark`: the Nexmark benchmark source. The events come from
//! `eddy_sdk::nexmark::Generator` (the formulas, and where they come from, are
//! documented there); this module walks this subtask's share of the event
//! numbers and turns the events of its table into Arrow batches.
//!
//! Event numbers are global: subtask `i` of `p` walks `i, i+p, i+2p, …` (below
//! `count`, which counts events of all three types), so the union over the
//! subtasks is the same stream at any parallelism. The generator is a function
//! of the event number, so a subtask skips the other types' events at the cost
//! of one remainder each and never computes them.
//!
//! `rows_per_second` paces the events walked (total over all subtasks, like
//! `count`) with the same token bucket as `datagen`.

mod columns;

use super::TaskContext;
use super::datagen::DEFAULT_BATCH_SIZE;
use super::pacing::{LatencyMarks, Pacing};
use arrow::datatypes::SchemaRef;
use columns::Columns;
use eddy_sdk::ids::NodeId;
use eddy_sdk::nexmark::{EventType, Generator};
use eddy_sdk::operator::{Collector, OperatorError, Source, SourcePoll};
use eddy_sdk::spec::NexmarkSpec;
use std::time::Instant;

pub struct Nexmark {
    node: NodeId,
    schema: SchemaRef,
    wanted: EventType,
    generator: Generator,
    columns: Columns,
    subtask: u64,
    parallelism: u64,
    /// Events this subtask has walked; its next event is `subtask + next * p`.
    next: u64,
    /// Events this subtask walks in total (`None`: unbounded).
    total: Option<u64>,
    batch_size: usize,
    pacing: Option<Pacing>,
    marks: Option<LatencyMarks>,
}

impl Nexmark {
    /// The schema is the node's, from `eddy_sdk::plan` (which validated the
    /// spec with the same code).
    pub fn new(node: &NodeId, spec: &NexmarkSpec, schema: SchemaRef, ctx: &TaskContext) -> Self {
        let (subtask, parallelism) = (u64::from(ctx.subtask), u64::from(ctx.parallelism.max(1)));
        // Subtask i owns events i, i+p, … below count.
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
        tracing::debug!(
            job_id = %ctx.job_id,
            vertex = %ctx.vertex,
            subtask = ctx.subtask,
            node = %node,
            table = spec.table.name(),
            events = ?total,
            "nexmark source"
        );
        Nexmark {
            node: node.clone(),
            schema,
            wanted: spec.table.event_type(),
            generator: Generator::new(spec.generator_config()),
            columns: Columns::new(spec.table, batch_size),
            subtask,
            parallelism,
            next: 0,
            total,
            batch_size,
            pacing,
            marks: LatencyMarks::new(ctx.latency_interval, Instant::now()),
        }
    }
}

impl Source for Nexmark {
    fn poll(&mut self, out: &mut Collector) -> Result<SourcePoll, OperatorError> {
        let remaining = self.total.map_or(u64::MAX, |t| t - self.next);
        if remaining == 0 {
            return Ok(SourcePoll::Finished);
        }
        let budget = match &mut self.pacing {
            None => remaining,
            Some(p) => {
                let limit = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(self.batch_size);
                match p.take(limit, Instant::now()) {
                    Ok(n) => n as u64,
                    Err(wait) => return Ok(SourcePoll::Idle(wait)),
                }
            }
        };
        let p = self.parallelism;
        let mut n = self.subtask.wrapping_add(self.next.wrapping_mul(p));
        let (mut walked, mut rows) = (0u64, 0usize);
        while walked < budget && rows < self.batch_size {
            if EventType::of(n) == self.wanted {
                self.columns.push(&mut self.generator, n);
                rows += 1;
            }
            walked += 1;
            n = n.wrapping_add(p);
        }
        self.next += walked;
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
}

#[cfg(test)]
mod tests;
