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

/// What a fake JobManager answers.
#[derive(Clone, Debug)]
enum Role {
    /// Accepts TaskManagers in this term.
    Leader(u64),
    /// Refuses with `UNAVAILABLE`, naming this leader (if any).
    Follower(Option<String>),
}

/// A JobManager that records calls. As a leader its first heartbeat answer
/// is `known: false`, as after a JobManager restart.
struct FakeJm {
    role: Mutex<Role>,
    registers: Mutex<Vec<pb::RegisterTaskManagerRequest>>,
    heartbeats: AtomicUsize,
    reports: Mutex<Vec<pb::TaskStatus>>,
    /// The group's members it announces.
    members: Mutex<Vec<String>>,
}

impl FakeJm {
    fn set_role(&self, role: Role) {
        *self.role.lock().unwrap() = role;
    }

    /// The term as a leader, else the refusal a follower answers with.
    fn lead(&self) -> Result<u64, Status> {
        match self.role.lock().unwrap().clone() {
            Role::Leader(term) => Ok(term),
            Role::Follower(leader) => {
                let mut status = Status::unavailable("not the leader");
                if let Some(l) = leader {
                    status
                        .metadata_mut()
                        .insert(LEADER_METADATA, l.parse().unwrap());
                }
                Err(status)
            }
        }
    }
}

struct Svc(Arc<FakeJm>);

#[tonic::async_trait]
impl JobManagerService for Svc {
    async fn register_task_manager(
        &self,
        r: Request<pb::RegisterTaskManagerRequest>,
    ) -> Result<Response<pb::RegisterTaskManagerResponse>, Status> {
        let term = self.0.lead()?;
        self.0.registers.lock().unwrap().push(r.into_inner());
        Ok(Response::new(pb::RegisterTaskManagerResponse {
            heartbeat_interval_ms: 50,
            leader_term: term,
            jobmanagers: self.0.members.lock().unwrap().clone(),
        }))
    }
    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let term = self.0.lead()?;
        let n = self.0.heartbeats.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::HeartbeatResponse {
            known: n > 0,
            leader_term: term,
            jobmanagers: self.0.members.lock().unwrap().clone(),
        }))
    }
    async fn report_task_status(
        &self,
        r: Request<pb::ReportTaskStatusRequest>,
    ) -> Result<Response<pb::ReportTaskStatusResponse>, Status> {
        self.0.lead()?;
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

async fn fake_jm(stop: &CancellationToken, role: Role) -> (Arc<FakeJm>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let jm = Arc::new(FakeJm {
        role: Mutex::new(role),
        registers: Mutex::default(),
        heartbeats: AtomicUsize::new(0),
        reports: Mutex::default(),
        members: Mutex::default(),
    });
    let server = tonic::transport::Server::builder()
        .add_service(JobManagerServiceServer::new(Svc(jm.clone())))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    (jm, addr)
}

fn node(id: &str) -> (Arc<Node>, mpsc::UnboundedReceiver<pb::TaskStatus>) {
    let config = Config::load(
        None,
        &Default::default(),
        Overrides {
            id: Some(id.into()),
            ..Default::default()
        },
    )
    .unwrap();
    Node::new(
        Arc::new(config),
        "127.0.0.1:9".into(),
        Metrics::default(),
        Timeouts::default(),
    )
    .unwrap()
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
    let (jm, addr) = fake_jm(&stop, Role::Leader(3)).await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (node, reports) = node("tm-x");
    let key = TaskKey {
        job_id: JobId("j".into()),
        vertex: VertexId(0),
        index: 0,
    };
    node.tasks
        .insert(key.clone(), Attempt(0), 0, CancellationToken::new());
    let client = JobManagerClient::new(node.clone(), vec![dead, addr], "http://m/metrics".into());
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

/// A follower names the leader, which is not on the TaskManager's list:
/// the TaskManager registers there. When that leader steps down and names
/// another, the TaskManager follows at once and carries the new term.
#[tokio::test]
async fn client_follows_the_leader_a_follower_names() {
    let stop = CancellationToken::new();
    let (leader, leader_addr) = fake_jm(&stop, Role::Leader(3)).await;
    let (follower, follower_addr) = fake_jm(&stop, Role::Follower(Some(leader_addr.clone()))).await;
    let (node, reports) = node("tm-y");
    let client = JobManagerClient::new(node.clone(), vec![follower_addr.clone()], String::new());
    let running = tokio::spawn(client.run(reports, stop.clone()));

    eventually("registration with the named leader", || {
        !leader.registers.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(node.leader_term(), 3);

    leader.set_role(Role::Follower(Some(follower_addr)));
    follower.set_role(Role::Leader(4));
    eventually("registration with the new leader", || {
        !follower.registers.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(node.leader_term(), 4);
    stop.cancel();
    running.await.unwrap();
}

/// A deposed leader that still accepts registrations (it was paused while
/// another was elected) is ignored once a newer term was seen; the
/// TaskManager registers with the current leader, and commands of the old
/// term are refused and counted.
#[tokio::test]
async fn client_ignores_a_deposed_leader_and_refuses_its_commands() {
    let stop = CancellationToken::new();
    let (stale, stale_addr) = fake_jm(&stop, Role::Leader(4)).await;
    let (current, current_addr) = fake_jm(&stop, Role::Leader(5)).await;
    let (node, reports) = node("tm-z");
    node.observe_term(5).unwrap();
    let client = JobManagerClient::new(node.clone(), vec![stale_addr, current_addr], String::new());
    let running = tokio::spawn(client.run(reports, stop.clone()));

    eventually("heartbeats to the current leader", || {
        current.heartbeats.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(stale.heartbeats.load(Ordering::SeqCst), 0);
    assert!(node.accept_command(4, "deploy").is_err());
    assert!(node.accept_command(5, "deploy").is_ok());
    let refused = node
        .metrics
        .stale_leader_commands
        .get_or_create(&crate::metrics::CommandLabels { command: "deploy" })
        .get();
    assert_eq!(refused, 1);
    stop.cancel();
    running.await.unwrap();
}

/// The TaskManager was started knowing one JobManager; the leader
/// announces a second member. When the first stops leading without naming
/// a successor (as a JobManager removed from the group does), the
/// TaskManager finds the leader among the announced members.
#[tokio::test]
async fn client_finds_the_leader_among_announced_members() {
    let stop = CancellationToken::new();
    let (first, first_addr) = fake_jm(&stop, Role::Leader(5)).await;
    let (added, added_addr) = fake_jm(&stop, Role::Follower(None)).await;
    *first.members.lock().unwrap() = vec![first_addr.clone(), added_addr.clone()];
    let (node, reports) = node("tm-m");
    let client = JobManagerClient::new(node.clone(), vec![first_addr], String::new());
    let running = tokio::spawn(client.run(reports, stop.clone()));

    eventually("heartbeats to the first leader", || {
        first.heartbeats.load(Ordering::SeqCst) >= 2
    })
    .await;
    first.set_role(Role::Follower(None));
    added.set_role(Role::Leader(6));
    eventually("registration with the announced member", || {
        !added.registers.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(node.leader_term(), 6);
    stop.cancel();
    running.await.unwrap();
}

#[test]
fn heartbeat_timeout_is_twice_the_interval_within_bounds() {
    assert_eq!(
        heartbeat_timeout(Duration::from_secs(1)),
        Duration::from_secs(2)
    );
    assert_eq!(
        heartbeat_timeout(Duration::from_millis(50)),
        MIN_HEARTBEAT_TIMEOUT
    );
    assert_eq!(
        heartbeat_timeout(Duration::from_secs(60)),
        MAX_HEARTBEAT_TIMEOUT
    );
}
