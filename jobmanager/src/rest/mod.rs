//! The REST API under `/v1` (axum), `/v1/openapi.json` and `/metrics`.
//!
//! Handlers only convert: parse the request, call `jobs` (or `cluster`) or
//! read the state, build the body with `views`. Any node answers: `forward`
//! sends writes on to the leader and tags every answer with the node's
//! role. Every error, including axum's own
//! rejections, unknown routes, wrong methods and oversized bodies, answers
//! `{"error": {"code", "message", ...}}` with a 4xx status; bad input never
//! produces a 500.

pub mod checkpoint_views;
mod cluster_handlers;
pub mod forward;
mod handlers;
mod state_handlers;
pub mod views;

use crate::context::Context;
use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use eddy_sdk::error::ErrorBody;
use eddy_sdk::{ApiError, ErrorCode};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// An error answer: the status and the shared error body.
#[derive(Debug)]
pub struct RestError {
    pub status: StatusCode,
    pub error: ApiError,
}

impl From<ApiError> for RestError {
    fn from(error: ApiError) -> Self {
        let status = StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        RestError { status, error }
    }
}

impl RestError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        RestError {
            status,
            error: ApiError::new(code, message),
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let retry = forward::retry_after(self.status);
        let mut response =
            (self.status, axum::Json(ErrorBody { error: self.error })).into_response();
        if let Some(seconds) = retry {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds);
        }
        response
    }
}

/// The answer to a body over [`MAX_BODY_BYTES`].
pub(crate) fn body_too_large() -> RestError {
    RestError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BadRequest,
        format!(
            "request body exceeds {} MiB",
            MAX_BODY_BYTES / (1024 * 1024)
        ),
    )
}

/// The answer to a body axum could not read.
pub(crate) fn body_error(rejection: BytesRejection) -> RestError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large()
    } else {
        RestError::new(
            rejection.status(),
            ErrorCode::BadRequest,
            rejection.body_text(),
        )
    }
}

/// The whole HTTP surface of the JobManager.
pub fn router(ctx: Arc<Context>, registry: Arc<Registry>) -> Router {
    let api = Router::new()
        .route("/v1/overview", get(handlers::overview))
        .route("/v1/taskmanagers", get(handlers::taskmanagers))
        .route(
            "/v1/jobs",
            get(handlers::list_jobs).post(handlers::submit_job),
        )
        .route("/v1/jobs/{id}", get(handlers::job_detail))
        .route("/v1/jobs/{id}/cancel", post(handlers::cancel_job))
        .route("/v1/jobs/{id}/stop", post(state_handlers::stop_job))
        .route(
            "/v1/jobs/{id}/checkpoints",
            get(state_handlers::checkpoints),
        )
        .route("/v1/jobs/{id}/exceptions", get(state_handlers::exceptions))
        .route(
            "/v1/jobs/{id}/savepoints",
            post(state_handlers::trigger_savepoint),
        )
        .route(
            "/v1/jobs/{id}/savepoints/{request_id}",
            get(state_handlers::savepoint_status),
        )
        .route("/v1/cluster", get(cluster_handlers::status))
        .route("/v1/cluster/members", post(cluster_handlers::add_member))
        .route(
            "/v1/cluster/members/{id}",
            delete(cluster_handlers::remove_member),
        )
        .route("/v1/openapi.json", get(handlers::openapi))
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            forward::forward_writes,
        ))
        .with_state(ctx.clone());
    api.merge(eddy_sdk::server::metrics::router(registry))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            forward::role_headers,
        ))
        .layer(axum::middleware::from_fn_with_state(ctx, count_requests))
}

async fn not_found(request: Request) -> RestError {
    RestError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route {}", request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> RestError {
    RestError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest,
        format!(
            "method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Counts requests by matched route and status.
async fn count_requests(State(ctx): State<Arc<Context>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(request).await;
    ctx.metrics.rest_request(&route, response.status().as_u16());
    response
}
