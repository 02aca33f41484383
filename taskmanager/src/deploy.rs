//! The deploy path: `DeployTasks` and `CancelJob` on this TaskManager.
//!
//! Order matters. Every subtask of the request is recorded (DEPLOYING) and
//! every input channel of every subtask is registered before any subtask
//! starts, so producers (here or on other TaskManagers) always find their
//! consumers. The spec is compiled once per request; each subtask then builds
//! its chain, connects its outputs and runs on its slot's thread. Anything
//! that goes wrong for a subtask fails that subtask with its error chain; the
//! request itself only fails for a stale leader or a malformed placement.

use crate::exchange::{ChannelKey, InputEndpoint, OutputChannel, RemoteSender};
use crate::node::CheckpointMessage;
use crate::node::{Node, StaleTerm};
use crate::operators::{self, TaskContext};
use crate::runtime::checkpoint::{Report, RestorePlan, StateConfig, SubtaskScope, TaskState};
use crate::runtime::{self, EdgeOutput, InputGate, Outputs, Partitioner, Subtask};
use crate::runtime::{Checkpoints, StatePosition};
use crate::state::SystemClock;
use crate::state::manifest::BackendKind;
use crate::state::storage::CheckpointStorage;
use crate::tasks::{Failure, TaskKey};
use arrow::datatypes::Schema;
use eddy_proto::v1 as pb;
use eddy_sdk::error::FailureClass;
use eddy_sdk::graph::{JobGraph, Partitioning};
use eddy_sdk::ids::{Attempt, JobId, VertexId};
use eddy_sdk::ids::{CheckpointId, NodeId};
use eddy_sdk::plan::Schemas;
use eddy_sdk::spec::JobSpec;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    StaleTerm(#[from] StaleTerm),
    #[error("invalid deploy request: {0}")]
    Invalid(String),
}

/// The spec compiled once per deploy request, shared by its subtasks.
pub struct CompiledJob {
    pub spec: JobSpec,
    pub graph: JobGraph,
    pub schemas: Schemas,
    /// Set when the job takes checkpoints.
    pub checkpointing: Option<CheckpointSetup>,
}

/// Where a job's checkpoints go, and what this attempt restores from.
pub struct CheckpointSetup {
    pub backend: BackendKind,
    pub storage: Arc<CheckpointStorage>,
    pub restore: Option<RestorePlan>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("unknown state backend `{0}` (expected memory or rocksdb)")]
    Backend(String),
    #[error("cannot open checkpoint storage {url}")]
    Storage {
        url: String,
        #[source]
        source: crate::state::storage::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot parse the job spec")]
    Parse(#[source] eddy_sdk::ApiError),
    #[error("the job spec does not compile on this TaskManager")]
    Plan(#[source] eddy_sdk::ApiError),
}

pub fn compile(spec_json: &str) -> Result<CompiledJob, CompileError> {
    let spec = eddy_sdk::spec::parse_json(spec_json).map_err(CompileError::Parse)?;
    let (graph, schemas) = eddy_sdk::plan::validate(&spec, None).map_err(CompileError::Plan)?;
    Ok(CompiledJob {
        spec,
        graph,
        schemas,
        checkpointing: None,
    })
}

/// The named input queues of one subtask, one per upstream subtask.
type InputQueues = Vec<(String, mpsc::Receiver<crate::exchange::ChannelItem>)>;

/// Where each subtask of the job runs: (vertex, index) -> (tm_id, rpc_addr).
type Placements = HashMap<(u32, u32), (String, String)>;

impl Node {
    /// Handles `DeployTasks`. Returns the number of subtasks started.
    pub fn deploy(self: &Arc<Self>, req: pb::DeployTasksRequest) -> Result<usize, Error> {
        self.accept_command(req.leader_term, "deploy")?;
        if req.job_id.is_empty() {
            return Err(Error::Invalid("job_id is empty".into()));
        }
        if let Some(p) = req.deploy.iter().find(|p| p.slot >= self.slots.len()) {
            return Err(Error::Invalid(format!(
                "subtask v{}[{}] is placed on slot {}, but this TaskManager has {} slots",
                p.vertex,
                p.index,
                p.slot,
                self.slots.len()
            )));
        }
        let job_id = JobId(req.job_id.clone());
        let attempt = Attempt(req.attempt);
        // Older attempts of the job are superseded, here and everywhere.
        self.tasks.cancel_older_attempts(&job_id, attempt);
        self.registry.remove_job(&job_id, Some(attempt));
        let placements: Arc<Placements> = Arc::new(
            req.placements
                .iter()
                .map(|p| ((p.vertex, p.index), (p.tm_id.clone(), p.rpc_addr.clone())))
                .collect(),
        );

        // 1. Record every new subtask (a repeated request is idempotent).
        let mut starting = Vec::new();
        for p in &req.deploy {
            let key = TaskKey {
                job_id: job_id.clone(),
                vertex: VertexId(p.vertex),
                index: p.index,
            };
            if self.tasks.has_attempt(&key, attempt) {
                continue;
            }
            let cancel = self.shutdown.child_token();
            let metrics = self
                .tasks
                .insert(key.clone(), attempt, p.slot, cancel.clone());
            starting.push(Starting {
                key,
                slot: p.slot,
                metrics,
                cancel,
                inputs: None,
            });
        }

        // 2. Compile the spec once.
        let mut job = match compile(&req.spec_json) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(job_id = %job_id, error = ?eddy_sdk::error::error_chain(&e), "cannot compile job spec");
                for s in &starting {
                    self.fail(&s.key, attempt, &e, FailureClass::UserCode);
                }
                return Ok(0);
            }
        };
        if let Some(c) = &req.checkpointing {
            match self.checkpoint_setup(c, req.restore.as_ref()) {
                Ok(setup) => job.checkpointing = Some(setup),
                Err(e) => {
                    tracing::warn!(job_id = %job_id, error = ?eddy_sdk::error::error_chain(&e), "cannot set up checkpoints");
                    for s in &starting {
                        self.fail(&s.key, attempt, &e, FailureClass::Infrastructure);
                    }
                    return Ok(0);
                }
            }
        }
        let job = Arc::new(job);

        // 3. Register every input channel before anything starts.
        let mut ready = Vec::with_capacity(starting.len());
        for mut s in starting {
            match self.register_inputs(&job.graph, &s, attempt) {
                Ok(inputs) => {
                    s.inputs = inputs;
                    ready.push(s);
                }
                Err(e) => self.fail(&s.key, attempt, &e, e.class()),
            }
        }

        // 4. Start them on their slots.
        let mut started = 0;
        for s in ready {
            let (key, slot) = (s.key.clone(), s.slot);
            // A root span: the subtask outlives the DeployTasks call.
            let span = tracing::info_span!(parent: None, "subtask", job_id = %key.job_id, vertex = key.vertex.0, subtask = key.index, tm_id = %self.tm_id);
            let run = run_subtask(self.clone(), job.clone(), placements.clone(), attempt, s)
                .instrument(span);
            match self.slots.spawn(slot, run) {
                Ok(_) => started += 1,
                Err(e) => self.fail(&key, attempt, &e, FailureClass::Infrastructure),
            }
        }
        tracing::info!(job_id = %job_id, attempt = attempt.0, started, "deployed subtasks");
        Ok(started)
    }

    fn checkpoint_setup(
        &self,
        c: &pb::CheckpointConfig,
        restore: Option<&pb::RestoreFrom>,
    ) -> Result<CheckpointSetup, SetupError> {
        let backend = match c.backend.as_str() {
            "memory" => BackendKind::Memory,
            "rocksdb" => BackendKind::Rocksdb,
            other => return Err(SetupError::Backend(other.to_string())),
        };
        let open = |url: &str| {
            self.storage(url).map_err(|source| SetupError::Storage {
                url: url.to_string(),
                source,
            })
        };
        let storage = open(&c.storage)?;
        let restore = match restore {
            None => None,
            Some(r) => Some(RestorePlan {
                checkpoint: CheckpointId(r.checkpoint_id),
                storage: if r.storage.is_empty() || r.storage == c.storage {
                    storage.clone()
                } else {
                    open(&r.storage)?
                },
                snapshots: r
                    .snapshots
                    .iter()
                    .map(|s| (NodeId(s.node_id.clone()), s.manifest_path.clone()))
                    .collect(),
            }),
        };
        Ok(CheckpointSetup {
            backend,
            storage,
            restore,
        })
    }

    /// Opens (or restores) the state of `chain`'s stateful operators, hands
    /// each operator its restored state, and connects the subtask to
    /// checkpoint commands and reports.
    async fn open_checkpoints(
        self: &Arc<Self>,
        setup: &CheckpointSetup,
        key: &TaskKey,
        attempt: Attempt,
        slot: u32,
        ctx: &TaskContext,
        chain: &mut operators::Chain,
    ) -> Result<Checkpoints, runtime::Error> {
        let config = StateConfig {
            backend: setup.backend,
            storage: setup.storage.clone(),
            slot: self.rocksdb_slots[slot as usize].clone(),
            clock: Arc::new(SystemClock),
        };
        let scope = SubtaskScope {
            job: key.job_id.clone(),
            subtask: key.index,
            max_parallelism: ctx.max_parallelism,
            key_groups: ctx.key_groups(),
        };
        let nodes: Vec<NodeId> = chain.stateful.iter().map(|(_, n)| n.clone()).collect();
        let (state, restored) =
            TaskState::open(config, &scope, &nodes, setup.restore.as_ref()).await?;
        if setup.restore.is_some() {
            for ((at, _), r) in chain.stateful.iter().zip(restored) {
                match at {
                    StatePosition::Source => {
                        if let Some(source) = chain.source.as_mut() {
                            source.restore_state(r)?;
                        }
                    }
                    StatePosition::Operator(i) => chain.operators[*i].restore_state(r)?,
                }
            }
        }
        let (commands, rx) = mpsc::unbounded_channel();
        self.tasks
            .set_commands(key, attempt, commands, chain.source.is_some());
        let (reports, mut from_task) = mpsc::unbounded_channel::<Report>();
        let node = self.clone();
        let task = key.clone();
        let subtask = pb::SubtaskRef {
            job_id: key.job_id.0.clone(),
            vertex: key.vertex.0,
            index: key.index,
            attempt: attempt.0,
        };
        tokio::spawn(async move {
            while let Some(report) = from_task.recv().await {
                match report_to_pb(&node.tm_id.0, &subtask, report) {
                    Some(message) => {
                        if node.checkpoint_reports.send(message).is_err() {
                            return;
                        }
                    }
                    // The source's input ended: its status (whose watermark
                    // says so) goes to the JobManager now.
                    None => node.tasks.report_now(&task, attempt),
                }
            }
        });
        Ok(Checkpoints {
            state,
            positions: chain.stateful.iter().map(|(at, _)| *at).collect(),
            commands: rx,
            reports,
        })
    }

    /// Handles `CancelJob`: cancels the job's subtasks (each reports CANCELED
    /// as it stops) and drops its channels.
    pub fn cancel_job(&self, job_id: &JobId, leader_term: u64) -> Result<usize, StaleTerm> {
        self.accept_command(leader_term, "cancel")?;
        let n = self.tasks.cancel_job(job_id);
        self.registry.remove_job(job_id, None);
        tracing::info!(job_id = %job_id, canceled = n, "canceled job");
        Ok(n)
    }

    fn fail(
        &self,
        key: &TaskKey,
        attempt: Attempt,
        e: &(dyn std::error::Error + 'static),
        class: FailureClass,
    ) {
        self.tasks.transition(
            key,
            attempt,
            pb::TaskState::Failed,
            Some(Failure::from_error(e, class)),
        );
    }

    /// Registers one bounded queue per upstream subtask of `s`'s input edge.
    fn register_inputs(
        &self,
        graph: &JobGraph,
        s: &Starting,
        attempt: Attempt,
    ) -> Result<Option<InputQueues>, runtime::Error> {
        let vertex = checked_vertex(graph, s.key.vertex, s.key.index)?;
        let Some(edge) = graph.input_of(vertex) else {
            return Ok(None);
        };
        let upstream = graph.vertex(edge.from).parallelism;
        let froms: Vec<u32> = match edge.partitioning {
            Partitioning::Forward => vec![s.key.index],
            _ => (0..upstream).collect(),
        };
        let credits = self.config.exchange.channel_credits as usize;
        let mut channels = Vec::with_capacity(froms.len());
        for from in froms {
            let key = ChannelKey {
                job_id: s.key.job_id.clone(),
                attempt,
                from_vertex: edge.from,
                from_index: from,
                to_vertex: vertex,
                to_index: s.key.index,
            };
            let (queue, rx) = mpsc::channel(credits);
            channels.push((format!("{}[{from}]", edge.from), rx));
            self.registry.register(
                key,
                InputEndpoint {
                    queue,
                    metrics: s.metrics.clone(),
                },
            );
        }
        Ok(Some(channels))
    }

    /// Opens one channel per consumer of every outgoing edge.
    async fn connect_outputs(
        &self,
        graph: &JobGraph,
        placements: &Placements,
        attempt: Attempt,
        key: &TaskKey,
        slot: u32,
        output_schema: &Schema,
    ) -> Result<Outputs, runtime::Error> {
        let mut edges = Vec::new();
        for edge in graph.outputs_of(key.vertex) {
            let to = graph.vertex(edge.to).parallelism;
            let partitioner = Partitioner::new(
                &edge.partitioning,
                output_schema,
                graph.max_parallelism,
                key.index,
            )?;
            let targets: Vec<u32> = match edge.partitioning {
                Partitioning::Forward => vec![key.index],
                _ => (0..to).collect(),
            };
            let connects = targets.into_iter().map(|to_index| {
                let channel = ChannelKey {
                    job_id: key.job_id.clone(),
                    attempt,
                    from_vertex: key.vertex,
                    from_index: key.index,
                    to_vertex: edge.to,
                    to_index,
                };
                self.open_channel(channel, placements, slot)
            });
            let channels = futures::future::try_join_all(connects).await?;
            edges.push(EdgeOutput::new(partitioner, channels));
        }
        Ok(Outputs::new(edges))
    }

    async fn open_channel(
        &self,
        key: ChannelKey,
        placements: &Placements,
        slot: u32,
    ) -> Result<OutputChannel, runtime::Error> {
        let Some((tm_id, addr)) = placements.get(&(key.to_vertex.0, key.to_index)) else {
            return Err(runtime::Error::NoPlacement {
                vertex: key.to_vertex,
                index: key.to_index,
            });
        };
        if tm_id == self.tm_id.as_str() {
            let endpoint = self.registry.claim(&key, self.timeouts.claim_wait).await?;
            return Ok(OutputChannel::Local {
                key,
                queue: endpoint.queue,
            });
        }
        let credits = self.config.exchange.channel_credits as usize;
        let channel =
            self.peer_channel(slot, addr)
                .map_err(|source| crate::exchange::Error::Addr {
                    key: key.clone(),
                    source,
                })?;
        let sender = RemoteSender::connect(
            key,
            addr,
            channel,
            &self.timeouts.connect,
            credits,
            self.metrics.exchange.clone(),
        )
        .await?;
        Ok(OutputChannel::Remote(Box::new(sender)))
    }
}

/// A subtask between being recorded and being started.
struct Starting {
    key: TaskKey,
    slot: u32,
    metrics: Arc<crate::runtime::metrics::SubtaskMetrics>,
    cancel: tokio_util::sync::CancellationToken,
    inputs: Option<InputQueues>,
}

fn checked_vertex(
    graph: &JobGraph,
    vertex: VertexId,
    index: u32,
) -> Result<VertexId, runtime::Error> {
    match graph.vertices.get(vertex.0 as usize) {
        Some(v) if index < v.parallelism => Ok(vertex),
        _ => Err(runtime::Error::NoSuchSubtask { vertex, index }),
    }
}

/// The watermark alignment of a vertex's input: set by the window it starts
/// with (see `runtime::gate`).
fn max_drift_ms(spec: &JobSpec, vertex: &eddy_sdk::graph::Vertex) -> Option<i64> {
    let first = spec.node(vertex.nodes.first()?)?;
    match &first.kind {
        eddy_sdk::spec::NodeKind::Window(w) => w
            .watermark_alignment
            .as_ref()
            .map(|a| a.max_drift.as_millis_i64()),
        _ => None,
    }
}

/// The life of one subtask on its slot thread: build, connect, run, report.
async fn run_subtask(
    node: Arc<Node>,
    job: Arc<CompiledJob>,
    placements: Arc<Placements>,
    attempt: Attempt,
    s: Starting,
) {
    let Starting {
        key,
        slot,
        metrics,
        cancel,
        inputs,
    } = s;
    let work = async {
        let vertex = job.graph.vertex(key.vertex);
        let ctx = TaskContext {
            job_id: key.job_id.clone(),
            vertex: key.vertex,
            subtask: key.index,
            parallelism: vertex.parallelism,
            max_parallelism: job.graph.max_parallelism,
            latency_interval: Some(node.config.latency_marker_interval.0).filter(|d| !d.is_zero()),
            attempt: attempt.0,
            exactly_once: job.checkpointing.is_some(),
        };
        let mut chain = operators::build_chain(&job.spec, &job.graph, &job.schemas, &ctx)
            .map_err(runtime::Error::Build)?;
        let checkpoints = match &job.checkpointing {
            Some(setup) => Some(
                node.open_checkpoints(setup, &key, attempt, slot, &ctx, &mut chain)
                    .await?,
            ),
            None => None,
        };
        let outputs = node
            .connect_outputs(
                &job.graph,
                &placements,
                attempt,
                &key,
                slot,
                &chain.output_schema,
            )
            .await?;
        node.tasks
            .transition(&key, attempt, pb::TaskState::Running, None);
        tracing::info!("subtask running");
        Subtask {
            chain,
            input: inputs
                .map(|i| InputGate::new(i).with_max_drift(max_drift_ms(&job.spec, vertex))),
            outputs,
            metrics,
            checkpoints,
        }
        .run()
        .await
    };
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = work => Some(r),
    };
    // Its input channels have no consumer any more: forget them, so the
    // registry does not grow with every job that ends without a CancelJob.
    node.registry
        .remove_consumer(&key.job_id, attempt, key.vertex, key.index);
    match outcome {
        None => {
            tracing::info!("subtask canceled");
            node.tasks
                .transition(&key, attempt, pb::TaskState::Canceled, None);
        }
        Some(Ok(())) => {
            tracing::info!("subtask finished");
            node.tasks
                .transition(&key, attempt, pb::TaskState::Finished, None);
        }
        Some(Err(e)) => {
            let class = e.class();
            tracing::warn!(class = class.as_str(), error = ?eddy_sdk::error::error_chain(&e), "subtask failed");
            let mut failure = Failure::from_error(&e, class);
            if let runtime::Error::State(s) = &e {
                failure.damaged_checkpoint = s.damaged_checkpoint().map(|c| c.0);
            }
            node.tasks
                .transition(&key, attempt, pb::TaskState::Failed, Some(failure));
        }
    }
}

/// A subtask's checkpoint report as the JobManager receives it (`None`
/// for the end of a source's input, which goes as a task status).
fn report_to_pb(
    tm_id: &str,
    subtask: &pb::SubtaskRef,
    report: Report,
) -> Option<CheckpointMessage> {
    Some(match report {
        Report::Ack {
            checkpoint,
            snapshots,
            timings,
        } => CheckpointMessage::Ack(pb::AcknowledgeCheckpointRequest {
            tm_id: tm_id.to_string(),
            subtask: Some(subtask.clone()),
            checkpoint_id: checkpoint.0,
            snapshots: snapshots
                .into_iter()
                .map(|s| pb::OperatorSnapshot {
                    node_id: s.node.0,
                    manifest_path: s.manifest_path,
                    state_bytes: s.state_bytes,
                    uploaded_bytes: s.uploaded_bytes,
                })
                .collect(),
            alignment_ms: millis(timings.alignment),
            sync_ms: millis(timings.sync),
            async_ms: millis(timings.upload),
        }),
        Report::Decline { checkpoint, reason } => {
            CheckpointMessage::Decline(pb::DeclineCheckpointRequest {
                tm_id: tm_id.to_string(),
                subtask: Some(subtask.clone()),
                checkpoint_id: checkpoint.0,
                reason,
            })
        }
        Report::InputEnded => return None,
    })
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
