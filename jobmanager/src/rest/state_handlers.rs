//! The routes about a job's state: checkpoint statistics, the exception
//! history, savepoints (with or without stopping the job), and resolving a
//! `restore_from` location for a submission.

use super::{RestError, checkpoint_views, views::rfc3339};
use crate::checkpoint::hub::{self, Operation};
use crate::cluster_state::{ExceptionRecord, FailureAction, JobRecord, RestoreSource};
use crate::context::{Context, now_ms};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use eddy_sdk::ids::{JobId, NodeId};
use eddy_sdk::rest::{
    ExceptionInfo, ExceptionList, JobState, OperationAccepted, OperationStatus, SavepointOperation,
    SavepointRequest, StopRequest,
};
use eddy_sdk::spec::{JobSpec, StateBackendKind};
use eddy_sdk::storage::CheckpointStorage;
use eddy_sdk::storage::manifest::BackendKind;
use eddy_sdk::{ApiError, ErrorCode};
use std::sync::Arc;

type Ctx = State<Arc<Context>>;

fn no_job(id: &JobId) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no job {id}"))
}

pub async fn checkpoints(
    State(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, RestError> {
    let id = JobId::from(id);
    let stats = ctx.checkpoints.stats(&id);
    let view = ctx.read(|s| {
        s.job(&id)
            .map(|_| checkpoint_views::checkpoints(s.checkpoint_catalog(&id), stats.as_ref()))
    });
    Ok(Json(view.ok_or_else(|| no_job(&id))?))
}

fn exception(e: &ExceptionRecord) -> ExceptionInfo {
    let (action, backoff_ms, restore_checkpoint) = match &e.action {
        FailureAction::Restart {
            backoff_ms,
            restore_checkpoint,
        } => ("restart", Some(*backoff_ms), *restore_checkpoint),
        FailureAction::Fail => ("fail", None, None),
    };
    ExceptionInfo {
        time: rfc3339(e.failure.time_ms),
        class: e.failure.class.as_str().to_string(),
        message: e.failure.message.clone(),
        chain: e.failure.chain.clone(),
        taskmanager: e.failure.taskmanager.as_ref().map(ToString::to_string),
        vertex: e.failure.vertex.map(|v| v.0),
        attempt: e.attempt.0,
        action: action.to_string(),
        backoff_ms,
        restore_checkpoint,
        damaged_checkpoint: e.damaged_checkpoint,
    }
}

pub async fn exceptions(
    State(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, RestError> {
    let id = JobId::from(id);
    let list = ctx.read(|s| {
        s.job(&id).map(|job| ExceptionList {
            exceptions: job.exceptions.iter().rev().map(exception).collect(),
        })
    });
    Ok(Json(list.ok_or_else(|| no_job(&id))?))
}

/// Parses an optional JSON body (empty means the defaults).
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the request body is not valid: {e}"),
        )
    })
}

/// The savepoint directory for a request: `<target>/savepoint-<job>-<n>`,
/// the target defaulting to `<the job's checkpoint storage>/savepoints`.
fn savepoint_dir(
    ctx: &Context,
    job: &JobRecord,
    target: Option<String>,
) -> Result<String, ApiError> {
    let spec = eddy_sdk::spec::parse_json(&job.spec_json)?;
    let settings = crate::checkpoint::service::checkpoint_settings(&ctx.config, &spec)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "job {} takes no checkpoints (no `checkpoint` section): it has no state to save",
                    job.id
                ),
            )
        })?;
    let parent = match target {
        Some(t) if t.trim().is_empty() => {
            return Err(
                ApiError::new(ErrorCode::BadRequest, "target_directory must not be empty")
                    .with_field("target_directory"),
            );
        }
        Some(t) => t,
        None => format!("{}/savepoints", settings.storage.trim_end_matches('/')),
    };
    if job.state != JobState::Running {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "job {} is {}: a savepoint needs a RUNNING job",
                job.id,
                job.state.as_str()
            ),
        ));
    }

    Ok(format!(
        "{}/savepoint-{}-{}-{}",
        parent.trim_end_matches('/'),
        job.id,
        now_ms(),
        ctx.next_seq()
    ))
}

fn request(
    ctx: &Context,
    id: &JobId,
    target: Option<String>,
    stop: bool,
) -> Result<(StatusCode, Json<OperationAccepted>), RestError> {
    if !ctx.is_leader() {
        return Err(ctx.not_leader().to_api().into());
    }
    let dir = ctx.read(|s| {
        s.job(id)
            .ok_or_else(|| no_job(id))
            .and_then(|job| savepoint_dir(ctx, job, target))
    })?;
    let request_id = ctx.checkpoints.request_savepoint(id, dir, stop);
    Ok((StatusCode::ACCEPTED, Json(OperationAccepted { request_id })))
}

pub async fn trigger_savepoint(
    State(ctx): Ctx,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<impl IntoResponse, RestError> {
    let req: SavepointRequest = body(&bytes)?;
    request(&ctx, &JobId::from(id), req.target_directory, false)
}

pub async fn stop_job(
    State(ctx): Ctx,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<impl IntoResponse, RestError> {
    let req: StopRequest = body(&bytes)?;
    if !req.savepoint {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "stop needs `savepoint: true`; to stop a job without a savepoint, cancel it",
        )
        .with_field("savepoint")
        .into());
    }
    request(&ctx, &JobId::from(id), req.target_directory, true)
}

fn operation_view(request_id: String, op: Operation) -> SavepointOperation {
    SavepointOperation {
        request_id,
        job_id: op.job.to_string(),
        status: match op.status {
            hub::OperationStatus::InProgress => OperationStatus::InProgress,
            hub::OperationStatus::Completed => OperationStatus::Completed,
            hub::OperationStatus::Failed => OperationStatus::Failed,
        },
        location: op.location,
        stop: op.stop,
        checkpoint_id: op.checkpoint_id,
        failure: op.failure,
    }
}

pub async fn savepoint_status(
    State(ctx): Ctx,
    Path((id, request_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, RestError> {
    let id = JobId::from(id);
    match ctx.checkpoints.operation(&request_id) {
        Some(op) if op.job == id => Ok(Json(operation_view(request_id, op))),
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no savepoint request {request_id} for job {id} on this jobmanager (requests are kept by the leader that accepted them)"
            ),
        )
        .into()),
    }
}

/// Reads the `_metadata` at `location` (a savepoint directory, or a retained
/// checkpoint's `<storage>/<job>/chk-<n>`) and checks that `spec` can start
/// from it: same number of key groups, same state backend, and every node
/// with state in it present in the job (unless `allow_non_restored`).
pub async fn resolve_restore(
    location: &str,
    spec: &JobSpec,
    backend: StateBackendKind,
    allow_non_restored: bool,
) -> Result<RestoreSource, ApiError> {
    let location = location.trim_end_matches('/').to_string();
    let bad =
        |message: String| ApiError::new(ErrorCode::BadRequest, message).with_field("restore_from");
    let storage = CheckpointStorage::open(&location, &[])
        .map_err(|e| bad(format!("restore_from {location}: {e}")))?;
    let meta = storage.read_metadata("_metadata").await.map_err(|e| {
        bad(format!(
            "restore_from {location}: cannot read its _metadata (not a savepoint or completed checkpoint?): {e}"
        ))
    })?;
    if meta.max_parallelism != spec.max_parallelism {
        return Err(bad(format!(
            "restore_from {location} has {} key groups (max_parallelism) but the job has {}: they must be equal",
            meta.max_parallelism, spec.max_parallelism
        )));
    }
    let want = match backend {
        StateBackendKind::Memory => BackendKind::Memory,
        StateBackendKind::Rocksdb => BackendKind::Rocksdb,
    };
    if meta.backend != want {
        return Err(bad(format!(
            "restore_from {location} was taken with the {:?} state backend; the job uses {:?}: set `checkpoint.backend` to match",
            meta.backend, want
        )));
    }
    let known: std::collections::BTreeSet<&NodeId> = spec.nodes.iter().map(|n| &n.id).collect();
    let unknown: Vec<String> = meta
        .nodes()
        .into_iter()
        .filter(|n| !known.contains(n))
        .map(ToString::to_string)
        .collect();
    if !unknown.is_empty() && !allow_non_restored {
        return Err(bad(format!(
            "restore_from {location} holds state of node(s) {} that the job does not have; set allow_non_restored_state=true to drop it",
            unknown.join(", ")
        )));
    }
    // A savepoint's manifests are relative to its directory; a checkpoint's
    // to the storage root two levels up (`<root>/<job>/chk-<n>`).
    let root = if meta.savepoint {
        location.clone()
    } else {
        let suffix = format!("/{}/chk-{}", meta.job, meta.checkpoint.0);
        location
            .strip_suffix(&suffix)
            .map(str::to_string)
            .ok_or_else(|| {
                bad(format!(
                    "restore_from {location} is a checkpoint of job {} but not at `<storage>{suffix}`",
                    meta.job
                ))
            })?
    };
    Ok(RestoreSource {
        location: root,
        checkpoint: meta.checkpoint,
        snapshots: meta
            .snapshots
            .into_iter()
            .filter(|s| known.contains(&s.node))
            .map(|s| (s.node, s.manifest_path))
            .collect(),
    })
}
