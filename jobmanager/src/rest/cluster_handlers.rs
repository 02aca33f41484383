//! `/v1/cluster`: the Raft group's status and its membership changes.
//! Changes run on the leader (`forward` sends them there).

use super::RestError;
use crate::cluster;
use crate::context::Context;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use eddy_sdk::rest::ClusterStatus;
use eddy_sdk::{ApiError, ErrorCode};
use std::sync::Arc;

type Ctx = State<Arc<Context>>;

pub async fn status(State(ctx): Ctx) -> Json<ClusterStatus> {
    Json(cluster::status(&ctx).await)
}

/// Adds a member and answers the group's status once it is a voter.
pub async fn add_member(
    State(ctx): Ctx,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ClusterStatus>, RestError> {
    let body = body.map_err(super::body_error)?;
    let member = cluster::parse_member(&body)?;
    cluster::add_member(&ctx, &member)
        .await
        .map_err(|e| e.to_api())?;
    Ok(Json(cluster::status(&ctx).await))
}

/// Removes a member and answers the group's status after the change.
pub async fn remove_member(
    State(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Json<ClusterStatus>, RestError> {
    let id: u64 = id.parse().ok().filter(|id| *id != 0).ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("member id {id:?} is not a positive integer"),
        )
        .with_field("id")
    })?;
    cluster::remove_member(&ctx, id)
        .await
        .map_err(|e| e.to_api())?;
    Ok(Json(cluster::status(&ctx).await))
}
