//! Any JobManager answers: reads from its own replicated state, writes by
//! forwarding them to the leader (ADR 0008).
//!
//! A write (any method but GET/HEAD/OPTIONS) reaching a follower is sent on
//! to the leader's REST URL (from the Raft membership) with the same method,
//! path, query, body and content type, and the leader's status and body come
//! back unchanged. A request is forwarded at most once: the forwarded copy
//! carries `X-Eddy-Forwarded-By`, and a node that is not the leader either
//! answers it `not_leader` instead of passing it on. With no leader known
//! the answer is 503 `no_leader` with `Retry-After`.
//!
//! Reads of state only the leader holds (the TaskManager registry, savepoint
//! requests in flight) are forwarded the same way.
//!
//! Every answer carries `X-Eddy-Leader-Id` and `X-Eddy-Role` of the node the
//! client talked to.

use super::{MAX_BODY_BYTES, RestError};
use crate::cluster::status::role;
use crate::context::Context;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use eddy_sdk::rest::{FORWARDED_BY_HEADER, FORWARDED_TO_HEADER, LEADER_ID_HEADER, ROLE_HEADER};
use eddy_sdk::{ApiError, ErrorCode};
use std::sync::Arc;
use std::time::Duration;

/// GET routes answered from the leader's soft state, forwarded like writes.
const LEADER_ONLY_READS: [&str; 2] = ["/v1/taskmanagers", "/v1/jobs/{id}/savepoints/{request_id}"];

/// Request headers passed on to the leader besides the body.
const PASSED_HEADERS: [HeaderName; 3] =
    [header::CONTENT_TYPE, header::ACCEPT, header::AUTHORIZATION];

/// The HTTP client forwarding requests (timeouts are set per request).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default()
}

fn must_forward(request: &Request) -> bool {
    let method = request.method();
    let write = method != Method::GET && method != Method::HEAD && method != Method::OPTIONS;
    write
        || request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| LEADER_ONLY_READS.contains(&p.as_str()))
}

/// Middleware on the `/v1` routes: runs the request here on the leader (and
/// for reads), forwards it otherwise.
pub async fn forward_writes(
    State(ctx): State<Arc<Context>>,
    request: Request,
    next: Next,
) -> Response {
    if !must_forward(&request) || ctx.is_leader() {
        return next.run(request).await;
    }
    if request.headers().contains_key(FORWARDED_BY_HEADER) {
        // Forwarded to a node that is no longer (or not yet) the leader:
        // the sender's view was stale; it gets the new leader's name.
        return RestError::from(ctx.not_leader().to_api()).into_response();
    }
    let Some(leader) = ctx.leader_id().filter(|id| *id != ctx.id) else {
        return RestError::from(ApiError::new(
            ErrorCode::NoLeader,
            "no jobmanager leads right now (an election is under way or the group lost its quorum); retry",
        ))
        .into_response();
    };
    let Some(base) = ctx.rest_url_of(leader) else {
        return RestError::from(ApiError::new(
            ErrorCode::NoLeader,
            format!("jobmanager {leader} leads but has not announced its REST URL yet; retry"),
        ))
        .into_response();
    };
    match proxy(&ctx, leader, &base, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn proxy(
    ctx: &Context,
    leader: u64,
    base: &str,
    request: Request,
) -> Result<Response, RestError> {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let url = format!("{base}{path}");
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| super::body_too_large())?;
    // Adding a member waits for it to catch up; nothing else takes as long.
    let timeout = ctx.config.raft.join_timeout.0 + Duration::from_secs(30);
    let mut outgoing = ctx
        .http
        .request(parts.method.clone(), &url)
        .timeout(timeout)
        .header(FORWARDED_BY_HEADER, ctx.id.to_string())
        .body(body);
    for name in PASSED_HEADERS {
        if let Some(value) = parts.headers.get(&name) {
            outgoing = outgoing.header(name, value.clone());
        }
    }
    tracing::debug!(method = %parts.method, %url, leader, "forwarding to the leader");
    let unreachable = |e: reqwest::Error| {
        RestError::from(ApiError::new(
            ErrorCode::Unavailable,
            format!("cannot reach the leader (jobmanager {leader}) at {base}: {e}"),
        ))
    };
    let answer = outgoing.send().await.map_err(unreachable)?;
    let status = answer.status();
    let mut headers = Vec::new();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(value) = answer.headers().get(&name) {
            headers.push((name, value.clone()));
        }
    }
    let bytes = answer.bytes().await.map_err(unreachable)?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    response
        .headers_mut()
        .insert(FORWARDED_TO_HEADER, HeaderValue::from(leader));
    Ok(response)
}

/// Middleware on every route: tags the answer with this node's view of the
/// leader and its own role.
pub async fn role_headers(
    State(ctx): State<Arc<Context>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let (leader, state) = {
        let m = ctx.raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.state)
    };
    let headers = response.headers_mut();
    headers.insert(ROLE_HEADER, HeaderValue::from_static(role(state).as_str()));
    match leader {
        Some(id) => {
            headers.insert(LEADER_ID_HEADER, HeaderValue::from(id));
        }
        None => {
            headers.remove(LEADER_ID_HEADER);
        }
    }
    response
}

/// `StatusCode` of an error answer that asks the client to come back.
pub fn retry_after(status: StatusCode) -> Option<HeaderValue> {
    (status == StatusCode::SERVICE_UNAVAILABLE).then(|| HeaderValue::from_static("1"))
}
