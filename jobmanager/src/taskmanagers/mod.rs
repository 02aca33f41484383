//! The TaskManager registry: soft state on the leader, rebuilt from
//! registrations and heartbeats, never written to Raft.
//!
//! Holds each TaskManager's address, slots, last heartbeat and the last
//! status it reported for each of its subtasks. A TaskManager silent for the
//! heartbeat timeout is marked lost by [`Registry::expire`]; a lost or unknown
//! TaskManager must register again (heartbeats answer `known: false`).

use eddy_sdk::FailureClass;
use eddy_sdk::ids::{Attempt, JobId, SlotIndex, SubtaskIndex, TaskManagerId, VertexId};
use eddy_sdk::rest::{KpuInfo, SubtaskMetricsInfo, TaskState};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// Identifies one subtask of one job (any attempt).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub job_id: JobId,
    pub vertex: VertexId,
    pub index: SubtaskIndex,
}

/// The last status a TaskManager reported for one subtask.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskStatus {
    pub attempt: Attempt,
    pub state: TaskState,
    /// The failure and its causes, outermost first (when FAILED).
    pub failure_chain: Vec<String>,
    pub failure_class: Option<FailureClass>,
    pub metrics: SubtaskMetricsInfo,
    pub slot: SlotIndex,
    /// The checkpoint the subtask restored from, when it failed because that
    /// checkpoint is damaged.
    pub damaged_checkpoint: Option<u64>,
}

impl TaskStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.state,
            TaskState::Finished | TaskState::Canceled | TaskState::Failed
        )
    }
}

/// What a TaskManager says about itself when it registers.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    pub id: TaskManagerId,
    pub rpc_addr: String,
    pub slots: u32,
    pub kpu: KpuInfo,
    pub metrics_url: String,
    pub custom_operators: Vec<String>,
    pub tasks: Vec<(TaskKey, TaskStatus)>,
}

/// One registered TaskManager.
#[derive(Clone, Debug)]
pub struct TaskManager {
    pub id: TaskManagerId,
    pub rpc_addr: String,
    pub slots: u32,
    pub kpu: KpuInfo,
    pub metrics_url: String,
    pub custom_operators: Vec<String>,
    pub last_heartbeat: Instant,
    pub rss_bytes: u64,
    pub tasks: HashMap<TaskKey, TaskStatus>,
    /// Declared lost (no heartbeat within the timeout); kept for display.
    pub lost: bool,
}

/// A TaskManager [`Registry::expire`] just declared lost.
#[derive(Clone, Debug, PartialEq)]
pub struct Lost {
    pub id: TaskManagerId,
    pub silent_for: Duration,
}

#[derive(Debug, Default)]
pub struct Registry {
    tms: BTreeMap<TaskManagerId, TaskManager>,
    /// The leader term the entries were learned in.
    term: u64,
}

impl Registry {
    /// Starts leader term `term`: what was learned in an earlier term is
    /// stale (heartbeats went to another leader meanwhile) and is dropped;
    /// registrations already made in this term are kept.
    pub fn begin_term(&mut self, term: u64) {
        if term != self.term {
            self.tms.clear();
            self.term = term;
        }
    }

    /// Registers (or re-registers) a TaskManager, replacing what was known.
    pub fn register(&mut self, reg: Registration, now: Instant) {
        let tm = TaskManager {
            id: reg.id.clone(),
            rpc_addr: reg.rpc_addr,
            slots: reg.slots,
            kpu: reg.kpu,
            metrics_url: reg.metrics_url,
            custom_operators: reg.custom_operators,
            last_heartbeat: now,
            rss_bytes: 0,
            tasks: reg.tasks.into_iter().collect(),
            lost: false,
        };
        self.tms.insert(reg.id, tm);
    }

    /// Records a heartbeat with the TaskManager's full task list. Returns
    /// false when the TaskManager is unknown or lost (it must re-register).
    ///
    /// Terminal statuses the TaskManager no longer lists are kept, so a
    /// failure reported between two scans is not missed; the driver prunes
    /// them with [`Registry::retain_tasks`].
    pub fn heartbeat(
        &mut self,
        id: &TaskManagerId,
        tasks: Vec<(TaskKey, TaskStatus)>,
        rss_bytes: u64,
        now: Instant,
    ) -> bool {
        let Some(tm) = self.tms.get_mut(id).filter(|tm| !tm.lost) else {
            return false;
        };
        tm.last_heartbeat = now;
        tm.rss_bytes = rss_bytes;
        let reported: HashMap<TaskKey, TaskStatus> = tasks.into_iter().collect();
        tm.tasks
            .retain(|key, status| status.is_terminal() && !reported.contains_key(key));
        tm.tasks.extend(reported);
        true
    }

    /// Records one task's status change. Returns false for an unknown or lost
    /// TaskManager. An older attempt never overwrites a newer one.
    pub fn report(&mut self, id: &TaskManagerId, key: TaskKey, status: TaskStatus) -> bool {
        let Some(tm) = self.tms.get_mut(id).filter(|tm| !tm.lost) else {
            return false;
        };
        match tm.tasks.get(&key) {
            Some(existing) if existing.attempt > status.attempt => {}
            _ => {
                tm.tasks.insert(key, status);
            }
        }
        true
    }

    /// Marks every TaskManager silent for longer than `timeout` as lost and
    /// returns those newly lost.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<Lost> {
        let mut lost = Vec::new();
        for tm in self.tms.values_mut().filter(|tm| !tm.lost) {
            let silent_for = now.saturating_duration_since(tm.last_heartbeat);
            if silent_for > timeout {
                tm.lost = true;
                lost.push(Lost {
                    id: tm.id.clone(),
                    silent_for,
                });
            }
        }
        lost
    }

    /// Keeps only the task statuses `keep` accepts.
    pub fn retain_tasks(
        &mut self,
        mut keep: impl FnMut(&TaskManagerId, &TaskKey, &TaskStatus) -> bool,
    ) {
        for tm in self.tms.values_mut() {
            let id = tm.id.clone();
            tm.tasks.retain(|k, s| keep(&id, k, s));
        }
    }

    pub fn get(&self, id: &TaskManagerId) -> Option<&TaskManager> {
        self.tms.get(id)
    }

    /// A live (registered, not lost) TaskManager.
    pub fn alive_tm(&self, id: &TaskManagerId) -> Option<&TaskManager> {
        self.tms.get(id).filter(|tm| !tm.lost)
    }

    /// Every TaskManager, live and lost, by id.
    pub fn all(&self) -> impl Iterator<Item = &TaskManager> {
        self.tms.values()
    }

    /// Live TaskManagers by id.
    pub fn alive(&self) -> impl Iterator<Item = &TaskManager> {
        self.tms.values().filter(|tm| !tm.lost)
    }

    /// Slots of all live TaskManagers.
    pub fn total_slots(&self) -> u32 {
        self.alive().map(|tm| tm.slots).sum()
    }

    /// The status `tm` last reported for `key`.
    pub fn task(&self, tm: &TaskManagerId, key: &TaskKey) -> Option<&TaskStatus> {
        self.alive_tm(tm).and_then(|tm| tm.tasks.get(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: &str) -> Registration {
        Registration {
            id: id.into(),
            rpc_addr: "127.0.0.1:1".into(),
            slots: 2,
            kpu: KpuInfo::default(),
            metrics_url: String::new(),
            custom_operators: vec![],
            tasks: vec![],
        }
    }

    fn key(job: &str) -> TaskKey {
        TaskKey {
            job_id: job.into(),
            vertex: VertexId(0),
            index: SubtaskIndex(0),
        }
    }

    fn status(attempt: u32, state: TaskState) -> TaskStatus {
        TaskStatus {
            attempt: Attempt(attempt),
            state,
            failure_chain: vec![],
            failure_class: None,
            metrics: SubtaskMetricsInfo::default(),
            slot: SlotIndex(0),
            damaged_checkpoint: None,
        }
    }

    /// A TaskManager that keeps sending heartbeats stays alive; once silent
    /// for longer than the timeout it is lost exactly once, and its next
    /// heartbeat is refused so it registers again.
    #[tokio::test(start_paused = true)]
    async fn expire_silent_tm_is_lost_once_then_unknown() {
        let timeout = Duration::from_secs(10);
        let mut r = Registry::default();
        r.register(registration("a"), Instant::now());
        r.register(registration("b"), Instant::now());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(r.heartbeat(&"b".into(), vec![], 1, Instant::now()));
        assert!(r.expire(Instant::now(), timeout).is_empty());
        tokio::time::advance(Duration::from_secs(5)).await;
        let lost = r.expire(Instant::now(), timeout);
        assert_eq!(
            lost.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert!(lost[0].silent_for > timeout);
        assert!(
            r.expire(Instant::now(), timeout).is_empty(),
            "lost only once"
        );
        assert_eq!(r.total_slots(), 2, "a lost TaskManager offers no slots");
        assert!(!r.heartbeat(&"a".into(), vec![], 1, Instant::now()));
        r.register(registration("a"), Instant::now());
        assert!(r.heartbeat(&"a".into(), vec![], 1, Instant::now()));
    }

    /// A registration made in the current term survives the driver's start
    /// of that term; one from an earlier term does not.
    #[tokio::test(start_paused = true)]
    async fn begin_term_keeps_this_terms_registrations_only() {
        let mut r = Registry::default();
        r.begin_term(2);
        r.register(registration("old"), Instant::now());
        r.begin_term(3);
        r.register(registration("new"), Instant::now());
        r.begin_term(3);
        assert!(r.get(&"old".into()).is_none());
        assert!(r.get(&"new".into()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_unknown_tm_is_refused() {
        let mut r = Registry::default();
        assert!(!r.heartbeat(&"x".into(), vec![], 0, Instant::now()));
        assert!(!r.report(&"x".into(), key("j"), status(0, TaskState::Running)));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_keeps_unlisted_terminal_status_drops_unlisted_running() {
        let mut r = Registry::default();
        let tm: TaskManagerId = "a".into();
        r.register(registration("a"), Instant::now());
        r.report(&tm, key("failed"), status(0, TaskState::Failed));
        r.report(&tm, key("gone"), status(0, TaskState::Running));
        r.heartbeat(
            &tm,
            vec![(key("new"), status(0, TaskState::Running))],
            0,
            Instant::now(),
        );
        assert_eq!(
            r.task(&tm, &key("failed")).map(|s| s.state),
            Some(TaskState::Failed)
        );
        assert!(r.task(&tm, &key("gone")).is_none());
        assert!(r.task(&tm, &key("new")).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn report_older_attempt_does_not_overwrite_newer() {
        let mut r = Registry::default();
        let tm: TaskManagerId = "a".into();
        r.register(registration("a"), Instant::now());
        r.report(&tm, key("j"), status(2, TaskState::Running));
        r.report(&tm, key("j"), status(1, TaskState::Failed));
        assert_eq!(
            r.task(&tm, &key("j")).map(|s| (s.attempt, s.state)),
            Some((Attempt(2), TaskState::Running))
        );
    }
}
