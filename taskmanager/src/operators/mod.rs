//! The built-in operators, and building the operator chain of one subtask.
//!
//! Every operator implements `eddy_sdk::operator::{Operator, Source}`: it is
//! synchronous, batch-at-a-time and vectorized with Arrow kernels; none does
//! per-row dynamic dispatch or allocation in its hot loop. Schemas come from
//! `eddy_sdk::plan`, the same code the JobManager validated the job with, so an
//! operator's output always matches the schema the graph declares.
//!
//! This module owns no threads, channels or I/O other than the file and print
//! sinks' own writes: the task runtime drives a [`Chain`] and moves its output.

pub mod aggregate;
pub mod datagen;
mod file_commit;
pub mod filter;
pub mod kafka;
pub mod nexmark;
pub(crate) mod pacing;
pub mod project;
pub mod prune;
pub mod sink;
pub(crate) mod splits;
pub mod top_n;
pub mod watermark;
pub mod window;

#[cfg(test)]
pub(crate) mod harness;
#[cfg(test)]
mod tests;

use arrow::datatypes::SchemaRef;
use eddy_sdk::FailureClass;
use eddy_sdk::graph::JobGraph;
use eddy_sdk::ids::{JobId, NodeId, VertexId};
use eddy_sdk::operator::{Operator, OperatorError, Source};
use eddy_sdk::plan::Schemas;
use eddy_sdk::spec::{JobSpec, KafkaSpec, NodeKind};

/// Where a subtask runs: what its operators need to know about themselves.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub job_id: JobId,
    pub vertex: VertexId,
    /// This subtask's index, `0..parallelism`.
    pub subtask: u32,
    pub parallelism: u32,
    /// The job's number of key groups.
    pub max_parallelism: u32,
    /// Sources send a latency marker this often (`None`: never).
    pub latency_interval: Option<std::time::Duration>,
    /// How many times the job's tasks were deployed before this one.
    pub attempt: u32,
    /// The job takes checkpoints: sinks write transactionally (visible only
    /// once the checkpoint covering the data is committed).
    pub exactly_once: bool,
}

impl TaskContext {
    /// The key groups this subtask owns.
    pub fn key_groups(&self) -> std::ops::Range<u32> {
        eddy_sdk::keygroup::key_group_range(self.max_parallelism, self.parallelism, self.subtask)
    }
}

/// The operators of one subtask, in chain order.
pub struct Chain {
    /// Set when the vertex starts with a source node.
    pub source: Option<Box<dyn Source>>,
    /// Transformations and sinks, then the watermark assigner when the vertex
    /// feeds a window.
    pub operators: Vec<Box<dyn Operator>>,
    /// The schema of the batches the chain emits.
    pub output_schema: SchemaRef,
    /// The stateful operators: where each is in the chain, and its node.
    pub stateful: Vec<(crate::runtime::StatePosition, NodeId)>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("source", &self.source.is_some())
            .field("operators", &self.operators.len())
            .field("output_schema", &self.output_schema)
            .finish()
    }
}

/// Builds the chain of vertex `ctx.vertex` for subtask `ctx.subtask`. The spec,
/// graph and schemas are those of `eddy_sdk::plan::validate`.
pub fn build_chain(
    spec: &JobSpec,
    graph: &JobGraph,
    schemas: &Schemas,
    ctx: &TaskContext,
) -> Result<Chain, OperatorError> {
    let vertex = graph
        .vertices
        .iter()
        .find(|v| v.id == ctx.vertex)
        .ok_or_else(|| {
            plan_error(format!(
                "vertex {} is not part of job {}",
                ctx.vertex, ctx.job_id
            ))
        })?;
    if ctx.parallelism == 0
        || ctx.subtask >= ctx.parallelism
        || ctx.parallelism > ctx.max_parallelism
    {
        return Err(plan_error(format!(
            "subtask {} of parallelism {} (max parallelism {}) is not a valid subtask",
            ctx.subtask, ctx.parallelism, ctx.max_parallelism
        )));
    }
    let mut source: Option<Box<dyn Source>> = None;
    let mut operators: Vec<Box<dyn Operator>> = Vec::with_capacity(vertex.nodes.len() + 1);
    let mut output_schema = None;
    let mut stateful = Vec::new();
    for (position, id) in vertex.nodes.iter().enumerate() {
        let node = spec.node(id).ok_or_else(|| {
            plan_error(format!(
                "node `{id}` of vertex {} is not in the spec",
                vertex.id
            ))
        })?;
        let output = schema_of(schemas, id)?;
        let input = || {
            node.input
                .as_ref()
                .ok_or_else(|| plan_error(format!("node `{id}` has no input")))
                .and_then(|i| schema_of(schemas, i))
        };
        if node.kind.is_stateful() {
            let at = if node.kind.is_source() {
                crate::runtime::StatePosition::Source
            } else {
                crate::runtime::StatePosition::Operator(operators.len())
            };
            stateful.push((at, id.clone()));
        }
        match &node.kind {
            NodeKind::Datagen(d) => {
                if position != 0 {
                    return Err(plan_error(format!(
                        "source `{id}` is not the first node of its vertex"
                    )));
                }
                source = Some(Box::new(datagen::Datagen::new(id, d, output.clone(), ctx)));
            }
            NodeKind::Nexmark(n) => {
                if position != 0 {
                    return Err(plan_error(format!(
                        "source `{id}` is not the first node of its vertex"
                    )));
                }
                source = Some(Box::new(nexmark::Nexmark::new(id, n, output.clone(), ctx)));
            }
            NodeKind::Project(p) => {
                operators.push(Box::new(project::Project::new(id, &input()?, &p.exprs)?))
            }
            NodeKind::Filter(f) => {
                operators.push(Box::new(filter::Filter::new(id, &input()?, &f.predicate)?))
            }
            NodeKind::Window(w) => {
                // The producer pruned what no window reads (`prune`).
                let input_id = node
                    .input
                    .as_ref()
                    .ok_or_else(|| plan_error(format!("node `{id}` has no input")))?;
                let sent = prune::sent_schema(spec, input_id, input()?)?;
                operators.push(window::build(id, w, &sent, ctx)?)
            }
            NodeKind::Aggregate(a) => {
                // The producer pruned what no keyed consumer reads (`prune`).
                let input_id = node
                    .input
                    .as_ref()
                    .ok_or_else(|| plan_error(format!("node `{id}` has no input")))?;
                let sent = prune::sent_schema(spec, input_id, input()?)?;
                operators.push(Box::new(aggregate::Aggregate::new(id, a, &sent, ctx)?))
            }
            NodeKind::TopN(t) => operators.push(Box::new(top_n::TopN::new(id, t, &input()?, ctx)?)),
            NodeKind::Print(_) => operators.push(Box::new(sink::Print::stdout(id, ctx.subtask))),
            NodeKind::Blackhole(b) => operators.push(Box::new(sink::Blackhole::new(b))),
            NodeKind::File(f) => operators.push(Box::new(sink::FileSink::create(id, f, ctx)?)),
            NodeKind::Kafka(KafkaSpec::Source(k)) => {
                if position != 0 {
                    return Err(plan_error(format!(
                        "source `{id}` is not the first node of its vertex"
                    )));
                }
                source = Some(Box::new(kafka::source::KafkaSource::new(
                    id,
                    k,
                    output.clone(),
                    ctx,
                )?));
            }
            NodeKind::Kafka(KafkaSpec::Sink(k)) => operators.push(Box::new(
                kafka::sink::KafkaSink::new(id, k, &input()?, ctx)?,
            )),
        }
        output_schema = Some(output);
    }
    let mut output_schema =
        output_schema.ok_or_else(|| plan_error(format!("vertex {} has no nodes", vertex.id)))?;
    if let Some(wm) = &vertex.watermark {
        operators.push(Box::new(watermark::WatermarkAssigner::new(
            &output_schema,
            &wm.column,
            wm.max_out_of_orderness_ms,
        )?));
    }
    if let Some(last) = vertex.nodes.last()
        && let Some((indices, schema)) = prune::pruned(spec, last, &output_schema)?
    {
        output_schema = std::sync::Arc::clone(&schema);
        operators.push(Box::new(prune::Prune::new(indices, schema)));
    }
    tracing::debug!(
        job_id = %ctx.job_id,
        vertex = %ctx.vertex,
        subtask = ctx.subtask,
        chain = %vertex.name(),
        watermark = vertex.watermark.is_some(),
        "built operator chain"
    );
    Ok(Chain {
        source,
        operators,
        output_schema,
        stateful,
    })
}

fn schema_of(schemas: &Schemas, id: &NodeId) -> Result<SchemaRef, OperatorError> {
    schemas
        .get(id)
        .cloned()
        .ok_or_else(|| plan_error(format!("no schema for node `{id}`")))
}

/// A job that does not plan on the TaskManager: the spec is at fault (the
/// JobManager validated it with the same code, so this is not retryable).
pub(crate) fn plan_error(message: impl Into<String>) -> OperatorError {
    OperatorError::new(FailureClass::UserCode, message)
}

/// A record the job cannot process (evaluation errors, bad values). The
/// message says what failed where; the cause stays in the source chain.
pub(crate) fn bad_data(
    node: &NodeId,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> OperatorError {
    OperatorError::new(FailureClass::BadData, format!("node `{node}`: {what}")).with_source(e)
}
