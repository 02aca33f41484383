//! The JobManager client: finding the leader, registration, heartbeats, task
//! status reports and checkpoint reports.
//!
//! The TaskManager asks every JobManager of its list at once to register it;
//! only the Raft leader accepts (a follower answers `UNAVAILABLE`, naming
//! the leader when it knows it, and that address is tried too). It then
//! heartbeats the leader at the interval the leader returned, and looks for
//! the leader again as soon as the JobManager stops being it: a refusal, a
//! connection error, two heartbeats without an answer, or an answer from a
//! leader term older than one already seen (a deposed leader). Tasks keep
//! running throughout: a JobManager failover must never stop them (DESIGN,
//! "Processes"); re-registration carries every task's status, which is how a
//! new leader learns what runs where.
//!
//! Status changes are reported one by one, retried until delivered; a newer
//! status of the same subtask supersedes an undelivered older one
//! (`reports`).

mod reports;
#[cfg(test)]
mod tests;

use crate::node::Node;
use eddy_proto::v1 as pb;
use eddy_proto::v1::job_manager_service_client::JobManagerServiceClient;
use eddy_sdk::server::rpc::LEADER_METADATA;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest pause between two rounds of looking for the leader: an
/// election takes 1.3-1.6 s with the default Raft timeouts, and every
/// moment without a leader after it delays the job's next checkpoint. A
/// round is one small RPC per JobManager.
const MAX_SEARCH_BACKOFF: Duration = Duration::from_millis(250);
/// How long one registration attempt may take: a paused JobManager accepts
/// connections but never answers.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Heartbeats time out after twice the interval, within these bounds.
const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Unanswered heartbeats after which the leader is looked for again.
const MAX_HEARTBEAT_FAILURES: u32 = 2;

/// The JobManager currently registered with.
#[derive(Clone)]
struct Session {
    client: JobManagerServiceClient<Channel>,
    addr: String,
}

/// Why a registration attempt did not give a session.
struct Refused {
    /// The leader's rpc address, when the JobManager named it.
    leader: Option<String>,
}

/// Why the heartbeats to a JobManager stopped.
#[derive(Debug, PartialEq)]
enum Detached {
    /// It no longer knows this TaskManager (restarted, or declared it lost).
    Unknown,
    /// It is not (or no longer) the leader; the address is the leader it
    /// named, if any.
    NotLeader(Option<String>),
    /// It stopped answering.
    Silent,
}

pub struct JobManagerClient {
    node: Arc<Node>,
    /// The JobManagers this TaskManager was started with.
    addrs: Vec<String>,
    /// The group's members as the leader last announced them: the group
    /// may have grown or shrunk since this TaskManager started.
    learned: std::sync::Mutex<Vec<String>>,
    metrics_url: String,
}

impl JobManagerClient {
    pub fn new(node: Arc<Node>, addrs: Vec<String>, metrics_url: String) -> Self {
        JobManagerClient {
            node,
            addrs,
            learned: std::sync::Mutex::default(),
            metrics_url,
        }
    }

    /// Every JobManager to ask for the leader: the configured ones and the
    /// members the leader announced last.
    fn candidates(&self) -> Vec<String> {
        let learned = self
            .learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = self.addrs.clone();
        all.extend(learned.iter().filter(|a| !self.addrs.contains(a)).cloned());
        all
    }

    /// Records the group's members a leader announced (an empty list, from
    /// an older JobManager, changes nothing).
    fn learn(&self, members: &[String]) {
        if members.is_empty() {
            return;
        }
        let mut learned = self
            .learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if learned.as_slice() != members {
            tracing::info!(tm_id = %self.node.tm_id, jobmanagers = ?members, "the JobManager group's members");
            *learned = members.to_vec();
        }
    }

    /// Runs registration/heartbeats and the status reporter until `shutdown`.
    pub async fn run(
        self,
        reports: mpsc::UnboundedReceiver<pb::TaskStatus>,
        shutdown: CancellationToken,
    ) {
        let (session_tx, session_rx) = watch::channel(None);
        let reporter = tokio::spawn(reports::report_statuses(
            self.node.clone(),
            reports,
            session_rx.clone(),
            shutdown.clone(),
        ));
        if let Some(checkpoints) = self.node.take_checkpoint_reports() {
            tokio::spawn(reports::report_checkpoints(
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

    /// One registration attempt with the JobManager at `addr`.
    async fn try_register(
        &self,
        addr: String,
    ) -> Result<(Session, pb::RegisterTaskManagerResponse), Refused> {
        let channel = match eddy_sdk::server::rpc::connect(&addr) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(addr, error = ?eddy_sdk::error::error_chain(&e), "skipping invalid JobManager address");
                return Err(Refused { leader: None });
            }
        };
        let mut client = JobManagerServiceClient::new(channel);
        let call = client.register_task_manager(self.register_request());
        match tokio::time::timeout(REGISTER_TIMEOUT, call).await {
            Ok(Ok(resp)) => Ok((Session { client, addr }, resp.into_inner())),
            Ok(Err(status)) => {
                tracing::debug!(addr, code = ?status.code(), message = status.message(), "registration refused");
                Err(Refused {
                    leader: leader_hint(&status),
                })
            }
            Err(_) => {
                tracing::debug!(addr, "registration timed out");
                Err(Refused { leader: None })
            }
        }
    }

    /// Asks every JobManager of the list (the named leader first) at once
    /// and keeps the first that accepts from a current term. A leader some
    /// follower names that is not on the list is asked next.
    async fn register(
        &self,
        hint: Option<String>,
    ) -> Option<(Session, pb::RegisterTaskManagerResponse)> {
        let mut asked: Vec<String> = Vec::new();
        let mut round: Vec<String> = hint.into_iter().chain(self.candidates()).collect();
        while !round.is_empty() {
            let mut hints: Vec<String> = Vec::new();
            let mut attempts = FuturesUnordered::new();
            for addr in round.drain(..) {
                if !asked.contains(&addr) {
                    asked.push(addr.clone());
                    attempts.push(self.try_register(addr));
                }
            }
            while let Some(outcome) = attempts.next().await {
                match outcome {
                    Ok((session, resp)) => match self.node.observe_term(resp.leader_term) {
                        Ok(()) => return Some((session, resp)),
                        Err(stale) => {
                            tracing::info!(jobmanager = %session.addr, term = stale.term, highest = stale.highest, "a deposed leader accepted the registration; ignoring it");
                        }
                    },
                    Err(Refused { leader: Some(l) }) => hints.push(l),
                    Err(Refused { leader: None }) => {}
                }
            }
            round = hints;
        }
        None
    }

    async fn register_and_heartbeat(&self, session_tx: &watch::Sender<Option<Session>>) {
        let tm_id = &self.node.tm_id;
        let mut backoff = MIN_BACKOFF;
        let mut hint = None;
        loop {
            let Some((session, resp)) = self.register(hint.take()).await else {
                tracing::warn!(%tm_id, jobmanagers = ?self.candidates(), retry_in = ?backoff, "no JobManager leader reachable; tasks keep running");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_SEARCH_BACKOFF);
                continue;
            };
            backoff = MIN_BACKOFF;
            self.learn(&resp.jobmanagers);
            let interval = Duration::from_millis(resp.heartbeat_interval_ms)
                .clamp(Duration::from_millis(50), Duration::from_secs(60));
            tracing::info!(%tm_id, jobmanager = %session.addr, term = resp.leader_term, ?interval, "registered with JobManager");
            let _ = session_tx.send(Some(session.clone()));
            let detached = self.heartbeat(session.clone(), interval).await;
            match &detached {
                Detached::Unknown => {
                    tracing::info!(%tm_id, jobmanager = %session.addr, "JobManager does not know this TaskManager, registering again");
                }
                Detached::NotLeader(leader) => {
                    tracing::info!(%tm_id, jobmanager = %session.addr, leader = leader.as_deref().unwrap_or("unknown"), "JobManager is no longer the leader, looking for the leader; tasks keep running");
                    let _ = session_tx.send(None);
                    hint = leader.clone();
                }
                Detached::Silent => {
                    tracing::warn!(%tm_id, jobmanager = %session.addr, "JobManager unreachable, looking for the leader; tasks keep running");
                    let _ = session_tx.send(None);
                }
            }
        }
    }

    /// Heartbeats `session` until it is no use any more, and says why.
    async fn heartbeat(&self, mut session: Session, interval: Duration) -> Detached {
        let tm_id = &self.node.tm_id;
        let timeout = heartbeat_timeout(interval);
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
            match tokio::time::timeout(timeout, session.client.heartbeat(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    if let Err(stale) = self.node.observe_term(resp.leader_term) {
                        tracing::info!(%tm_id, jobmanager = %session.addr, term = stale.term, highest = stale.highest, "JobManager answers from an older leader term");
                        return Detached::NotLeader(None);
                    }
                    self.learn(&resp.jobmanagers);
                    if !resp.known {
                        return Detached::Unknown;
                    }
                    failures = 0;
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    // A follower's refusal or a refused connection: either
                    // way there is no leader here to wait for.
                    return Detached::NotLeader(leader_hint(&status));
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
                return Detached::Silent;
            }
        }
    }
}

/// How long a heartbeat may take: twice the interval, so that a paused
/// leader is noticed within a few intervals, within fixed bounds.
fn heartbeat_timeout(interval: Duration) -> Duration {
    (interval * 2).clamp(MIN_HEARTBEAT_TIMEOUT, MAX_HEARTBEAT_TIMEOUT)
}

/// The leader's rpc address a follower's `UNAVAILABLE` answer names.
fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}
