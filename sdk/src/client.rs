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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// How long a request is retried while no JobManager of the list leads
/// (503, e.g. during an election).
const NO_LEADER_RETRY: Duration = Duration::from_secs(10);
/// The pause between two rounds over the list while there is no leader.
const NO_LEADER_PAUSE: Duration = Duration::from_millis(200);

/// A client of a JobManager group's REST API: one URL (e.g.
/// `http://127.0.0.1:8081`) or several, comma-separated.
///
/// Requests go to the JobManager that answered last. On a connection error
/// (or, for reads, any transport error) the next URL is tried; while the
/// group has no leader (503 `no_leader`; for reads any 503) or a follower
/// names the leader (421), the request is retried for up to 10 s. Clones
/// share which URL answered last.
#[derive(Clone, Debug)]
pub struct Client {
    bases: Arc<[String]>,
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
    no_leader_retry: Duration,
}

/// What to do after one URL failed.
enum Next {
    /// Try the next URL now.
    Skip,
    /// Retry after a pause (no leader yet), from the named leader if any.
    Wait { leader: Option<String> },
    /// Give up with this error.
    Fail,
}

impl Client {
    /// A client of `base_urls`: one URL or a comma-separated list.
    pub fn new(base_urls: &str) -> Self {
        let bases: Vec<String> = base_urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Client {
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            http,
            no_leader_retry: NO_LEADER_RETRY,
        }
    }

    /// How long to retry while no JobManager leads (default 10 s).
    pub fn with_no_leader_retry(mut self, retry: Duration) -> Self {
        self.no_leader_retry = retry;
        self
    }

    /// The URL requests go to first (the one that answered last).
    pub fn base_url(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed);
        self.bases.get(i).or(self.bases.first()).map_or("", |s| s)
    }

    /// Every JobManager URL this client knows.
    pub fn base_urls(&self) -> &[String] {
        &self.bases
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
        let mut path = "/v1/jobs".to_string();
        if let Some(from) = &query.restore_from {
            let mut params = vec![("restore_from", from.as_str())];
            if query.allow_non_restored_state {
                params.push(("allow_non_restored_state", "true"));
            }
            let encoded =
                reqwest::Url::parse_with_params("http://eddy/v1/jobs", &params).map_err(|e| {
                    Error::Api(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("cannot encode the query: {e}"),
                    ))
                })?;
            path = format!("/v1/jobs?{}", encoded.query().unwrap_or_default());
        }
        let body = spec_text.to_string();
        self.call(&path, false, |http, url| {
            http.post(url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body.clone())
        })
        .await
    }

    pub async fn cancel(&self, id: &str) -> Result<serde_json::Value> {
        self.call(&format!("/v1/jobs/{id}/cancel"), false, |http, url| {
            http.post(url)
        })
        .await
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
        let body = SavepointRequest { target_directory };
        self.call(&format!("/v1/jobs/{id}/savepoints"), false, |http, url| {
            http.post(url).json(&body)
        })
        .await
    }

    /// Stops the job at a savepoint; poll [`Client::savepoint_status`].
    pub async fn stop_with_savepoint(
        &self,
        id: &str,
        target_directory: Option<String>,
    ) -> Result<OperationAccepted> {
        let body = StopRequest {
            savepoint: true,
            target_directory,
        };
        self.call(&format!("/v1/jobs/{id}/stop"), false, |http, url| {
            http.post(url).json(&body)
        })
        .await
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
        // Adding waits until the new member caught up with the log; adding
        // a member again is harmless, so it is retried like a read.
        self.call("/v1/cluster/members", true, |http, url| {
            http.post(url)
                .timeout(Duration::from_secs(300))
                .json(member)
        })
        .await
    }

    /// Removes a member from the group (the leader included: it steps down).
    pub async fn remove_member(&self, id: u64) -> Result<ClusterStatus> {
        self.call(&format!("/v1/cluster/members/{id}"), false, |http, url| {
            http.delete(url)
        })
        .await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(path, true, |http, url| http.get(url)).await
    }

    /// Sends the request built by `build` to the JobManagers in turn, from
    /// the one that answered last, as the type doc says. `idempotent`
    /// requests are also retried elsewhere after a transport error that may
    /// have happened once the request was sent.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        idempotent: bool,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let deadline = Instant::now() + self.no_leader_retry;
        let n = self.bases.len();
        if n == 0 {
            return Err(Error::Api(ApiError::new(
                ErrorCode::BadRequest,
                "no JobManager URL given",
            )));
        }
        let mut start = self.current.load(Ordering::Relaxed) % n;
        loop {
            // The error to report: a "no leader" one rather than a refused
            // connection, which only says one member is down.
            let mut unavailable = None;
            let mut unreachable = None;
            let mut named_leader = None;
            for k in 0..n {
                let i = (start + k) % n;
                let url = format!("{}{path}", self.bases[i]);
                let request = build(&self.http, &url);
                let err = match Self::send(url, request).await {
                    Ok(v) => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(e) => e,
                };
                match next_step(&err, idempotent) {
                    Next::Skip => unreachable = Some(err),
                    Next::Wait { leader } => {
                        named_leader = named_leader.or(leader);
                        unavailable = Some(err);
                    }
                    Next::Fail => return Err(err),
                }
            }
            if let Some(leader) = &named_leader
                && !self.bases.contains(leader)
            {
                // A leader this client was not given: ask it directly.
                let url = format!("{leader}{path}");
                let request = build(&self.http, &url);
                if let Ok(v) = Self::send(url, request).await {
                    return Ok(v);
                }
            }
            let waiting = unavailable.is_some();
            let Some(err) = unavailable.or(unreachable) else {
                return Err(Error::Api(ApiError::new(
                    ErrorCode::Internal,
                    "no JobManager was asked",
                )));
            };
            if !waiting || Instant::now() >= deadline {
                return Err(err);
            }
            // A named leader on the list is asked first next time.
            if let Some(i) = named_leader.and_then(|l| self.bases.iter().position(|b| *b == l)) {
                start = i;
            }
            tokio::time::sleep(NO_LEADER_PAUSE).await;
        }
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

/// What a failed attempt at one JobManager means for the others.
fn next_step(err: &Error, idempotent: bool) -> Next {
    match err {
        // Nothing was sent: another JobManager may answer.
        Error::Transport { source, .. } if source.is_connect() => Next::Skip,
        Error::Transport { .. } if idempotent => Next::Skip,
        Error::Api(api) if api.code == ErrorCode::NoLeader => Next::Wait { leader: None },
        // A write may have happened: only reads are sent again.
        Error::Api(api) if api.code == ErrorCode::Unavailable && idempotent => {
            Next::Wait { leader: None }
        }
        Error::Api(api) if api.code == ErrorCode::NotLeader => Next::Wait {
            leader: api
                .leader
                .as_deref()
                .map(|l| l.trim_end_matches('/').to_string()),
        },
        Error::Unexpected { status: 503, .. } if idempotent => Next::Wait { leader: None },
        _ => Next::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_splits_a_comma_separated_list() {
        let c = Client::new("http://a:1/, http://b:2,,http://c:3");
        assert_eq!(c.base_urls(), ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(c.base_url(), "http://a:1");
    }

    /// A tiny HTTP server answering every request with `status` and `body`.
    async fn server(status: u16, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    /// A refused connection moves on to the next JobManager, which is then
    /// asked first; a request nobody can serve fails with the last error.
    #[tokio::test]
    async fn call_skips_unreachable_and_sticks_to_the_one_that_answered() {
        let dead = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let up = server(200, r#"{"jobs":[]}"#).await;
        let c = Client::new(&format!("{dead},{up}"));
        assert!(c.jobs().await.unwrap().jobs.is_empty());
        assert_eq!(c.base_url(), up);
        let only_dead = Client::new(&dead);
        assert!(matches!(
            only_dead.jobs().await,
            Err(Error::Transport { .. })
        ));
    }

    /// 503 `no_leader` is retried for a while, then reported; a write
    /// answered 503 `unavailable` (it may have happened) is not retried.
    #[tokio::test]
    async fn call_retries_no_leader_then_fails_with_it() {
        let busy = server(
            503,
            r#"{"error":{"code":"no_leader","message":"no leader"}}"#,
        )
        .await;
        let c = Client::new(&busy).with_no_leader_retry(Duration::from_millis(500));
        let started = Instant::now();
        let err = c.cancel("j").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NoLeader));
        assert!(started.elapsed() >= NO_LEADER_PAUSE, "it was retried");

        let unsure = server(
            503,
            r#"{"error":{"code":"unavailable","message":"cannot commit"}}"#,
        )
        .await;
        let c = Client::new(&unsure).with_no_leader_retry(Duration::from_secs(30));
        let started = Instant::now();
        let err = c.cancel("j").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unavailable));
        assert!(started.elapsed() < Duration::from_secs(30), "not retried");
    }

    /// Other errors are the answer: no retry elsewhere.
    #[tokio::test]
    async fn call_returns_a_client_error_at_once() {
        let missing = server(
            404,
            r#"{"error":{"code":"not_found","message":"no job x"}}"#,
        )
        .await;
        let up = server(200, "{}").await;
        let c = Client::new(&format!("{missing},{up}"));
        let err = c.job("x").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound));
    }
}
