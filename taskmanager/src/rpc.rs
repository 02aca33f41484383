//! `TaskManagerService`: the JobManager's calls into this TaskManager. The
//! handlers only convert the request, call the deploy path and convert back.

use crate::deploy;
use crate::node::Node;
use eddy_proto::v1 as pb;
use eddy_sdk::ids::JobId;
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
}
