//! gRPC handlers of `eddy.v1.JobManagerService` (TaskManagers register,
//! heartbeat and report task status). Thin: convert the request, update the
//! registry, wake the job driver, answer.
//!
//! Only the leader accepts TaskManagers: a follower answers `UNAVAILABLE`
//! with the leader's rpc address in the message and in the
//! `eddy-leader-rpc-addr` metadata entry, so the TaskManager can go there.

pub mod convert;

use crate::checkpoint::{AckTimings, OperatorSnapshot, hub::Event};
use crate::context::Context;
use eddy_proto::v1 as pb;
use eddy_sdk::ids::NodeId;
use std::sync::Arc;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// Metadata key naming the leader's rpc address in `UNAVAILABLE` answers.
pub use eddy_sdk::server::rpc::LEADER_METADATA;

pub struct JobManagerRpc {
    ctx: Arc<Context>,
}

impl JobManagerRpc {
    pub fn new(ctx: Arc<Context>) -> Self {
        JobManagerRpc { ctx }
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.ctx.is_leader() {
            return Ok(());
        }
        let leader = self
            .ctx
            .leader_rpc_addr()
            .filter(|_| self.ctx.leader_id() != Some(self.ctx.id));
        let mut status = match &leader {
            Some(addr) => Status::unavailable(format!(
                "this jobmanager is not the leader; the leader is at {addr}"
            )),
            None => Status::unavailable(
                "this jobmanager is not the leader and no leader is known yet; retry",
            ),
        };
        if let Some(addr) = leader
            && let Ok(value) = addr.parse()
        {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        Err(status)
    }
}

#[tonic::async_trait]
impl pb::job_manager_service_server::JobManagerService for JobManagerRpc {
    #[tracing::instrument(skip_all, fields(tm_id = %request.get_ref().tm_id))]
    async fn register_task_manager(
        &self,
        request: Request<pb::RegisterTaskManagerRequest>,
    ) -> Result<Response<pb::RegisterTaskManagerResponse>, Status> {
        self.require_leader()?;
        let reg = convert::registration(request.get_ref())?;
        let term = self.ctx.term();
        tracing::info!(rpc_addr = %reg.rpc_addr, slots = reg.slots, tasks = reg.tasks.len(), term, "taskmanager registered");
        self.ctx.registry(|r| {
            r.begin_term(term);
            r.register(reg, Instant::now())
        });
        self.ctx.wake.notify_one();
        Ok(Response::new(pb::RegisterTaskManagerResponse {
            heartbeat_interval_ms: u64::try_from(self.ctx.config.heartbeat_interval.0.as_millis())
                .unwrap_or(u64::MAX),
            leader_term: term,
            jobmanagers: self.ctx.member_rpc_addrs(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.require_leader()?;
        let req = request.into_inner();
        let tm_id = convert::tm_id(&req.tm_id)?;
        let tasks = convert::task_statuses(&req.tasks)?;
        let ended = tasks.iter().any(|(_, s)| s.is_terminal());
        let term = self.ctx.term();
        let known = self.ctx.registry(|r| {
            r.begin_term(term);
            r.heartbeat(&tm_id, tasks, req.rss_bytes, Instant::now())
        });
        if !known {
            tracing::info!(%tm_id, "heartbeat from an unknown or lost taskmanager; it must register again");
        } else if ended {
            self.ctx.wake.notify_one();
        }
        Ok(Response::new(pb::HeartbeatResponse {
            known,
            leader_term: term,
            jobmanagers: self.ctx.member_rpc_addrs(),
        }))
    }

    async fn report_task_status(
        &self,
        request: Request<pb::ReportTaskStatusRequest>,
    ) -> Result<Response<pb::ReportTaskStatusResponse>, Status> {
        self.require_leader()?;
        let req = request.into_inner();
        let tm_id = convert::tm_id(&req.tm_id)?;
        let status = req
            .status
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("status is required"))?;
        let (key, status) = convert::task_status(status)?;
        tracing::debug!(%tm_id, job_id = %key.job_id, vertex = key.vertex.0, subtask = key.index.0, state = ?status.state, "task status");
        if !self.ctx.registry(|r| r.report(&tm_id, key, status)) {
            return Err(Status::failed_precondition(format!(
                "unknown taskmanager {tm_id}: register first"
            )));
        }
        self.ctx.wake.notify_one();
        Ok(Response::new(pb::ReportTaskStatusResponse {}))
    }

    async fn acknowledge_checkpoint(
        &self,
        request: Request<pb::AcknowledgeCheckpointRequest>,
    ) -> Result<Response<pb::AcknowledgeCheckpointResponse>, Status> {
        self.require_leader()?;
        let req = request.into_inner();
        let (job, attempt, subtask, checkpoint) =
            convert::checkpoint_subtask(req.subtask.as_ref(), req.checkpoint_id)?;
        let snapshots = req
            .snapshots
            .into_iter()
            .map(|s| OperatorSnapshot {
                node: NodeId(s.node_id),
                manifest_path: s.manifest_path,
                state_bytes: s.state_bytes,
                uploaded_bytes: s.uploaded_bytes,
            })
            .collect();
        tracing::debug!(job_id = %job, checkpoint_id = checkpoint.0, vertex = subtask.vertex.0, subtask = subtask.index.0, "checkpoint acknowledged");
        self.ctx.checkpoints.send(Event::Ack {
            job,
            attempt,
            subtask,
            checkpoint,
            snapshots,
            timings: AckTimings {
                alignment_ms: req.alignment_ms,
                sync_ms: req.sync_ms,
                async_ms: req.async_ms,
            },
        });
        self.ctx.wake.notify_one();
        Ok(Response::new(pb::AcknowledgeCheckpointResponse {}))
    }

    async fn decline_checkpoint(
        &self,
        request: Request<pb::DeclineCheckpointRequest>,
    ) -> Result<Response<pb::DeclineCheckpointResponse>, Status> {
        self.require_leader()?;
        let req = request.into_inner();
        let (job, attempt, subtask, checkpoint) =
            convert::checkpoint_subtask(req.subtask.as_ref(), req.checkpoint_id)?;
        tracing::info!(job_id = %job, checkpoint_id = checkpoint.0, vertex = subtask.vertex.0, subtask = subtask.index.0, reason = %req.reason, "checkpoint declined");
        self.ctx.checkpoints.send(Event::Decline {
            job,
            attempt,
            subtask,
            checkpoint,
            reason: req.reason,
        });
        self.ctx.wake.notify_one();
        Ok(Response::new(pb::DeclineCheckpointResponse {}))
    }
}
