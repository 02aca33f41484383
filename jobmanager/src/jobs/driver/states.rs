//! The per-state handling of the job driver: CREATED jobs are scheduled and
//! deployed, RUNNING jobs finish or fail from their subtasks' statuses, and
//! CANCELLING jobs end CANCELED once their tasks stopped (or the heartbeat
//! timeout passed).

use super::{Driver, Presence, infrastructure};
use crate::checkpoint::service;
use crate::cluster_state::{Command, Failure, JobRecord, Placement};
use crate::context::now_ms;
use crate::jobs::taskmanager_calls::{self, cancel_job};
use crate::scheduler::{self, Capacity};
use eddy_proto::v1 as pb;
use eddy_sdk::FailureClass;
use eddy_sdk::ids::Attempt;
use eddy_sdk::rest::{JobState, TaskState};
use std::collections::BTreeSet;
use tokio::time::Instant;
use tracing::{info, warn};

impl Driver {
    pub(super) async fn drive_created(
        &mut self,
        job: &JobRecord,
        capacity: &mut Option<Vec<Capacity>>,
    ) {
        if !job.placements.is_empty() {
            self.recover_interrupted_deploy(job).await;
            return;
        }
        let vertices = match scheduler::vertices(&job.spec_json) {
            Ok(v) => v,
            Err(e) => {
                let failure = Failure {
                    class: FailureClass::UserCode,
                    message: format!("the stored job spec is invalid: {}", e.message),
                    chain: vec![e.message.clone()],
                    taskmanager: None,
                    vertex: None,
                    time_ms: now_ms(),
                };
                self.fail_job(job, failure).await;
                return;
            }
        };
        let ctx = &self.ctx;
        let cap = capacity
            .get_or_insert_with(|| ctx.read(|s| ctx.registry(|r| scheduler::capacity(s, r))));
        match scheduler::solve(cap, &vertices) {
            Ok(placements) => {
                for p in &placements {
                    if let Some(c) = cap.iter_mut().find(|c| c.tm_id == p.tm_id) {
                        c.used.insert(p.slot);
                    }
                }
                let attempt = job.attempt;
                let cmd = Command::JobScheduled {
                    id: job.id.clone(),
                    attempt,
                    placements: placements.clone(),
                    time_ms: now_ms(),
                };
                if let Err(e) = self.ctx.write(cmd).await {
                    warn!(job_id = %job.id, error = %e, "cannot commit the job's placements");
                    return;
                }
                let tms: Vec<String> = placements
                    .iter()
                    .map(|p| p.tm_id.to_string())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                info!(job_id = %job.id, attempt = attempt.0, ?tms, "job scheduled");
                self.deploy(job, attempt, &placements).await;
            }
            Err(shortage) => {
                let message = shortage.to_string();
                if job.status_message.as_deref() != Some(message.as_str()) {
                    info!(job_id = %job.id, needed = shortage.needed, free = shortage.free, "job waiting for slots");
                    let cmd = Command::SetStatusMessage {
                        id: job.id.clone(),
                        message: Some(message),
                    };
                    if let Err(e) = self.ctx.write(cmd).await {
                        warn!(job_id = %job.id, error = %e, "cannot record why the job waits");
                    }
                }
            }
        }
    }

    pub(super) async fn deploy(
        &mut self,
        job: &JobRecord,
        attempt: Attempt,
        placements: &[Placement],
    ) {
        let (checkpointing, restore) = match self.checkpoint_plan(job) {
            Ok(plan) => plan,
            Err(message) => {
                let failure = Failure {
                    class: FailureClass::UserCode,
                    chain: vec![message.clone()],
                    message,
                    taskmanager: None,
                    vertex: None,
                    time_ms: now_ms(),
                };
                let mut job = job.clone();
                job.attempt = attempt;
                job.placements = placements.to_vec();
                self.fail_job(&job, failure).await;
                return;
            }
        };
        if let Some(r) = &restore {
            info!(job_id = %job.id, attempt = attempt.0, checkpoint_id = r.checkpoint_id, storage = %r.storage, "restoring from checkpoint");
        }
        let request = taskmanager_calls::DeployRequest {
            job_id: &job.id,
            attempt,
            spec_json: &job.spec_json,
            placements,
            checkpointing,
            restore,
        };
        match taskmanager_calls::deploy(&self.ctx, request).await {
            Ok(()) => {
                let cmd = Command::JobStateChanged {
                    id: job.id.clone(),
                    attempt: Some(attempt),
                    state: JobState::Running,
                    time_ms: now_ms(),
                    message: None,
                    failure: None,
                    final_tasks: Vec::new(),
                };
                match self.ctx.write(cmd).await {
                    Ok(()) => info!(job_id = %job.id, attempt = attempt.0, "job running"),
                    Err(e) => {
                        warn!(job_id = %job.id, error = %e, "cannot record the job as running")
                    }
                }
            }
            Err(e) => {
                let chain = eddy_sdk::error::error_chain(&e);
                let tm = match &e {
                    taskmanager_calls::Error::Gone { tm_id }
                    | taskmanager_calls::Error::Address { tm_id, .. }
                    | taskmanager_calls::Error::Rpc { tm_id, .. }
                    | taskmanager_calls::Error::Timeout { tm_id, .. } => tm_id.clone(),
                };
                let mut job = job.clone();
                job.attempt = attempt;
                job.placements = placements.to_vec();
                let failure = Failure {
                    class: FailureClass::Infrastructure,
                    message: chain.join(": "),
                    chain,
                    taskmanager: Some(tm),
                    vertex: None,
                    time_ms: now_ms(),
                };
                self.fail_job(&job, failure).await;
            }
        }
    }

    /// A CREATED job with placements was scheduled by an earlier leader that
    /// stopped before recording the deploy's outcome. If its tasks are
    /// running, the deploy happened; if they do not show up within the
    /// heartbeat timeout, the job fails.
    pub(super) async fn recover_interrupted_deploy(&mut self, job: &JobRecord) {
        let presence = self.presence(job);
        let all_up = presence.iter().all(|(_, p)| {
            matches!(p, Presence::Reported(s) if matches!(s.state, TaskState::Deploying | TaskState::Running | TaskState::Finished))
        });
        if all_up {
            let cmd = Command::JobStateChanged {
                id: job.id.clone(),
                attempt: Some(job.attempt),
                state: JobState::Running,
                time_ms: now_ms(),
                message: None,
                failure: None,
                final_tasks: Vec::new(),
            };
            match self.ctx.write(cmd).await {
                Ok(()) => {
                    info!(job_id = %job.id, "job's tasks found running after a leader change")
                }
                Err(e) => warn!(job_id = %job.id, error = %e, "cannot record the job as running"),
            }
        } else if self.leadership_since().elapsed() > self.timeout() {
            let message = format!(
                "deployment of attempt {} was interrupted by a jobmanager leader change and its tasks did not come up",
                job.attempt.0
            );
            self.fail_job(job, infrastructure(message, None)).await;
        }
    }

    /// The checkpoint configuration of a deploy, and what the attempt
    /// restores from: the newest completed checkpoint or savepoint of the
    /// catalog, else the savepoint the job was submitted with.
    fn checkpoint_plan(
        &self,
        job: &JobRecord,
    ) -> Result<(Option<pb::CheckpointConfig>, Option<pb::RestoreFrom>), String> {
        let spec = eddy_sdk::spec::parse_json(&job.spec_json)
            .map_err(|e| format!("the stored job spec is invalid: {}", e.message))?;
        let Some(settings) = service::checkpoint_settings(&self.ctx.config, &spec)
            .map_err(|e| format!("the job's checkpoint settings are invalid: {}", e.message))?
        else {
            return Ok((None, None));
        };
        let latest = self.ctx.read(|s| {
            s.checkpoint_catalog(&job.id)
                .and_then(|c| c.latest().cloned())
        });
        let restore = match (latest, &job.restore_from) {
            (Some(c), _) => Some(pb::RestoreFrom {
                checkpoint_id: c.id.0,
                snapshots: c
                    .snapshots
                    .iter()
                    .map(|s| pb::RestoredSnapshot {
                        node_id: s.node.to_string(),
                        manifest_path: s.manifest_path.clone(),
                    })
                    .collect(),
                storage: c.storage_root.clone(),
            }),
            (None, Some(r)) => Some(pb::RestoreFrom {
                checkpoint_id: r.checkpoint.0,
                snapshots: r
                    .snapshots
                    .iter()
                    .map(|(node, path)| pb::RestoredSnapshot {
                        node_id: node.to_string(),
                        manifest_path: path.clone(),
                    })
                    .collect(),
                storage: r.location.clone(),
            }),
            (None, None) => None,
        };
        Ok((Some(service::deploy_config(&settings)), restore))
    }

    /// RESTARTING: once the backoff is over, the job is CREATED again and
    /// scheduled like a new one (its tasks restore the latest checkpoint).
    pub(super) async fn drive_restarting(&mut self, job: &JobRecord) {
        if job.restart_at_ms.is_some_and(|at| now_ms() < at) {
            return;
        }
        let cmd = Command::JobStateChanged {
            id: job.id.clone(),
            attempt: Some(job.attempt),
            state: JobState::Created,
            time_ms: now_ms(),
            message: Some("restarting: waiting for slots".into()),
            failure: None,
            final_tasks: Vec::new(),
        };
        match self.ctx.write(cmd).await {
            Ok(()) => info!(job_id = %job.id, attempt = job.attempt.0, "job restarting"),
            Err(e) => warn!(job_id = %job.id, error = %e, "cannot restart the job"),
        }
    }

    pub(super) async fn drive_running(&mut self, job: &JobRecord) {
        let presence = self.presence(job);
        if let Some((p, status)) = presence.iter().find_map(|(p, s)| match s {
            Presence::Reported(st) if st.state == TaskState::Failed => Some((p, st)),
            _ => None,
        }) {
            let chain = if status.failure_chain.is_empty() {
                vec![format!(
                    "subtask {}/{} failed on taskmanager {}",
                    p.vertex, p.index, p.tm_id
                )]
            } else {
                status.failure_chain.clone()
            };
            let failure = Failure {
                class: status.failure_class.unwrap_or(FailureClass::UserCode),
                message: chain[0].clone(),
                chain,
                taskmanager: Some(p.tm_id.clone()),
                vertex: Some(p.vertex),
                time_ms: now_ms(),
            };
            let damaged = status.damaged_checkpoint;
            self.fail_job_with(job, failure, damaged).await;
            return;
        }
        let all_finished = presence
            .iter()
            .all(|(_, s)| matches!(s, Presence::Reported(st) if st.state == TaskState::Finished));
        if all_finished {
            let cmd = Command::JobStateChanged {
                id: job.id.clone(),
                attempt: Some(job.attempt),
                state: JobState::Finished,
                time_ms: now_ms(),
                message: None,
                failure: None,
                final_tasks: self.final_tasks(job),
            };
            match self.ctx.write(cmd).await {
                Ok(()) => info!(job_id = %job.id, "job finished"),
                Err(e) => warn!(job_id = %job.id, error = %e, "cannot record the job as finished"),
            }
            return;
        }
        let grace_over = self.leadership_since().elapsed() > self.timeout();
        for (p, s) in &presence {
            let message = match s {
                Presence::Unregistered if grace_over => {
                    format!("taskmanager {} did not re-register", p.tm_id)
                }
                Presence::Lost => format!("taskmanager {} lost: no heartbeat", p.tm_id),
                Presence::Reported(st) if st.state == TaskState::Canceled => {
                    format!(
                        "subtask {}/{} was canceled on taskmanager {} while the job was running",
                        p.vertex, p.index, p.tm_id
                    )
                }
                _ => continue,
            };
            self.fail_job(job, infrastructure(message, Some(p.tm_id.clone())))
                .await;
            return;
        }
        let missing = presence
            .iter()
            .find(|(_, s)| matches!(s, Presence::Missing));
        let timeout = self.timeout();
        let Some(l) = self.leadership.as_mut() else {
            return;
        };
        match missing {
            None => {
                l.missing_since.remove(&job.id);
            }
            Some((p, _)) => {
                let since = *l
                    .missing_since
                    .entry(job.id.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() > timeout {
                    let message = format!(
                        "subtask {}/{} of attempt {} is not running on taskmanager {}",
                        p.vertex, p.index, job.attempt.0, p.tm_id
                    );
                    let tm = p.tm_id.clone();
                    self.fail_job(job, infrastructure(message, Some(tm))).await;
                }
            }
        }
    }

    pub(super) async fn drive_cancelling(&mut self, job: &JobRecord) {
        let Some(l) = self.leadership.as_mut() else {
            return;
        };
        let sent = match l.cancel_sent.get(&job.id) {
            Some(at) => *at,
            None => {
                let now = Instant::now();
                l.cancel_sent.insert(job.id.clone(), now);
                let tms = self.alive_addresses(job);
                info!(job_id = %job.id, tms = tms.len(), "cancelling job's tasks");
                cancel_job(&self.ctx, &job.id, tms);
                now
            }
        };
        let presence = self.presence(job);
        let stopped = presence.iter().all(|(_, s)| match s {
            Presence::Unregistered | Presence::Lost | Presence::Missing => true,
            Presence::Reported(st) => st.is_terminal(),
        });
        let timed_out = sent.elapsed() > self.timeout();
        if !stopped && !timed_out {
            return;
        }
        if !stopped {
            warn!(job_id = %job.id, "tasks did not confirm the cancel within the heartbeat timeout; marking the job canceled");
        }
        let cmd = Command::JobStateChanged {
            id: job.id.clone(),
            attempt: None,
            state: JobState::Canceled,
            time_ms: now_ms(),
            message: None,
            failure: None,
            final_tasks: self.final_tasks(job),
        };
        match self.ctx.write(cmd).await {
            Ok(()) => info!(job_id = %job.id, "job canceled"),
            Err(e) => warn!(job_id = %job.id, error = %e, "cannot record the job as canceled"),
        }
    }
}
