//! Every Prometheus metric of the JobManager, declared once, all prefixed
//! `eddy_jobmanager_`. Gauges are refreshed by the job driver on each tick;
//! the REST request counter is incremented by the REST middleware.

use eddy_sdk::rest::JobState;
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
    pub raft_applied_index: Gauge,
    pub rest_requests: Family<Labels, Counter>,
}

const STATES: [JobState; 6] = [
    JobState::Created,
    JobState::Running,
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
            raft_applied_index: Gauge::default(),
            rest_requests: Family::default(),
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
            "raft_applied_index",
            "Index of the last committed log entry applied here",
            m.raft_applied_index.clone(),
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

    pub fn rest_request(&self, route: &str, status: u16) {
        self.rest_requests
            .get_or_create(&vec![
                ("route".to_string(), route.to_string()),
                ("status".to_string(), status.to_string()),
            ])
            .inc();
    }
}
