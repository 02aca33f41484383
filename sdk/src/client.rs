//! A typed REST client for the JobManager's `/v1` API. Errors keep the
//! server's error code, so the CLI can exit with the table's exit code.

use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::rest::{
    AddMemberRequest, CheckpointStats, ClusterStatus, ExceptionList, JobDetail, JobList,
    OperationAccepted, Overview, SavepointOperation, SavepointRequest, StopRequest, SubmitQuery,
    SubmitResponse, TaskManagerList,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error body.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The server could not be reached or the answer was not readable.
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from {url}: HTTP {status}: {body}")]
    Unexpected {
        url: String,
        status: u16,
        body: String,
    },
}

impl Error {
    /// The error-table code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client of one JobManager REST endpoint (e.g. `http://127.0.0.1:8081`).
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Client { base, http }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn overview(&self) -> Result<Overview> {
        self.get("/v1/overview").await
    }

    pub async fn taskmanagers(&self) -> Result<TaskManagerList> {
        self.get("/v1/taskmanagers").await
    }

    pub async fn jobs(&self) -> Result<JobList> {
        self.get("/v1/jobs").await
    }

    pub async fn job(&self, id: &str) -> Result<JobDetail> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// Submits a spec given as JSON or YAML text.
    pub async fn submit(&self, spec_text: &str) -> Result<SubmitResponse> {
        self.submit_with(spec_text, &SubmitQuery::default()).await
    }

    /// Submits a spec, starting it from a savepoint or retained checkpoint
    /// when `query.restore_from` is set.
    pub async fn submit_with(
        &self,
        spec_text: &str,
        query: &SubmitQuery,
    ) -> Result<SubmitResponse> {
        let content_type = if spec_text.trim_start().starts_with('{') {
            "application/json"
        } else {
            "application/yaml"
        };
        let mut url = format!("{}/v1/jobs", self.base);
        if let Some(from) = &query.restore_from {
            let mut params = vec![("restore_from", from.as_str())];
            if query.allow_non_restored_state {
                params.push(("allow_non_restored_state", "true"));
            }
            url = reqwest::Url::parse_with_params(&url, &params)
                .map(String::from)
                .map_err(|e| {
                    Error::Api(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("bad JobManager URL {url}: {e}"),
                    ))
                })?;
        }
        let request = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(spec_text.to_string());
        Self::send(url, request).await
    }

    pub async fn cancel(&self, id: &str) -> Result<serde_json::Value> {
        let url = format!("{}/v1/jobs/{id}/cancel", self.base);
        let request = self.http.post(&url);
        Self::send(url, request).await
    }

    pub async fn checkpoints(&self, id: &str) -> Result<CheckpointStats> {
        self.get(&format!("/v1/jobs/{id}/checkpoints")).await
    }

    pub async fn exceptions(&self, id: &str) -> Result<ExceptionList> {
        self.get(&format!("/v1/jobs/{id}/exceptions")).await
    }

    /// Triggers a savepoint; poll [`Client::savepoint_status`] with the id.
    pub async fn savepoint(
        &self,
        id: &str,
        target_directory: Option<String>,
    ) -> Result<OperationAccepted> {
        let url = format!("{}/v1/jobs/{id}/savepoints", self.base);
        let request = self
            .http
            .post(&url)
            .json(&SavepointRequest { target_directory });
        Self::send(url, request).await
    }

    /// Stops the job at a savepoint; poll [`Client::savepoint_status`].
    pub async fn stop_with_savepoint(
        &self,
        id: &str,
        target_directory: Option<String>,
    ) -> Result<OperationAccepted> {
        let url = format!("{}/v1/jobs/{id}/stop", self.base);
        let request = self.http.post(&url).json(&StopRequest {
            savepoint: true,
            target_directory,
        });
        Self::send(url, request).await
    }

    pub async fn savepoint_status(&self, id: &str, request_id: &str) -> Result<SavepointOperation> {
        self.get(&format!("/v1/jobs/{id}/savepoints/{request_id}"))
            .await
    }

    /// The Raft group as the JobManager at this URL sees it.
    pub async fn cluster(&self) -> Result<ClusterStatus> {
        self.get("/v1/cluster").await
    }

    /// Adds a JobManager started with `--join` to the group; returns once it
    /// is a voter (any JobManager accepts this: followers forward it).
    pub async fn add_member(&self, member: &AddMemberRequest) -> Result<ClusterStatus> {
        let url = format!("{}/v1/cluster/members", self.base);
        // Adding waits until the new member caught up with the log.
        let request = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(300))
            .json(member);
        Self::send(url, request).await
    }

    /// Removes a member from the group (the leader included: it steps down).
    pub async fn remove_member(&self, id: u64) -> Result<ClusterStatus> {
        let url = format!("{}/v1/cluster/members/{id}", self.base);
        let request = self.http.delete(&url);
        Self::send(url, request).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let request = self.http.get(&url);
        Self::send(url, request).await
    }

    /// Sends the request and reads the answer: the body on success, the
    /// server's error body (with its code) otherwise.
    async fn send<T: DeserializeOwned>(url: String, request: reqwest::RequestBuilder) -> Result<T> {
        let resp = request.send().await.map_err(|source| Error::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let body = resp.text().await.map_err(|source| Error::Transport {
            url: url.clone(),
            source,
        })?;
        if status.is_success() {
            return serde_json::from_str(&body).map_err(|_| Error::Unexpected {
                url,
                status: status.as_u16(),
                body,
            });
        }
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => Err(Error::Api(e.error)),
            Err(_) if status == StatusCode::NOT_FOUND => Err(Error::Api(ApiError::new(
                ErrorCode::NotFound,
                format!("{url} not found"),
            ))),
            Err(_) => Err(Error::Unexpected {
                url,
                status: status.as_u16(),
                body,
            }),
        }
    }
}
