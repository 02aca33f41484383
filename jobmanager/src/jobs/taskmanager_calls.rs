//! The leader's calls to TaskManagers: `DeployTasks` and `CancelJob`.
//!
//! Deploys go to every involved TaskManager at once and fail as a whole if
//! any one fails; cancels are best effort (a TaskManager that cannot be
//! reached is either gone or will be told again when it reports the job's
//! tasks).

use crate::cluster_state::Placement;
use crate::context::Context;
use eddy_proto::v1 as pb;
use eddy_sdk::ids::{Attempt, JobId, TaskManagerId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one `DeployTasks` or `CancelJob` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("taskmanager {tm_id} is not registered")]
    Gone { tm_id: TaskManagerId },
    #[error("cannot reach taskmanager {tm_id}")]
    Address {
        tm_id: TaskManagerId,
        #[source]
        source: eddy_sdk::server::rpc::AddrError,
    },
    #[error("deploying to taskmanager {tm_id} at {addr} failed")]
    Rpc {
        tm_id: TaskManagerId,
        addr: String,
        #[source]
        source: tonic::Status,
    },
    #[error("deploying to taskmanager {tm_id} at {addr} timed out after {}s", CALL_TIMEOUT.as_secs())]
    Timeout { tm_id: TaskManagerId, addr: String },
}

/// What to deploy.
pub struct DeployRequest<'a> {
    pub job_id: &'a JobId,
    pub attempt: Attempt,
    pub spec_json: &'a str,
    pub placements: &'a [Placement],
    /// Set when the job takes checkpoints.
    pub checkpointing: Option<pb::CheckpointConfig>,
    /// Set when the attempt restores state.
    pub restore: Option<pb::RestoreFrom>,
}

/// Sends each involved TaskManager its subtasks of `attempt`, with the
/// placement of every subtask so exchanges find their peers.
pub async fn deploy(ctx: &Context, request: DeployRequest<'_>) -> Result<(), Error> {
    let DeployRequest {
        job_id,
        attempt,
        spec_json,
        placements,
        checkpointing,
        restore,
    } = request;
    let leader_term = ctx.term();
    let addrs: BTreeMap<TaskManagerId, String> = ctx.registry(|r| {
        placements
            .iter()
            .map(|p| {
                let tm = r.alive_tm(&p.tm_id).ok_or_else(|| Error::Gone {
                    tm_id: p.tm_id.clone(),
                })?;
                Ok((p.tm_id.clone(), tm.rpc_addr.clone()))
            })
            .collect::<Result<_, Error>>()
    })?;
    let to_pb = |p: &Placement| pb::SubtaskPlacement {
        vertex: p.vertex.0,
        index: p.index.0,
        tm_id: p.tm_id.to_string(),
        rpc_addr: addrs.get(&p.tm_id).cloned().unwrap_or_default(),
        slot: p.slot.0,
    };
    let all: Vec<pb::SubtaskPlacement> = placements.iter().map(to_pb).collect();
    let calls = addrs.iter().map(|(tm_id, addr)| {
        let request = pb::DeployTasksRequest {
            job_id: job_id.to_string(),
            spec_json: spec_json.to_string(),
            attempt: attempt.0,
            placements: all.clone(),
            deploy: placements
                .iter()
                .filter(|p| &p.tm_id == tm_id)
                .map(to_pb)
                .collect(),
            leader_term,
            checkpointing: checkpointing.clone(),
            restore: restore.clone(),
        };
        async move {
            let mut client = ctx.tm_client(addr).map_err(|source| Error::Address {
                tm_id: tm_id.clone(),
                source,
            })?;
            match tokio::time::timeout(CALL_TIMEOUT, client.deploy_tasks(request)).await {
                Err(_) => Err(Error::Timeout {
                    tm_id: tm_id.clone(),
                    addr: addr.clone(),
                }),
                Ok(Err(source)) => Err(Error::Rpc {
                    tm_id: tm_id.clone(),
                    addr: addr.clone(),
                    source,
                }),
                Ok(Ok(_)) => {
                    tracing::debug!(job_id = %job_id, tm_id = %tm_id, "tasks deployed");
                    Ok(())
                }
            }
        }
    });
    for result in futures::future::join_all(calls).await {
        result?;
    }
    Ok(())
}

/// Tells each of `tms` (their rpc addresses) to cancel the job's tasks, in
/// the background.
pub fn cancel_job(ctx: &Arc<Context>, job_id: &JobId, tms: Vec<(TaskManagerId, String)>) {
    let leader_term = ctx.term();
    for (tm_id, addr) in tms {
        let ctx = ctx.clone();
        let job_id = job_id.clone();
        tokio::spawn(async move {
            let mut client = match ctx.tm_client(&addr) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%job_id, %tm_id, error = %e, "cannot cancel job on taskmanager: bad address");
                    return;
                }
            };
            let request = pb::CancelJobRequest {
                job_id: job_id.to_string(),
                leader_term,
            };
            match tokio::time::timeout(CALL_TIMEOUT, client.cancel_job(request)).await {
                Ok(Ok(_)) => tracing::debug!(%job_id, %tm_id, "cancel sent"),
                Ok(Err(status)) => {
                    tracing::warn!(%job_id, %tm_id, code = ?status.code(), message = status.message(), "cancel failed")
                }
                Err(_) => tracing::warn!(%job_id, %tm_id, "cancel timed out"),
            }
        });
    }
}
