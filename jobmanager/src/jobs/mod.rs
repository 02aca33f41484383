//! Job operations: submission and cancellation (called by REST), the calls
//! the leader makes to TaskManagers, and the driver that moves jobs through
//! their lifecycle.

pub mod driver;
pub mod taskmanager_calls;

use crate::cluster_state::{Command, RejectionKind};
use crate::context::{Context, WriteError, now_ms};
use crate::scheduler;
use eddy_sdk::ids::JobId;
use eddy_sdk::spec::JobSpec;
use eddy_sdk::{ApiError, ErrorCode};

/// Validates and submits a job; it is CREATED and waits for slots.
#[tracing::instrument(skip_all, fields(job_name = %spec.name))]
/// The `checkpoint` and `restart` sections are parsed and validated, but
/// the engine does not take checkpoints or restart jobs yet (issue 6). A job
/// that asks for them is refused rather than run without the guarantees it
/// asked for.
fn refuse_unwired_sections(spec: &JobSpec) -> Result<(), ApiError> {
    let asked = [
        (spec.checkpoint.is_some(), "checkpoint", "take checkpoints"),
        (spec.restart.is_some(), "restart", "restart failed jobs"),
    ];
    match asked.into_iter().find(|(present, ..)| *present) {
        Some((_, field, what)) => Err(ApiError::new(
            ErrorCode::InvalidSpec,
            format!(
                "this version of Eddy does not {what} yet: a job fails on its first task failure; \
                 remove the `{field}` section"
            ),
        )
        .with_field(field)),
        None => Ok(()),
    }
}

pub async fn submit(ctx: &Context, spec: JobSpec) -> Result<JobId, ApiError> {
    if !ctx.is_leader() {
        return Err(ctx.not_leader().to_api());
    }
    let total_slots = ctx.registry(|r| r.total_slots());
    let graph = scheduler::validate(&spec, Some(total_slots))?;
    refuse_unwired_sections(&spec)?;
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
