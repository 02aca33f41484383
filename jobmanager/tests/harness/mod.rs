//! In-process harness: a JobManager on port 0 in a temp dir, and fake
//! TaskManagers that register, heartbeat the statuses a test sets, and record
//! the DeployTasks / CancelJob calls they receive.

// Test support: a failed setup step should fail the test loudly.
#![allow(dead_code, clippy::unwrap_used)]

use eddy_jobmanager::JobManager;
use eddy_jobmanager::config::Config;
use eddy_proto::v1 as pb;
use eddy_sdk::spec::HumanDuration;
use pb::job_manager_service_client::JobManagerServiceClient;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

pub fn config(dir: &Path) -> Config {
    let mut c = Config::defaults().unwrap();
    c.data_dir = dir.to_path_buf();
    c.rest_addr = "127.0.0.1:0".into();
    c.rpc_addr = "127.0.0.1:0".into();
    c.heartbeat_interval = HumanDuration::from_millis(100);
    c.heartbeat_timeout = HumanDuration::from_millis(1500);
    c
}

pub async fn start_jm(dir: &Path) -> JobManager {
    let jm = JobManager::start(config(dir), Some(&dir.join("ready.json")))
        .await
        .unwrap();
    // Wait until it leads (a group of one elects itself quickly).
    wait_for("leadership", || async { jm.context().is_leader() }).await;
    jm
}

/// Polls `cond` until it holds, failing the test after 15 s.
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fake TaskManager.
pub struct FakeTm {
    pub id: String,
    pub rpc_addr: String,
    pub slots: u32,
    pub jm_rpc: String,
    pub deploys: Mutex<Vec<pb::DeployTasksRequest>>,
    pub cancels: Mutex<Vec<pb::CancelJobRequest>>,
    /// Statuses sent with every heartbeat.
    pub tasks: Mutex<Vec<pb::TaskStatus>>,
    /// While set, no heartbeats are sent (the TaskManager looks dead).
    pub silent: AtomicBool,
    /// When set, DeployTasks fails with this message.
    pub fail_deploy: Mutex<Option<String>>,
    /// When set, deployed subtasks are reported RUNNING at once.
    pub auto_run: AtomicBool,
    tasks_handles: Mutex<Vec<JoinHandle<()>>>,
}

struct Service(Arc<FakeTm>);

fn subtask_status(
    job_id: &str,
    p: &pb::SubtaskPlacement,
    attempt: u32,
    state: pb::TaskState,
) -> pb::TaskStatus {
    pb::TaskStatus {
        subtask: Some(pb::SubtaskRef {
            job_id: job_id.into(),
            vertex: p.vertex,
            index: p.index,
            attempt,
        }),
        state: state as i32,
        failure_chain: vec![],
        failure_class: String::new(),
        metrics: Some(pb::SubtaskMetrics {
            records_in: 10,
            records_out: 10,
            backpressured_ms_per_sec: 300,
            ..Default::default()
        }),
        slot: p.slot,
        damaged_checkpoint: 0,
    }
}

#[tonic::async_trait]
impl pb::task_manager_service_server::TaskManagerService for Service {
    async fn deploy_tasks(
        &self,
        request: Request<pb::DeployTasksRequest>,
    ) -> Result<Response<pb::DeployTasksResponse>, Status> {
        let req = request.into_inner();
        if let Some(msg) = self.0.fail_deploy.lock().unwrap().clone() {
            return Err(Status::internal(msg));
        }
        if self.0.auto_run.load(Ordering::SeqCst) {
            let mut tasks = self.0.tasks.lock().unwrap();
            for p in &req.deploy {
                tasks.push(subtask_status(
                    &req.job_id,
                    p,
                    req.attempt,
                    pb::TaskState::Running,
                ));
            }
        }
        self.0.deploys.lock().unwrap().push(req);
        Ok(Response::new(pb::DeployTasksResponse {}))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let req = request.into_inner();
        for t in self.0.tasks.lock().unwrap().iter_mut() {
            if t.subtask.as_ref().is_some_and(|s| s.job_id == req.job_id)
                && t.state == pb::TaskState::Running as i32
            {
                t.state = pb::TaskState::Canceled as i32;
            }
        }
        self.0.cancels.lock().unwrap().push(req);
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    async fn trigger_checkpoint(
        &self,
        _: Request<pb::TriggerCheckpointRequest>,
    ) -> Result<Response<pb::TriggerCheckpointResponse>, Status> {
        Ok(Response::new(pb::TriggerCheckpointResponse { sources: 0 }))
    }

    async fn notify_checkpoint_complete(
        &self,
        _: Request<pb::CheckpointNotice>,
    ) -> Result<Response<pb::CheckpointNoticeResponse>, Status> {
        Ok(Response::new(pb::CheckpointNoticeResponse {}))
    }

    async fn abort_checkpoint(
        &self,
        _: Request<pb::CheckpointNotice>,
    ) -> Result<Response<pb::CheckpointNoticeResponse>, Status> {
        Ok(Response::new(pb::CheckpointNoticeResponse {}))
    }
}

impl FakeTm {
    /// Starts the fake's gRPC server, registers it and starts heartbeats.
    pub async fn start(id: &str, slots: u32, jm_rpc: &str) -> Arc<FakeTm> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rpc_addr = listener.local_addr().unwrap().to_string();
        let tm = Arc::new(FakeTm {
            id: id.into(),
            rpc_addr,
            slots,
            jm_rpc: jm_rpc.into(),
            deploys: Mutex::default(),
            cancels: Mutex::default(),
            tasks: Mutex::default(),
            silent: AtomicBool::new(false),
            fail_deploy: Mutex::default(),
            auto_run: AtomicBool::new(true),
            tasks_handles: Mutex::default(),
        });
        let server = tonic::transport::Server::builder()
            .add_service(
                pb::task_manager_service_server::TaskManagerServiceServer::new(Service(tm.clone())),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let h1 = tokio::spawn(async move {
            let _ = server.await;
        });
        tm.register().await;
        let hb = tm.clone();
        let h2 = tokio::spawn(async move { hb.heartbeat_loop().await });
        tm.tasks_handles.lock().unwrap().extend([h1, h2]);
        tm
    }

    fn client(&self) -> JobManagerServiceClient<tonic::transport::Channel> {
        JobManagerServiceClient::new(eddy_sdk::server::rpc::connect(&self.jm_rpc).unwrap())
    }

    pub async fn register(&self) {
        let req = pb::RegisterTaskManagerRequest {
            tm_id: self.id.clone(),
            rpc_addr: self.rpc_addr.clone(),
            slots: self.slots,
            kpu: Some(pb::Kpu {
                vcpu_millis: 1000,
                memory_bytes: 1 << 30,
                disk_bytes: 1 << 32,
            }),
            metrics_url: String::new(),
            tasks: self.tasks.lock().unwrap().clone(),
            custom_operators: vec![],
        };
        self.client().register_task_manager(req).await.unwrap();
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut client = self.client();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.silent.load(Ordering::SeqCst) {
                continue;
            }
            let req = pb::HeartbeatRequest {
                tm_id: self.id.clone(),
                tasks: self.tasks.lock().unwrap().clone(),
                rss_bytes: 1,
            };
            match client.heartbeat(req).await {
                Ok(r) if !r.get_ref().known => {
                    let _ = self.clone().register_quietly().await;
                }
                _ => {}
            }
        }
    }

    async fn register_quietly(self: Arc<Self>) -> Result<(), Status> {
        let req = pb::RegisterTaskManagerRequest {
            tm_id: self.id.clone(),
            rpc_addr: self.rpc_addr.clone(),
            slots: self.slots,
            kpu: None,
            metrics_url: String::new(),
            tasks: self.tasks.lock().unwrap().clone(),
            custom_operators: vec![],
        };
        self.client().register_task_manager(req).await.map(|_| ())
    }

    /// Sets the state of every subtask of `job_id` it runs.
    pub fn set_job_state(&self, job_id: &str, state: pb::TaskState, failure: Option<(&str, &str)>) {
        for t in self.tasks.lock().unwrap().iter_mut() {
            if t.subtask.as_ref().is_some_and(|s| s.job_id == job_id) {
                t.state = state as i32;
                if let Some((chain, class)) = failure {
                    t.failure_chain = chain.split(" <- ").map(String::from).collect();
                    t.failure_class = class.into();
                }
            }
        }
    }

    pub fn deployed_jobs(&self) -> Vec<String> {
        self.deploys
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.job_id.clone())
            .collect()
    }

    pub fn cancelled_jobs(&self) -> Vec<String> {
        self.cancels
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.job_id.clone())
            .collect()
    }

    pub fn stop(&self) {
        for h in self.tasks_handles.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// A small REST client for the tests.
pub struct Rest {
    pub base: String,
    pub http: reqwest::Client,
}

impl Rest {
    pub fn new(jm: &JobManager) -> Rest {
        Rest {
            base: format!("http://{}", jm.rest_addr()),
            // No connection reuse: a request the server refused mid-body
            // (413) leaves its connection closed, and a pooled client would
            // send the next request on it and fail at random.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("a client without TLS settings builds"),
        }
    }

    /// Waits until the registered TaskManagers offer `n` slots in all.
    pub async fn wait_slots(&self, n: u64) {
        wait_for("slots", || async {
            self.get("/v1/overview").await.1["slots_total"] == n
        })
        .await;
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post(
        &self,
        path: &str,
        body: &str,
        content_type: &str,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn submit(&self, spec: &str) -> String {
        let (status, body) = self.post("/v1/jobs", spec, "application/json").await;
        assert_eq!(status, 201, "{body}");
        body["job_id"].as_str().unwrap().to_string()
    }

    pub async fn job_state(&self, id: &str) -> String {
        self.get(&format!("/v1/jobs/{id}")).await.1["state"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }

    pub async fn wait_state(&self, id: &str, state: &str) {
        wait_for(&format!("job {id} {state}"), || async {
            self.job_state(id).await == state
        })
        .await;
    }
}

/// A valid job of parallelism `p`: datagen -> print.
pub fn job(p: u32) -> String {
    serde_json::json!({
        "name": "test",
        "parallelism": p,
        "nodes": [
            {"id": "gen", "kind": "datagen", "fields": [{"name": "id", "type": "int64", "gen": "sequence"}]},
            {"id": "out", "kind": "print", "input": "gen"}
        ]
    })
    .to_string()
}
