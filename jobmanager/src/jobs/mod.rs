//! Job operations: submission and cancellation (called by REST), the calls
//! the leader makes to TaskManagers, and the driver that moves jobs through
//! their lifecycle.

pub mod driver;
pub mod taskmanager_calls;

use crate::cluster_state::{Command, RejectionKind, RestoreSource};
use crate::context::{Context, WriteError, now_ms};
use crate::scheduler;
use eddy_sdk::ids::JobId;
use eddy_sdk::spec::JobSpec;
use eddy_sdk::{ApiError, ErrorCode};

/// Validates and submits a job; it is CREATED and waits for slots. With
/// `restore_from`, its state starts from that savepoint (validated by the
/// caller against the spec).
#[tracing::instrument(skip_all, fields(job_name = %spec.name))]
pub async fn submit(
    ctx: &Context,
    spec: JobSpec,
    restore_from: Option<RestoreSource>,
) -> Result<JobId, ApiError> {
    if !ctx.is_leader() {
        return Err(ctx.not_leader().to_api());
    }
    let total_slots = ctx.registry(|r| r.total_slots());
    let graph = scheduler::validate(&spec, Some(total_slots))?;
    // Settings that only resolve with the cluster's defaults (a checkpoint
    // storage) are checked now, not when the job first deploys.
    crate::checkpoint::service::checkpoint_settings(&ctx.config, &spec)?;
    crate::checkpoint::service::restart_settings(&ctx.config, &spec)?;
    let slots = graph.slots_needed();
    if slots > total_slots {
        return Err(ApiError::new(
            ErrorCode::InsufficientSlots,
            format!("the job needs {slots} slots but the cluster has {total_slots}"),
        )
        .with_field("parallelism"));
    }
    let spec_json = spec.to_json();
    // A generated id can collide only with a job submitted in the same
    // millisecond with the same sequence number; Raft refuses the duplicate
    // and the next sequence number differs.
    for _ in 0..3 {
        let time_ms = now_ms();
        let seq = ctx.next_seq() ^ (ctx.read(|s| s.jobs.len() as u64) << 32);
        let id = JobId::generate(seq, time_ms);
        let cmd = Command::SubmitJob {
            id: id.clone(),
            name: spec.name.clone(),
            spec_json: spec_json.clone(),
            parallelism: slots,
            max_parallelism: spec.max_parallelism,
            time_ms,
            restore_from: restore_from.clone(),
        };
        match ctx.write(cmd).await {
            Ok(()) => {
                tracing::info!(job_id = %id, slots, "job submitted");
                ctx.wake.notify_one();
                return Ok(id);
            }
            Err(WriteError::Rejected(r)) if r.kind == RejectionKind::Conflict => continue,
            Err(e) => return Err(e.to_api()),
        }
    }
    Err(ApiError::new(
        ErrorCode::Internal,
        "could not allocate a unique job id; retry",
    ))
}

/// Requests cancellation of a job.
#[tracing::instrument(skip_all, fields(job_id = %id))]
pub async fn cancel(ctx: &Context, id: &JobId) -> Result<(), ApiError> {
    if !ctx.is_leader() {
        return Err(ctx.not_leader().to_api());
    }
    let state = ctx.read(|s| s.job(id).map(|j| j.state));
    match state {
        None => return Err(ApiError::new(ErrorCode::NotFound, format!("no job {id}"))),
        Some(state) if state.is_terminal() => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("job {id} is already {state}"),
            ));
        }
        Some(_) => {}
    }
    ctx.write(Command::CancelJob {
        id: id.clone(),
        time_ms: now_ms(),
    })
    .await
    .map_err(|e| e.to_api())?;
    tracing::info!("job cancel requested");
    ctx.wake.notify_one();
    Ok(())
}
