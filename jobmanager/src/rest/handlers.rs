//! One function per REST route.

use super::{RestError, views};
use crate::context::{Context, now_ms};
use crate::jobs;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use eddy_sdk::ids::JobId;
use eddy_sdk::rest::{JobList, SubmitQuery, SubmitResponse, TaskManagerList};
use eddy_sdk::{ApiError, ErrorCode};
use std::sync::Arc;

const OPENAPI: &str = include_str!("openapi.json");

type Ctx = State<Arc<Context>>;

pub async fn overview(State(ctx): Ctx) -> impl IntoResponse {
    let leader = ctx.is_leader();
    Json(ctx.read(|s| ctx.registry(|r| views::overview(s, r, ctx.id, leader))))
}

pub async fn taskmanagers(State(ctx): Ctx) -> impl IntoResponse {
    let now = tokio::time::Instant::now();
    Json(TaskManagerList {
        taskmanagers: ctx.read(|s| ctx.registry(|r| views::taskmanagers(s, r, now))),
    })
}

pub async fn list_jobs(State(ctx): Ctx) -> impl IntoResponse {
    let mut jobs = ctx.read(|s| s.jobs.values().map(views::summary).collect::<Vec<_>>());
    // Newest first, as Flink lists them.
    jobs.sort_by(|a, b| {
        b.submitted_at
            .cmp(&a.submitted_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    Json(JobList { jobs })
}

pub async fn job_detail(
    State(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, RestError> {
    let id = JobId::from(id);
    let detail = ctx.read(|s| {
        s.job(&id)
            .map(|job| ctx.registry(|r| views::detail(job, r, now_ms())))
    });
    detail
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job {id}")).into())
}

fn is_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|ct| {
            matches!(
                ct.as_str(),
                "application/yaml" | "text/yaml" | "application/x-yaml"
            )
        })
}

pub async fn submit_job(
    State(ctx): Ctx,
    query: Result<Query<SubmitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, RestError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("bad query string: {}", e.body_text()),
        )
    })?;
    let body = body.map_err(super::body_error)?;
    let text = std::str::from_utf8(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the job spec is not UTF-8: {e}"),
        )
    })?;
    if text.trim().is_empty() {
        let what = if is_yaml(&headers) { "YAML" } else { "JSON" };
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("the request body must be a job spec in {what}"),
        )
        .into());
    }
    let spec = eddy_sdk::spec::parse_yaml_or_json(text)?;
    let restore = match &query.restore_from {
        None => None,
        Some(location) => {
            let settings = crate::checkpoint::service::checkpoint_settings(&ctx.config, &spec)?
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidSpec,
                        "a job started from restore_from needs a `checkpoint` section (its state backend and storage)",
                    )
                    .with_field("checkpoint")
                })?;
            Some(
                super::state_handlers::resolve_restore(
                    location,
                    &spec,
                    settings.backend,
                    query.allow_non_restored_state,
                )
                .await?,
            )
        }
    };
    let job_id = jobs::submit(&ctx, spec, restore).await?;
    Ok((
        StatusCode::CREATED,
        Json(SubmitResponse {
            job_id: job_id.to_string(),
        }),
    ))
}

pub async fn cancel_job(
    State(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, RestError> {
    let id = JobId::from(id);
    jobs::cancel(&ctx, &id).await?;
    let state = ctx.read(|s| s.job(&id).map(|j| j.state.as_str()).unwrap_or("CANCELLING"));
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "job_id": id.to_string(), "state": state })),
    ))
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

#[cfg(test)]
mod tests {
    /// The OpenAPI document lists exactly the node kinds a spec may use.
    #[test]
    fn openapi_node_kinds_match_the_spec() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let kinds: Vec<&str> =
            doc["components"]["schemas"]["NodeSpec"]["properties"]["kind"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect();
        assert_eq!(kinds, eddy_sdk::spec::NodeKind::ALL);
    }

    /// The OpenAPI document lists exactly the error codes of the table.
    #[test]
    fn openapi_error_codes_match_the_table() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let table: Vec<&str> = eddy_sdk::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(codes, table);
    }
}
