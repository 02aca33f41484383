//! Every Prometheus metric of the JobManager, declared once, all prefixed
//! `eddy_jobmanager_`. Gauges are refreshed by the job driver on each tick;
//! the REST request counter is incremented by the REST middleware.

use eddy_sdk::rest::{ClusterStatus, JobState};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    pub jobs: Family<Labels, Gauge>,
    pub taskmanagers_registered: Gauge,
    pub taskmanagers_lost: Gauge,
    pub slots_total: Gauge,
    pub slots_free: Gauge,
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_leader_id: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_last_applied: Gauge,
    /// The leader's view of each member's log (`peer` label); empty elsewhere.
    pub raft_matched_index: Family<Labels, Gauge>,
    pub rest_requests: Family<Labels, Counter>,
    /// Checkpoints by job and outcome (`completed`, `failed`).
    pub checkpoints: Family<Labels, Counter>,
    /// Per job: duration, state size and uploaded bytes of the last
    /// completed checkpoint.
    pub last_checkpoint_duration_ms: Family<Labels, Gauge>,
    pub last_checkpoint_size_bytes: Family<Labels, Gauge>,
    pub last_checkpoint_uploaded_bytes: Family<Labels, Gauge>,
    /// Restarts by job.
    pub job_restarts: Family<Labels, Counter>,
}

const STATES: [JobState; 7] = [
    JobState::Created,
    JobState::Running,
    JobState::Restarting,
    JobState::Finished,
    JobState::Cancelling,
    JobState::Canceled,
    JobState::Failed,
];

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            jobs: Family::default(),
            taskmanagers_registered: Gauge::default(),
            taskmanagers_lost: Gauge::default(),
            slots_total: Gauge::default(),
            slots_free: Gauge::default(),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_leader_id: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_last_applied: Gauge::default(),
            raft_matched_index: Family::default(),
            rest_requests: Family::default(),
            checkpoints: Family::default(),
            last_checkpoint_duration_ms: Family::default(),
            last_checkpoint_size_bytes: Family::default(),
            last_checkpoint_uploaded_bytes: Family::default(),
            job_restarts: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("eddy_jobmanager");
        r.register("jobs", "Jobs by state", m.jobs.clone());
        r.register(
            "taskmanagers_registered",
            "Live registered TaskManagers",
            m.taskmanagers_registered.clone(),
        );
        r.register(
            "taskmanagers_lost",
            "TaskManagers declared lost",
            m.taskmanagers_lost.clone(),
        );
        r.register(
            "slots_total",
            "Slots of live TaskManagers",
            m.slots_total.clone(),
        );
        r.register(
            "slots_free",
            "Slots not held by any running job",
            m.slots_free.clone(),
        );
        r.register("raft_term", "Current Raft term", m.raft_term.clone());
        r.register(
            "checkpoints",
            "Checkpoints ended on this leader, by job and outcome",
            m.checkpoints.clone(),
        );
        r.register(
            "last_checkpoint_duration_ms",
            "Trigger to commit of the job's last completed checkpoint",
            m.last_checkpoint_duration_ms.clone(),
        );
        r.register(
            "last_checkpoint_size_bytes",
            "State size of the job's last completed checkpoint",
            m.last_checkpoint_size_bytes.clone(),
        );
        r.register(
            "last_checkpoint_uploaded_bytes",
            "Bytes uploaded by the job's last completed checkpoint (less than its size when incremental)",
            m.last_checkpoint_uploaded_bytes.clone(),
        );
        r.register(
            "job_restarts",
            "Restarts decided by the restart strategy, by job",
            m.job_restarts.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 when this JobManager is the Raft leader",
            m.raft_is_leader.clone(),
        );
        r.register(
            "raft_leader_id",
            "Raft id of the current leader (0 if none)",
            m.raft_leader_id.clone(),
        );
        r.register(
            "raft_commit_index",
            "Index of the last log entry known committed by a quorum",
            m.raft_commit_index.clone(),
        );
        r.register(
            "raft_last_applied",
            "Index of the last committed log entry applied here",
            m.raft_last_applied.clone(),
        );
        r.register(
            "raft_matched_index",
            "The last log index each member holds, as the leader knows it (leader only)",
            m.raft_matched_index.clone(),
        );
        r.register(
            "rest_requests",
            "REST requests by route and status",
            m.rest_requests.clone(),
        );
        m
    }

    /// Sets the per-state job gauges (every state, so absent ones read 0).
    pub fn set_jobs(&self, counts: &std::collections::BTreeMap<&'static str, u32>) {
        for state in STATES {
            let n = counts.get(state.as_str()).copied().unwrap_or(0);
            self.jobs
                .get_or_create(&vec![("state".to_string(), state.as_str().to_string())])
                .set(i64::from(n));
        }
    }

    /// Sets the Raft gauges from this node's view of the group.
    pub fn set_raft(&self, status: &ClusterStatus) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.raft_term.set(gauge(status.term));
        self.raft_is_leader
            .set(i64::from(status.leader == Some(status.this_node)));
        self.raft_leader_id.set(status.leader.map_or(0, gauge));
        self.raft_commit_index
            .set(status.commit_index.map_or(0, gauge));
        self.raft_last_applied
            .set(status.last_applied.map_or(0, gauge));
        // Members leave and leadership moves: rebuild the family each time.
        self.raft_matched_index.clear();
        for member in &status.members {
            if let Some(index) = member.matched_index {
                self.raft_matched_index
                    .get_or_create(&vec![("peer".to_string(), member.id.to_string())])
                    .set(gauge(index));
            }
        }
    }

    pub fn rest_request(&self, route: &str, status: u16) {
        self.rest_requests
            .get_or_create(&vec![
                ("route".to_string(), route.to_string()),
                ("status".to_string(), status.to_string()),
            ])
            .inc();
    }
}
