//! The leader's checkpoint service: one [`Coordinator`] per running job with
//! checkpoints, fed with ticks and the events of the [`Hub`](super::hub)
//! (acknowledgements, declines, savepoint requests), and the executor of
//! its actions: Raft proposals, RPCs to TaskManagers, `_metadata` writes,
//! savepoint copies and the deletion of discarded checkpoints.
//!
//! Long work (writing `_metadata`, copying a savepoint, deleting files) runs
//! in spawned tasks that report back through a channel, so a step of the job
//! driver never waits on object storage.

use super::files::{delete_checkpoints, prepare_commit};
use super::hub::{Event, OperationStatus};
use super::{Action, Coordinator};
use crate::cluster_state::{Command, CompletedCheckpoint, JobRecord};
use crate::context::{Context, WriteError, now_ms};
use eddy_proto::v1 as pb;
use eddy_sdk::ids::{Attempt, CheckpointId, JobId, TaskManagerId};
use eddy_sdk::storage::CheckpointStorage;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How long one checkpoint RPC to a TaskManager may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the latest commit is announced again: a lost notice would
/// otherwise leave sinks holding committed data back (and a finishing job
/// waiting) until the next checkpoint.
const RENOTIFY_EVERY_MS: i64 = 5_000;

pub use super::settings::{checkpoint_settings, deploy_config, restart_settings, topology};

/// A running job as the driver sees it in one step.
pub struct RunningJob<'a> {
    pub record: &'a JobRecord,
    /// Every subtask of the attempt reported RUNNING: barriers can flow.
    pub ready: bool,
    /// The live TaskManagers of the attempt, with their RPC addresses.
    pub taskmanagers: Vec<(TaskManagerId, String)>,
    /// Every source subtask reached the end of its input (its watermark is
    /// final) and waits for a last checkpoint before the job can finish.
    pub sources_finished: bool,
}

struct JobCheckpoints {
    attempt: Attempt,
    coordinator: Coordinator,
    max_parallelism: u32,
    storage: Arc<CheckpointStorage>,
    taskmanagers: Vec<(TaskManagerId, String)>,
    /// Savepoint operations queued in the coordinator, by target.
    queued_ops: HashMap<String, (String, bool)>,
    /// Savepoint operations triggered, by checkpoint id.
    triggered_ops: HashMap<CheckpointId, (String, bool)>,
    /// When the latest commit was last announced.
    notified_at_ms: i64,
    /// Since when every source has reported the end of its input: a
    /// checkpoint triggered from then on is the job's final one.
    sources_done_since_ms: Option<i64>,
    /// Every subtask was RUNNING at the last step: the coordinator ticks.
    ready: bool,
}

impl JobCheckpoints {
    /// Whether a checkpoint triggered at `trigger_ms` is the job's final
    /// one: triggered once every source had ended its input.
    fn is_final(&self, trigger_ms: i64) -> bool {
        self.sources_done_since_ms
            .is_some_and(|since| trigger_ms >= since)
    }
}

/// What a spawned `_metadata` write or savepoint copy came back with.
struct Prepared {
    job: JobId,
    id: CheckpointId,
    result: Result<CompletedCheckpoint, String>,
}

pub struct Service {
    ctx: Arc<Context>,
    events: mpsc::UnboundedReceiver<Event>,
    jobs: HashMap<JobId, JobCheckpoints>,
    prepared_tx: mpsc::UnboundedSender<Prepared>,
    prepared_rx: mpsc::UnboundedReceiver<Prepared>,
}

impl Service {
    /// The service, holding the hub's event stream (`None` if already taken).
    pub fn new(ctx: Arc<Context>) -> Option<Self> {
        let events = ctx.checkpoints.take_events()?;
        let (prepared_tx, prepared_rx) = mpsc::unbounded_channel();
        Some(Service {
            ctx,
            events,
            jobs: HashMap::new(),
            prepared_tx,
            prepared_rx,
        })
    }

    /// Leadership was lost: forget the coordinators (a new leader starts
    /// afresh from the Raft catalog) and drop pending events.
    pub fn reset(&mut self) {
        self.jobs.clear();
        while self.events.try_recv().is_ok() {}
    }

    /// One pass: follows the running jobs, applies the pending events, ticks
    /// the coordinators and carries out their actions. Returns the jobs the
    /// coordinators gave up on (too many failed checkpoints), with why.
    pub async fn step(&mut self, running: &[RunningJob<'_>]) -> Vec<(JobId, String)> {
        let now = now_ms();
        let mut actions: Vec<(JobId, Action)> = Vec::new();
        let live: BTreeSet<&JobId> = running.iter().map(|r| &r.record.id).collect();
        self.jobs.retain(|id, _| live.contains(id));
        for r in running {
            if let Some(a) = self.follow(r, now) {
                actions.extend(a.into_iter().map(|a| (r.record.id.clone(), a)));
            }
        }
        while let Ok(event) = self.events.try_recv() {
            actions.extend(self.on_event(event, now));
        }
        while let Ok(p) = self.prepared_rx.try_recv() {
            actions.extend(self.on_prepared(p).await);
        }
        for r in running {
            if let Some(job) = self.jobs.get_mut(&r.record.id) {
                job.ready = r.ready;
                job.sources_done_since_ms = if r.sources_finished {
                    Some(job.sources_done_since_ms.unwrap_or(now))
                } else {
                    None
                };
            }
        }
        for r in running.iter().filter(|r| r.ready) {
            if let Some(job) = self.jobs.get_mut(&r.record.id) {
                let a = if r.sources_finished && job.coordinator.pending().is_none() {
                    job.coordinator.request_checkpoint(now)
                } else {
                    job.coordinator.tick(now)
                };
                actions.extend(a.into_iter().map(|a| (r.record.id.clone(), a)));
            }
        }
        let latest: Vec<(JobId, CheckpointId)> = self
            .jobs
            .iter_mut()
            .filter(|(_, j)| now.saturating_sub(j.notified_at_ms) >= RENOTIFY_EVERY_MS)
            .filter_map(|(id, j)| {
                j.notified_at_ms = now;
                let c = self
                    .ctx
                    .read(|s| s.checkpoint_catalog(id).and_then(|c| c.highest_completed()))?;
                Some((id.clone(), c))
            })
            .collect();
        for (id, c) in latest {
            self.notify(&id, c, None);
        }
        let mut failed = Vec::new();
        // Actions may lead to more (a reservation lets a trigger happen).
        while !actions.is_empty() {
            let mut next = Vec::new();
            for (job, action) in actions {
                next.extend(self.execute(&job, action, &mut failed).await);
            }
            actions = next;
        }
        for (id, job) in &self.jobs {
            self.ctx
                .checkpoints
                .publish_stats(id, job.coordinator.stats());
        }
        failed
    }

    /// The earliest time a coordinator's tick has something to do (see
    /// [`Coordinator::next_due_ms`]) of a job whose subtasks all run: the
    /// driver steps then at the latest. (A job still deploying ticks again
    /// when its subtasks report.)
    pub fn next_due_ms(&self) -> Option<i64> {
        self.jobs
            .values()
            .filter(|j| j.ready)
            .filter_map(|j| j.coordinator.next_due_ms())
            .min()
    }

    /// Creates or updates the coordinator of a running job with checkpoints.
    fn follow(&mut self, r: &RunningJob<'_>, now: i64) -> Option<Vec<Action>> {
        let record = r.record;
        if let Some(job) = self.jobs.get_mut(&record.id) {
            job.taskmanagers = r.taskmanagers.clone();
            if job.attempt == record.attempt {
                return None;
            }
            let spec = eddy_sdk::spec::parse_json(&record.spec_json).ok()?;
            let topology = topology(&spec).ok()?;
            job.attempt = record.attempt;
            let restored = self.ctx.read(|s| {
                s.checkpoint_catalog(&record.id)
                    .and_then(|c| c.latest().cloned())
            });
            return Some(
                job.coordinator
                    .on_job_restarted(topology, restored.as_ref(), now),
            );
        }
        let spec = eddy_sdk::spec::parse_json(&record.spec_json).ok()?;
        let settings = match checkpoint_settings(&self.ctx.config, &spec) {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                warn!(job_id = %record.id, error = %e.message, "the job's checkpoint settings do not resolve");
                return None;
            }
        };
        let topology = topology(&spec).ok()?;
        let storage = match CheckpointStorage::open(&settings.storage, &[]) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                warn!(job_id = %record.id, error = %e, "cannot open the job's checkpoint storage");
                return None;
            }
        };
        let catalog = self.ctx.read(|s| s.checkpoint_catalog(&record.id).cloned());
        let coordinator =
            Coordinator::new(record.id.clone(), settings, topology, catalog.as_ref(), now);
        self.jobs.insert(
            record.id.clone(),
            JobCheckpoints {
                attempt: record.attempt,
                coordinator,
                max_parallelism: record.max_parallelism,
                storage,
                taskmanagers: r.taskmanagers.clone(),
                queued_ops: HashMap::new(),
                triggered_ops: HashMap::new(),
                notified_at_ms: now,
                sources_done_since_ms: None,
                ready: false,
            },
        );
        Some(Vec::new())
    }

    fn on_event(&mut self, event: Event, now: i64) -> Vec<(JobId, Action)> {
        match event {
            Event::Ack {
                job,
                attempt,
                subtask,
                checkpoint,
                snapshots,
                timings,
            } => match self.jobs.get_mut(&job) {
                Some(j) if j.attempt == attempt => j
                    .coordinator
                    .on_ack(checkpoint, subtask, snapshots, timings, now)
                    .into_iter()
                    .map(|a| (job.clone(), a))
                    .collect(),
                _ => Vec::new(),
            },
            Event::Decline {
                job,
                attempt,
                subtask,
                checkpoint,
                reason,
            } => match self.jobs.get_mut(&job) {
                Some(j) if j.attempt == attempt => j
                    .coordinator
                    .on_decline(checkpoint, subtask, &reason, now)
                    .into_iter()
                    .map(|a| (job.clone(), a))
                    .collect(),
                _ => Vec::new(),
            },
            Event::Savepoint {
                job,
                operation,
                target,
                stop,
            } => match self.jobs.get_mut(&job) {
                Some(j) => {
                    j.queued_ops.insert(target.clone(), (operation, stop));
                    j.coordinator
                        .trigger_savepoint(target, stop, now)
                        .into_iter()
                        .map(|a| (job.clone(), a))
                        .collect()
                }
                None => {
                    self.ctx.checkpoints.update_operation(&operation, |op| {
                        op.status = OperationStatus::Failed;
                        op.failure = Some(format!(
                            "job {job} is not running with checkpoints on this jobmanager"
                        ));
                    });
                    Vec::new()
                }
            },
        }
    }

    /// A `_metadata` write (or savepoint copy) finished: commit through Raft.
    async fn on_prepared(&mut self, p: Prepared) -> Vec<(JobId, Action)> {
        let now = now_ms();
        let Some(job) = self.jobs.get_mut(&p.job) else {
            return Vec::new();
        };
        let actions = match p.result {
            Ok(completed) => {
                let cmd = Command::CheckpointCompleted {
                    job: p.job.clone(),
                    checkpoint: completed.clone(),
                };
                match self.ctx.write(cmd).await {
                    Ok(()) => {
                        info!(
                            job_id = %p.job,
                            checkpoint_id = p.id.0,
                            state_bytes = completed.state_bytes(),
                            uploaded_bytes = completed.uploaded_bytes(),
                            savepoint = completed.savepoint_path.as_deref().unwrap_or(""),
                            "checkpoint completed"
                        );
                        let labels = vec![("job_id".to_string(), p.job.to_string())];
                        let m = &self.ctx.metrics;
                        let mut done = labels.clone();
                        done.push(("outcome".into(), "completed".into()));
                        m.checkpoints.get_or_create(&done).inc();
                        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                        m.last_checkpoint_duration_ms.get_or_create(&labels).set(
                            completed
                                .completed_time_ms
                                .saturating_sub(completed.trigger_time_ms),
                        );
                        m.last_checkpoint_size_bytes
                            .get_or_create(&labels)
                            .set(gauge(completed.state_bytes()));
                        m.last_checkpoint_uploaded_bytes
                            .get_or_create(&labels)
                            .set(gauge(completed.uploaded_bytes()));
                        if let Some((op, _)) = job.triggered_ops.get(&p.id) {
                            self.ctx.checkpoints.update_operation(op, |o| {
                                o.status = OperationStatus::Completed;
                                o.checkpoint_id = Some(p.id.0);
                            });
                        }
                        let job_final = job.is_final(completed.trigger_time_ms);
                        let actions = job.coordinator.on_committed(p.id, now);
                        if job_final {
                            // Stop triggering before this step's tick: a
                            // trigger sent now would race the final notice,
                            // and a source that saw it first would end with
                            // a barrier the sources that ended never join.
                            job.coordinator.final_checkpoint_committed();
                        }
                        actions
                    }
                    Err(WriteError::NotLeader { .. }) => {
                        job.coordinator.on_leadership_lost(p.id, now);
                        Vec::new()
                    }
                    Err(e) => job.coordinator.on_commit_failed(p.id, &e.to_string(), now),
                }
            }
            Err(reason) => job.coordinator.on_commit_failed(p.id, &reason, now),
        };
        actions.into_iter().map(|a| (p.job.clone(), a)).collect()
    }

    async fn execute(
        &mut self,
        job_id: &JobId,
        action: Action,
        failed: &mut Vec<(JobId, String)>,
    ) -> Vec<(JobId, Action)> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Vec::new();
        };
        match action {
            Action::ReserveIds { up_to } => {
                let cmd = Command::ReserveCheckpointIds {
                    job: job_id.clone(),
                    up_to,
                };
                match self.ctx.write(cmd).await {
                    Ok(()) => job.coordinator.on_ids_reserved(up_to),
                    Err(e) => {
                        warn!(job_id = %job_id, error = %e, "cannot reserve checkpoint ids");
                        job.coordinator.on_reserve_failed();
                    }
                }
                // The next tick triggers.
                Vec::new()
            }
            Action::Trigger {
                id,
                timestamp_ms,
                savepoint_path,
            } => {
                let kind = match savepoint_path
                    .as_ref()
                    .and_then(|p| job.queued_ops.remove(p))
                {
                    Some((op, stop)) => {
                        self.ctx
                            .checkpoints
                            .update_operation(&op, |o| o.checkpoint_id = Some(id.0));
                        job.triggered_ops.insert(id, (op, stop));
                        if stop {
                            pb::BarrierKind::StopWithSavepoint
                        } else {
                            pb::BarrierKind::Savepoint
                        }
                    }
                    None if savepoint_path.is_some() => pb::BarrierKind::Savepoint,
                    None => pb::BarrierKind::Checkpoint,
                };
                tracing::debug!(job_id = %job_id, checkpoint_id = id.0, ?kind, "triggering checkpoint");
                let request = pb::TriggerCheckpointRequest {
                    job_id: job_id.to_string(),
                    attempt: job.attempt.0,
                    checkpoint_id: id.0,
                    timestamp_ms,
                    kind: kind as i32,
                    leader_term: self.ctx.term(),
                };
                for (tm_id, addr) in job.taskmanagers.clone() {
                    let ctx = self.ctx.clone();
                    let request = request.clone();
                    tokio::spawn(async move {
                        let call = async {
                            let mut client = ctx.tm_client(&addr).map_err(|e| e.to_string())?;
                            client
                                .trigger_checkpoint(request)
                                .await
                                .map_err(|s| s.message().to_string())
                        };
                        match tokio::time::timeout(RPC_TIMEOUT, call).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => warn!(%tm_id, error = %e, "trigger not delivered"),
                            Err(_) => warn!(%tm_id, "trigger timed out"),
                        }
                    });
                }
                Vec::new()
            }
            Action::Commit(completed) => {
                let storage = job.storage.clone();
                let max_parallelism = job.max_parallelism;
                let tx = self.prepared_tx.clone();
                let job_id = job_id.clone();
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let id = completed.id;
                    let result = prepare_commit(&storage, &job_id, max_parallelism, completed)
                        .await
                        .map_err(|e| eddy_sdk::error::error_chain(&e).join(": "));
                    let _ = tx.send(Prepared {
                        job: job_id,
                        id,
                        result,
                    });
                    // The next step commits it through Raft: now, not at the
                    // next heartbeat tick.
                    ctx.wake.notify_one();
                });
                Vec::new()
            }
            Action::Abort { id, reason } => {
                let labels = vec![
                    ("job_id".to_string(), job_id.to_string()),
                    ("outcome".to_string(), "failed".to_string()),
                ];
                self.ctx.metrics.checkpoints.get_or_create(&labels).inc();
                if let Some((op, _)) = job.triggered_ops.remove(&id) {
                    self.ctx.checkpoints.update_operation(&op, |o| {
                        o.status = OperationStatus::Failed;
                        o.failure = Some(reason.clone());
                    });
                }
                self.notify(job_id, id, Some(reason));
                Vec::new()
            }
            Action::NotifyComplete { id } => {
                job.triggered_ops.remove(&id);
                job.notified_at_ms = now_ms();
                self.notify(job_id, id, None);
                Vec::new()
            }
            Action::Discard { ids } => {
                self.discard(job_id, ids).await;
                Vec::new()
            }
            Action::FailJob { reason } => {
                failed.push((job_id.clone(), reason));
                Vec::new()
            }
        }
    }

    /// Whether committed checkpoint `id` is the job's final one: triggered
    /// once every source had ended its input.
    fn is_job_final(&self, job_id: &JobId, id: CheckpointId) -> bool {
        let Some(job) = self.jobs.get(job_id) else {
            return false;
        };
        let triggered_ms = self.ctx.read(|s| {
            s.checkpoint_catalog(job_id)
                .and_then(|c| c.get(id))
                .map(|c| c.trigger_time_ms)
        });
        triggered_ms.is_some_and(|at| job.is_final(at))
    }

    /// Sends `NotifyCheckpointComplete` (no reason) or `AbortCheckpoint`.
    fn notify(&self, job_id: &JobId, id: CheckpointId, abort: Option<String>) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        let job_final = abort.is_none() && self.is_job_final(job_id, id);
        let notice = pb::CheckpointNotice {
            job_id: job_id.to_string(),
            attempt: job.attempt.0,
            checkpoint_id: id.0,
            leader_term: self.ctx.term(),
            reason: abort.clone().unwrap_or_default(),
            job_final,
        };
        for (tm_id, addr) in job.taskmanagers.clone() {
            let ctx = self.ctx.clone();
            let notice = notice.clone();
            let abort = abort.is_some();
            tokio::spawn(async move {
                let call = async {
                    let mut client = ctx.tm_client(&addr).map_err(|e| e.to_string())?;
                    let r = if abort {
                        client.abort_checkpoint(notice).await
                    } else {
                        client.notify_checkpoint_complete(notice).await
                    };
                    r.map_err(|s| s.message().to_string())
                };
                match tokio::time::timeout(RPC_TIMEOUT, call).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(%tm_id, error = %e, "checkpoint notice not delivered"),
                    Err(_) => warn!(%tm_id, "checkpoint notice timed out"),
                }
            });
        }
    }

    /// Drops checkpoints beyond the retained count: from the catalog through
    /// Raft, then their files (shared files only when no retained checkpoint
    /// references them).
    async fn discard(&self, job_id: &JobId, ids: Vec<CheckpointId>) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        let catalog = self.ctx.read(|s| s.checkpoint_catalog(job_id).cloned());
        let Some(catalog) = catalog else { return };
        let cmd = Command::CheckpointsDiscarded {
            job: job_id.clone(),
            ids: ids.clone(),
        };
        if let Err(e) = self.ctx.write(cmd).await {
            warn!(job_id = %job_id, error = %e, "cannot discard checkpoints");
            return;
        }
        let dropped: Vec<CompletedCheckpoint> = catalog
            .completed
            .iter()
            .filter(|c| ids.contains(&c.id))
            .cloned()
            .collect();
        let retained: Vec<CompletedCheckpoint> = catalog
            .completed
            .iter()
            .filter(|c| !ids.contains(&c.id))
            .cloned()
            .collect();
        let storage = job.storage.clone();
        let job_id = job_id.clone();
        tokio::spawn(async move {
            if let Err(e) = delete_checkpoints(&storage, &job_id, &dropped, &retained).await {
                warn!(job_id = %job_id, error = ?eddy_sdk::error::error_chain(&e), "cannot delete discarded checkpoints");
            }
        });
    }
}
