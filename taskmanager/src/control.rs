//! The JobManager client: registration, heartbeats and task status reports.
//!
//! The TaskManager registers with the first reachable JobManager of its list
//! (retrying with backoff), heartbeats at the interval the JobManager returns,
//! and registers again when the JobManager no longer knows it or stops
//! answering. Tasks keep running throughout: a JobManager failover must never
//! stop them (DESIGN, "Processes"). Status changes are reported one by one,
//! retried until delivered; a newer status of the same subtask supersedes an
//! undelivered older one.

use crate::node::Node;
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
            session_rx,
            shutdown.clone(),
        ));
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
