//! The JobManager client: registration, heartbeats, task status reports and
//! checkpoint reports.
//!
//! The TaskManager registers with the first reachable JobManager of its list
//! (retrying with backoff), heartbeats at the interval the JobManager returns,
//! and registers again when the JobManager no longer knows it or stops
//! answering. Tasks keep running throughout: a JobManager failover must never
//! stop them (DESIGN, "Processes"). Status changes are reported one by one,
//! retried until delivered; a newer status of the same subtask supersedes an
//! undelivered older one.

use crate::node::{CheckpointMessage, Node};
use eddy_proto::v1 as pb;
use eddy_proto::v1::job_manager_service_client::JobManagerServiceClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Missed heartbeats after which another JobManager of the list is tried.
const MAX_HEARTBEAT_FAILURES: u32 = 3;

/// The JobManager currently registered with.
#[derive(Clone)]
struct Session {
    client: JobManagerServiceClient<Channel>,
    addr: String,
}

pub struct JobManagerClient {
    node: Arc<Node>,
    addrs: Vec<String>,
    metrics_url: String,
}

impl JobManagerClient {
    pub fn new(node: Arc<Node>, addrs: Vec<String>, metrics_url: String) -> Self {
        JobManagerClient {
            node,
            addrs,
            metrics_url,
        }
    }

    /// Runs registration/heartbeats and the status reporter until `shutdown`.
    pub async fn run(
        self,
        reports: mpsc::UnboundedReceiver<pb::TaskStatus>,
        shutdown: CancellationToken,
    ) {
        let (session_tx, session_rx) = watch::channel(None);
        let reporter = tokio::spawn(report_statuses(
            self.node.clone(),
            reports,
            session_rx.clone(),
            shutdown.clone(),
        ));
        if let Some(checkpoints) = self.node.take_checkpoint_reports() {
            tokio::spawn(report_checkpoints(
                checkpoints,
                session_rx,
                shutdown.clone(),
            ));
        }
        tokio::select! {
            _ = self.register_and_heartbeat(&session_tx) => {}
            _ = shutdown.cancelled() => {}
        }
        let _ = reporter.await;
    }

    fn register_request(&self) -> pb::RegisterTaskManagerRequest {
        pb::RegisterTaskManagerRequest {
            tm_id: self.node.tm_id.0.clone(),
            rpc_addr: self.node.rpc_addr.clone(),
            slots: self.node.slots.len(),
            kpu: Some(self.node.kpu_proto()),
            metrics_url: self.metrics_url.clone(),
            tasks: self.node.tasks.statuses(),
            custom_operators: Vec::new(),
        }
    }

    /// Tries every JobManager of the list once, in order.
    async fn register(&self) -> Option<(Session, pb::RegisterTaskManagerResponse)> {
        for addr in &self.addrs {
            let channel = match eddy_sdk::server::rpc::connect(addr) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(addr, error = ?eddy_sdk::error::error_chain(&e), "skipping invalid JobManager address");
                    continue;
                }
            };
            let mut client = JobManagerServiceClient::new(channel);
            match tokio::time::timeout(
                RPC_TIMEOUT,
                client.register_task_manager(self.register_request()),
            )
            .await
            {
                Ok(Ok(resp)) => {
                    return Some((
                        Session {
                            client,
                            addr: addr.clone(),
                        },
                        resp.into_inner(),
                    ));
                }
                Ok(Err(status)) => {
                    tracing::debug!(addr, code = ?status.code(), message = status.message(), "registration refused")
                }
                Err(_) => tracing::debug!(addr, "registration timed out"),
            }
        }
        None
    }

    async fn register_and_heartbeat(&self, session_tx: &watch::Sender<Option<Session>>) {
        let tm_id = &self.node.tm_id;
        let mut backoff = MIN_BACKOFF;
        loop {
            let Some((mut session, resp)) = self.register().await else {
                tracing::warn!(%tm_id, jobmanagers = ?self.addrs, retry_in = ?backoff, "no JobManager reachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            };
            backoff = MIN_BACKOFF;
            let _ = self.node.observe_term(resp.leader_term);
            let interval = Duration::from_millis(resp.heartbeat_interval_ms)
                .clamp(Duration::from_millis(50), Duration::from_secs(60));
            tracing::info!(%tm_id, jobmanager = %session.addr, term = resp.leader_term, ?interval, "registered with JobManager");
            let _ = session_tx.send(Some(session.clone()));
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures = 0;
            loop {
                ticker.tick().await;
                let req = pb::HeartbeatRequest {
                    tm_id: tm_id.0.clone(),
                    tasks: self.node.tasks.statuses(),
                    rss_bytes: eddy_sdk::server::metrics::rss_bytes(),
                };
                match tokio::time::timeout(RPC_TIMEOUT, session.client.heartbeat(req)).await {
                    Ok(Ok(resp)) => {
                        failures = 0;
                        let resp = resp.into_inner();
                        let _ = self.node.observe_term(resp.leader_term);
                        if !resp.known {
                            tracing::info!(%tm_id, jobmanager = %session.addr, "JobManager does not know this TaskManager, registering again");
                            break;
                        }
                    }
                    Ok(Err(status)) => {
                        failures += 1;
                        tracing::warn!(%tm_id, jobmanager = %session.addr, failures, code = ?status.code(), message = status.message(), "heartbeat failed");
                    }
                    Err(_) => {
                        failures += 1;
                        tracing::warn!(%tm_id, jobmanager = %session.addr, failures, "heartbeat timed out");
                    }
                }
                if failures >= MAX_HEARTBEAT_FAILURES {
                    tracing::warn!(%tm_id, jobmanager = %session.addr, "JobManager unreachable, looking for another; tasks keep running");
                    let _ = session_tx.send(None);
                    break;
                }
            }
        }
    }
}

type StatusKey = (String, u32, u32);

fn status_key(s: &pb::TaskStatus) -> StatusKey {
    s.subtask
        .as_ref()
        .map(|r| (r.job_id.clone(), r.vertex, r.index))
        .unwrap_or_default()
}

/// Delivers every status change, in subtask order, retrying with backoff.
async fn report_statuses(
    node: Arc<Node>,
    mut reports: mpsc::UnboundedReceiver<pb::TaskStatus>,
    mut session: watch::Receiver<Option<Session>>,
    shutdown: CancellationToken,
) {
    let mut pending: BTreeMap<StatusKey, pb::TaskStatus> = BTreeMap::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        while let Ok(s) = reports.try_recv() {
            pending.insert(status_key(&s), s);
        }
        let current = session.borrow().clone();
        let mut failed = false;
        if let Some(mut sess) = current {
            while let Some((key, status)) = pending.pop_first() {
                let req = pb::ReportTaskStatusRequest {
                    tm_id: node.tm_id.0.clone(),
                    status: Some(status.clone()),
                };
                match tokio::time::timeout(RPC_TIMEOUT, sess.client.report_task_status(req)).await {
                    Ok(Ok(_)) => backoff = MIN_BACKOFF,
                    outcome => {
                        if let Ok(Err(status)) = outcome {
                            tracing::debug!(jobmanager = %sess.addr, message = status.message(), "status report failed, will retry");
                        }
                        pending.entry(key).or_insert(status);
                        failed = true;
                        break;
                    }
                }
            }
        }
        let retry_in = backoff;
        if failed {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tokio::select! {
            s = reports.recv() => match s {
                Some(s) => { pending.insert(status_key(&s), s); }
                None => return,
            },
            changed = session.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry_in), if failed => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A checkpoint report older than this is dropped undelivered: the
/// checkpoint has timed out at the JobManager by then.
const CHECKPOINT_REPORT_TTL: Duration = Duration::from_secs(120);

/// Delivers checkpoint acknowledgements and declines in order, retrying with
/// backoff through JobManager changes (a new leader continues the
/// checkpoint in flight only if its acknowledgements reach it).
async fn report_checkpoints(
    mut reports: mpsc::UnboundedReceiver<CheckpointMessage>,
    mut session: watch::Receiver<Option<Session>>,
    shutdown: CancellationToken,
) {
    let mut pending: std::collections::VecDeque<(std::time::Instant, CheckpointMessage)> =
        std::collections::VecDeque::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        while let Ok(m) = reports.try_recv() {
            pending.push_back((std::time::Instant::now(), m));
        }
        pending.retain(|(at, _)| at.elapsed() < CHECKPOINT_REPORT_TTL);
        let current = session.borrow().clone();
        let mut failed = false;
        if let Some(mut sess) = current {
            while let Some((at, message)) = pending.pop_front() {
                let outcome = match message.clone() {
                    CheckpointMessage::Ack(req) => {
                        tokio::time::timeout(RPC_TIMEOUT, sess.client.acknowledge_checkpoint(req))
                            .await
                            .map(|r| r.map(|_| ()))
                    }
                    CheckpointMessage::Decline(req) => {
                        tokio::time::timeout(RPC_TIMEOUT, sess.client.decline_checkpoint(req))
                            .await
                            .map(|r| r.map(|_| ()))
                    }
                };
                match outcome {
                    Ok(Ok(())) => backoff = MIN_BACKOFF,
                    outcome => {
                        if let Ok(Err(status)) = outcome {
                            tracing::debug!(jobmanager = %sess.addr, message = status.message(), "checkpoint report failed, will retry");
                        }
                        pending.push_front((at, message));
                        failed = true;
                        break;
                    }
                }
            }
        }
        let retry_in = backoff;
        if failed {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tokio::select! {
            m = reports.recv() => match m {
                Some(m) => pending.push_back((std::time::Instant::now(), m)),
                None => return,
            },
            changed = session.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry_in), if failed => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::metrics::Metrics;
    use crate::node::Timeouts;
    use crate::tasks::TaskKey;
    use eddy_proto::v1::job_manager_service_server::{JobManagerService, JobManagerServiceServer};
    use eddy_sdk::ids::{Attempt, JobId, VertexId};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tonic::{Request, Response, Status};

    /// A JobManager that records calls; its first heartbeat answer is
    /// `known: false`, as after a JobManager restart.
    #[derive(Default)]
    struct FakeJm {
        registers: Mutex<Vec<pb::RegisterTaskManagerRequest>>,
        heartbeats: AtomicUsize,
        reports: Mutex<Vec<pb::TaskStatus>>,
    }

    struct Svc(Arc<FakeJm>);

    #[tonic::async_trait]
    impl JobManagerService for Svc {
        async fn register_task_manager(
            &self,
            r: Request<pb::RegisterTaskManagerRequest>,
        ) -> Result<Response<pb::RegisterTaskManagerResponse>, Status> {
            self.0.registers.lock().unwrap().push(r.into_inner());
            Ok(Response::new(pb::RegisterTaskManagerResponse {
                heartbeat_interval_ms: 50,
                leader_term: 3,
            }))
        }
        async fn heartbeat(
            &self,
            _: Request<pb::HeartbeatRequest>,
        ) -> Result<Response<pb::HeartbeatResponse>, Status> {
            let n = self.0.heartbeats.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(pb::HeartbeatResponse {
                known: n > 0,
                leader_term: 3,
            }))
        }
        async fn report_task_status(
            &self,
            r: Request<pb::ReportTaskStatusRequest>,
        ) -> Result<Response<pb::ReportTaskStatusResponse>, Status> {
            self.0.reports.lock().unwrap().extend(r.into_inner().status);
            Ok(Response::new(pb::ReportTaskStatusResponse {}))
        }
        async fn acknowledge_checkpoint(
            &self,
            _: Request<pb::AcknowledgeCheckpointRequest>,
        ) -> Result<Response<pb::AcknowledgeCheckpointResponse>, Status> {
            Ok(Response::new(pb::AcknowledgeCheckpointResponse {}))
        }
        async fn decline_checkpoint(
            &self,
            _: Request<pb::DeclineCheckpointRequest>,
        ) -> Result<Response<pb::DeclineCheckpointResponse>, Status> {
            Ok(Response::new(pb::DeclineCheckpointResponse {}))
        }
    }

    async fn fake_jm(stop: &CancellationToken) -> (Arc<FakeJm>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let jm = Arc::new(FakeJm::default());
        let server = tonic::transport::Server::builder()
            .add_service(JobManagerServiceServer::new(Svc(jm.clone())))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        (jm, addr)
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The TaskManager skips an unreachable JobManager, registers with the
    /// next one, re-registers with its tasks when the JobManager does not
    /// know it, and reports every status change.
    #[tokio::test]
    async fn client_reregisters_when_unknown_and_reports_status() {
        let stop = CancellationToken::new();
        let (jm, addr) = fake_jm(&stop).await;
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let config = Config::load(
            None,
            &Default::default(),
            Overrides {
                id: Some("tm-x".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let (node, reports) = Node::new(
            Arc::new(config),
            "127.0.0.1:9".into(),
            Metrics::default(),
            Timeouts::default(),
        )
        .unwrap();
        let key = TaskKey {
            job_id: JobId("j".into()),
            vertex: VertexId(0),
            index: 0,
        };
        node.tasks
            .insert(key.clone(), Attempt(0), 0, CancellationToken::new());
        let client =
            JobManagerClient::new(node.clone(), vec![dead, addr], "http://m/metrics".into());
        let running = tokio::spawn(client.run(reports, stop.clone()));

        eventually("a second registration", || {
            jm.registers.lock().unwrap().len() >= 2
        })
        .await;
        let again = jm.registers.lock().unwrap()[1].clone();
        assert_eq!(again.tm_id, "tm-x");
        assert_eq!(
            again.tasks.len(),
            1,
            "re-registration carries the running tasks"
        );
        assert_eq!(node.leader_term(), 3);

        node.tasks
            .transition(&key, Attempt(0), pb::TaskState::Running, None);
        eventually("the RUNNING report", || {
            jm.reports
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.state == pb::TaskState::Running as i32)
        })
        .await;
        stop.cancel();
        running.await.unwrap();
    }
}
