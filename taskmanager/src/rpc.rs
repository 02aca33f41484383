//! `TaskManagerService`: the JobManager's calls into this TaskManager. The
//! handlers only convert the request, call the deploy path and convert back.

use crate::deploy;
use crate::node::Node;
use crate::runtime::checkpoint::Command;
use eddy_proto::v1 as pb;
use eddy_sdk::ids::{Attempt, CheckpointId, JobId};
use eddy_sdk::operator::{Barrier, BarrierKind};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct TaskManagerRpc {
    node: Arc<Node>,
}

impl TaskManagerRpc {
    pub fn new(node: Arc<Node>) -> Self {
        TaskManagerRpc { node }
    }

    pub fn into_service(self) -> pb::task_manager_service_server::TaskManagerServiceServer<Self> {
        pb::task_manager_service_server::TaskManagerServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::task_manager_service_server::TaskManagerService for TaskManagerRpc {
    #[tracing::instrument(skip_all, fields(job_id = %request.get_ref().job_id, attempt = request.get_ref().attempt, term = request.get_ref().leader_term))]
    async fn deploy_tasks(
        &self,
        request: Request<pb::DeployTasksRequest>,
    ) -> Result<Response<pb::DeployTasksResponse>, Status> {
        match self.node.deploy(request.into_inner()) {
            Ok(_) => Ok(Response::new(pb::DeployTasksResponse {})),
            Err(e @ deploy::Error::StaleTerm(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ deploy::Error::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
        }
    }

    #[tracing::instrument(skip_all, fields(job_id = %request.get_ref().job_id, term = request.get_ref().leader_term))]
    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let req = request.into_inner();
        self.node
            .cancel_job(&JobId(req.job_id), req.leader_term)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    #[tracing::instrument(skip_all, fields(job_id = %request.get_ref().job_id, attempt = request.get_ref().attempt, checkpoint_id = request.get_ref().checkpoint_id))]
    async fn trigger_checkpoint(
        &self,
        request: Request<pb::TriggerCheckpointRequest>,
    ) -> Result<Response<pb::TriggerCheckpointResponse>, Status> {
        let req = request.into_inner();
        self.observe(req.leader_term, "trigger_checkpoint")?;
        let kind = match pb::BarrierKind::try_from(req.kind) {
            Ok(pb::BarrierKind::Checkpoint) => BarrierKind::Checkpoint,
            Ok(pb::BarrierKind::Savepoint) => BarrierKind::Savepoint,
            Ok(pb::BarrierKind::StopWithSavepoint) => BarrierKind::StopWithSavepoint,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown barrier kind {}",
                    req.kind
                )));
            }
        };
        let barrier = Barrier {
            checkpoint: CheckpointId(req.checkpoint_id),
            timestamp_ms: req.timestamp_ms,
            kind,
        };
        let sources = self.node.tasks.command(
            &JobId(req.job_id),
            Attempt(req.attempt),
            &Command::Trigger(barrier),
            true,
        );
        Ok(Response::new(pb::TriggerCheckpointResponse {
            sources: u32::try_from(sources).unwrap_or(u32::MAX),
        }))
    }

    #[tracing::instrument(skip_all, fields(job_id = %request.get_ref().job_id, checkpoint_id = request.get_ref().checkpoint_id))]
    async fn notify_checkpoint_complete(
        &self,
        request: Request<pb::CheckpointNotice>,
    ) -> Result<Response<pb::CheckpointNoticeResponse>, Status> {
        let req = request.into_inner();
        self.observe(req.leader_term, "notify_checkpoint_complete")?;
        let cmd = Command::Complete {
            id: CheckpointId(req.checkpoint_id),
            job_final: req.job_final,
        };
        self.node
            .tasks
            .command(&JobId(req.job_id), Attempt(req.attempt), &cmd, false);
        Ok(Response::new(pb::CheckpointNoticeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(job_id = %request.get_ref().job_id, checkpoint_id = request.get_ref().checkpoint_id))]
    async fn abort_checkpoint(
        &self,
        request: Request<pb::CheckpointNotice>,
    ) -> Result<Response<pb::CheckpointNoticeResponse>, Status> {
        let req = request.into_inner();
        self.observe(req.leader_term, "abort_checkpoint")?;
        tracing::info!(reason = %req.reason, "checkpoint aborted");
        let cmd = Command::Abort(CheckpointId(req.checkpoint_id));
        self.node
            .tasks
            .command(&JobId(req.job_id), Attempt(req.attempt), &cmd, false);
        Ok(Response::new(pb::CheckpointNoticeResponse {}))
    }
}

impl TaskManagerRpc {
    fn observe(&self, term: u64, command: &'static str) -> Result<(), Status> {
        self.node
            .accept_command(term, command)
            .map_err(|e| Status::failed_precondition(e.to_string()))
    }
}
