//! The table of subtasks this TaskManager runs or recently ran: their state,
//! cancellation token, counters and failure. It is the single source of the
//! statuses sent to the JobManager (every change is queued for
//! `ReportTaskStatus`; heartbeats and re-registrations carry a snapshot).
//!
//! Shared by the control runtime and the slot threads: a std mutex, never held
//! across an await.

use crate::metrics::{Metrics, StateLabel, StateLabels, SubtaskLabels};
use crate::runtime::checkpoint::Command;
use crate::runtime::metrics::SubtaskMetrics;
use eddy_proto::v1 as pb;
use eddy_sdk::error::FailureClass;
use eddy_sdk::ids::{Attempt, JobId, VertexId};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One subtask of one job (any attempt).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub job_id: JobId,
    pub vertex: VertexId,
    pub index: u32,
}

/// Why a subtask failed: the error chain (outermost first) and its class.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub chain: Vec<String>,
    pub class: FailureClass,
    /// The checkpoint restored from, when it turned out damaged.
    pub damaged_checkpoint: Option<u64>,
}

impl Failure {
    pub fn from_error(e: &(dyn std::error::Error + 'static), class: FailureClass) -> Self {
        Failure {
            chain: eddy_sdk::error::error_chain(e),
            class,
            damaged_checkpoint: None,
        }
    }
}

struct Entry {
    attempt: Attempt,
    slot: u32,
    state: pb::TaskState,
    failure: Option<Failure>,
    metrics: Arc<SubtaskMetrics>,
    cancel: CancellationToken,
    ended_at: Option<Instant>,
    /// Counter values already added to the Prometheus counters.
    exported_in: u64,
    exported_out: u64,
    exported_late: u64,
    exported_holds: u64,
    /// Checkpoint commands for the running subtask (jobs with checkpoints).
    commands: Option<mpsc::UnboundedSender<Command>>,
    /// Whether the subtask runs a source (triggers go to sources only).
    source: bool,
}

fn is_terminal(s: pb::TaskState) -> bool {
    matches!(
        s,
        pb::TaskState::Finished | pb::TaskState::Canceled | pb::TaskState::Failed
    )
}

#[derive(Clone)]
pub struct TaskTable {
    inner: Arc<Mutex<HashMap<TaskKey, Entry>>>,
    reports: mpsc::UnboundedSender<pb::TaskStatus>,
}

impl TaskTable {
    /// The table and the stream of status changes to report.
    pub fn new() -> (TaskTable, mpsc::UnboundedReceiver<pb::TaskStatus>) {
        let (reports, rx) = mpsc::unbounded_channel();
        (
            TaskTable {
                inner: Arc::default(),
                reports,
            },
            rx,
        )
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TaskKey, Entry>> {
        // Critical sections are single map operations: poisoning cannot leave
        // the table inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(key: &TaskKey, e: &Entry) -> pb::TaskStatus {
        pb::TaskStatus {
            subtask: Some(pb::SubtaskRef {
                job_id: key.job_id.0.clone(),
                vertex: key.vertex.0,
                index: key.index,
                attempt: e.attempt.0,
            }),
            state: e.state as i32,
            failure_chain: e
                .failure
                .as_ref()
                .map(|f| f.chain.clone())
                .unwrap_or_default(),
            failure_class: e
                .failure
                .as_ref()
                .map(|f| f.class.as_str().to_string())
                .unwrap_or_default(),
            metrics: Some(e.metrics.to_proto()),
            slot: e.slot,
            damaged_checkpoint: e
                .failure
                .as_ref()
                .and_then(|f| f.damaged_checkpoint)
                .unwrap_or(0),
        }
    }

    /// Whether this exact attempt of the subtask is already known (a repeated
    /// DeployTasks must not start it twice).
    pub fn has_attempt(&self, key: &TaskKey, attempt: Attempt) -> bool {
        self.lock().get(key).is_some_and(|e| e.attempt == attempt)
    }

    /// Adds a subtask in DEPLOYING, replacing (and canceling) an older attempt.
    pub fn insert(
        &self,
        key: TaskKey,
        attempt: Attempt,
        slot: u32,
        cancel: CancellationToken,
    ) -> Arc<SubtaskMetrics> {
        let metrics = Arc::new(SubtaskMetrics::default());
        let entry = Entry {
            attempt,
            slot,
            state: pb::TaskState::Deploying,
            failure: None,
            metrics: metrics.clone(),
            cancel,
            ended_at: None,
            exported_in: 0,
            exported_out: 0,
            exported_late: 0,
            exported_holds: 0,
            commands: None,
            source: false,
        };
        let status = Self::status(&key, &entry);
        if let Some(old) = self.lock().insert(key, entry) {
            old.cancel.cancel();
        }
        let _ = self.reports.send(status);
        metrics
    }

    /// Moves `attempt` of the subtask to `state`. Terminal states are final,
    /// and a stale attempt changes nothing.
    pub fn transition(
        &self,
        key: &TaskKey,
        attempt: Attempt,
        state: pb::TaskState,
        failure: Option<Failure>,
    ) {
        let status = {
            let mut map = self.lock();
            let Some(e) = map.get_mut(key) else { return };
            if e.attempt != attempt || is_terminal(e.state) || e.state == state {
                return;
            }
            e.state = state;
            e.failure = failure;
            if is_terminal(state) {
                e.ended_at = Some(Instant::now());
            }
            Self::status(key, e)
        };
        let _ = self.reports.send(status);
    }

    /// Reports the subtask's status with its current metrics now, instead
    /// of at the next heartbeat.
    pub fn report_now(&self, key: &TaskKey, attempt: Attempt) {
        let status = {
            let map = self.lock();
            let Some(e) = map.get(key).filter(|e| e.attempt == attempt) else {
                return;
            };
            Self::status(key, e)
        };
        let _ = self.reports.send(status);
    }

    /// Connects `attempt` of the subtask to checkpoint commands.
    pub fn set_commands(
        &self,
        key: &TaskKey,
        attempt: Attempt,
        commands: mpsc::UnboundedSender<Command>,
        source: bool,
    ) {
        if let Some(e) = self.lock().get_mut(key)
            && e.attempt == attempt
        {
            e.commands = Some(commands);
            e.source = source;
        }
    }

    /// Sends `cmd` to the live subtasks of `attempt` of `job_id` (only to
    /// source subtasks when `sources_only`); returns how many received it.
    pub fn command(
        &self,
        job_id: &JobId,
        attempt: Attempt,
        cmd: &Command,
        sources_only: bool,
    ) -> usize {
        self.lock()
            .iter()
            .filter(|(k, e)| {
                &k.job_id == job_id
                    && e.attempt == attempt
                    && !is_terminal(e.state)
                    && (e.source || !sources_only)
            })
            .filter_map(|(_, e)| e.commands.as_ref())
            .filter(|tx| tx.send(cmd.clone()).is_ok())
            .count()
    }

    /// Cancels every subtask of `job_id`; returns how many were still running.
    pub fn cancel_job(&self, job_id: &JobId) -> usize {
        let map = self.lock();
        let mut n = 0;
        for (k, e) in map.iter() {
            if &k.job_id == job_id {
                e.cancel.cancel();
                n += usize::from(!is_terminal(e.state));
            }
        }
        n
    }

    /// Cancels the subtasks of `job_id` from attempts before `attempt`: a
    /// newer deployment supersedes them even where it placed nothing here.
    pub fn cancel_older_attempts(&self, job_id: &JobId, attempt: Attempt) {
        for (k, e) in self.lock().iter() {
            if &k.job_id == job_id && e.attempt < attempt {
                e.cancel.cancel();
            }
        }
    }

    /// Cancels everything (shutdown).
    pub fn cancel_all(&self) {
        for e in self.lock().values() {
            e.cancel.cancel();
        }
    }

    /// Every subtask's current status.
    pub fn statuses(&self) -> Vec<pb::TaskStatus> {
        let map = self.lock();
        let mut out: Vec<_> = map.iter().map(|(k, e)| (k, Self::status(k, e))).collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// Statuses of subtasks not yet in a terminal state.
    pub fn active_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| !is_terminal(e.state))
            .count()
    }

    /// Slots running at least one non-terminal subtask.
    pub fn slots_in_use(&self) -> BTreeSet<u32> {
        self.lock()
            .values()
            .filter(|e| !is_terminal(e.state))
            .map(|e| e.slot)
            .collect()
    }

    /// Per metrics interval: turns accumulated times into ratios, updates the
    /// Prometheus metrics, and forgets subtasks that ended over `keep` ago.
    pub fn sample(&self, interval: Duration, keep: Duration, m: &Metrics) {
        let mut map = self.lock();
        let mut by_state = [0i64; 5];
        map.retain(|k, e| {
            let labels = SubtaskLabels {
                job_id: k.job_id.0.clone(),
                vertex: k.vertex.0,
                subtask: k.index,
            };
            if e.ended_at.is_some_and(|t| t.elapsed() > keep) {
                m.records_in.remove(&labels);
                m.records_out.remove(&labels);
                m.late_records_dropped.remove(&labels);
                m.watermark_alignment_holds.remove(&labels);
                m.backpressured_ratio.remove(&labels);
                m.latency_p50.remove(&labels);
                m.latency_p99.remove(&labels);
                return false;
            }
            e.metrics.sample(interval);
            let (rin, rout) = (
                e.metrics.records_in.load(Relaxed),
                e.metrics.records_out.load(Relaxed),
            );
            m.records_in
                .get_or_create(&labels)
                .inc_by(rin.saturating_sub(e.exported_in));
            m.records_out
                .get_or_create(&labels)
                .inc_by(rout.saturating_sub(e.exported_out));
            (e.exported_in, e.exported_out) = (rin, rout);
            let late = e.metrics.late_records_dropped.load(Relaxed);
            m.late_records_dropped
                .get_or_create(&labels)
                .inc_by(late.saturating_sub(e.exported_late));
            e.exported_late = late;
            let holds = e.metrics.alignment_holds.load(Relaxed);
            if holds > 0 {
                m.watermark_alignment_holds
                    .get_or_create(&labels)
                    .inc_by(holds.saturating_sub(e.exported_holds));
                e.exported_holds = holds;
            }
            m.backpressured_ratio
                .get_or_create(&labels)
                .set(f64::from(e.metrics.backpressured_ms_per_sec()) / 1000.0);
            let latency = e.metrics.latency.counts();
            for (family, q) in [(&m.latency_p50, 0.5), (&m.latency_p99, 0.99)] {
                if let Some(ms) = eddy_sdk::latency::quantile_ms(&latency, q) {
                    family.get_or_create(&labels).set(ms / 1000.0);
                }
            }
            let i = match e.state {
                pb::TaskState::Running => 1,
                pb::TaskState::Finished => 2,
                pb::TaskState::Canceled => 3,
                pb::TaskState::Failed => 4,
                _ => 0,
            };
            by_state[i] += 1;
            true
        });
        let slots: BTreeSet<u32> = map
            .values()
            .filter(|e| !is_terminal(e.state))
            .map(|e| e.slot)
            .collect();
        drop(map);
        m.slots_used.set(slots.len() as i64);
        let states = [
            StateLabel::Deploying,
            StateLabel::Running,
            StateLabel::Finished,
            StateLabel::Canceled,
            StateLabel::Failed,
        ];
        for (state, n) in states.into_iter().zip(by_state) {
            m.tasks.get_or_create(&StateLabels { state }).set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TaskKey {
        TaskKey {
            job_id: JobId("j".into()),
            vertex: VertexId(1),
            index: 0,
        }
    }

    #[test]
    fn transition_terminal_state_is_final_and_reported_once() {
        let (t, mut rx) = TaskTable::new();
        t.insert(key(), Attempt(0), 0, CancellationToken::new());
        t.transition(&key(), Attempt(0), pb::TaskState::Running, None);
        t.transition(&key(), Attempt(0), pb::TaskState::Canceled, None);
        t.transition(&key(), Attempt(0), pb::TaskState::Failed, None);
        let states: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|s| s.state)
            .collect();
        let expected = [
            pb::TaskState::Deploying,
            pb::TaskState::Running,
            pb::TaskState::Canceled,
        ];
        assert_eq!(states, expected.map(|s| s as i32));
    }

    /// A source whose input ended is reported at once with its watermark,
    /// and only for the attempt that is current.
    #[test]
    fn report_now_sends_current_metrics_of_current_attempt_only() {
        let (t, mut rx) = TaskTable::new();
        let metrics = t.insert(key(), Attempt(1), 0, CancellationToken::new());
        t.transition(&key(), Attempt(1), pb::TaskState::Running, None);
        while rx.try_recv().is_ok() {}
        metrics.watermark.store(i64::MAX, Relaxed);
        t.report_now(&key(), Attempt(0));
        assert!(rx.try_recv().is_err(), "a stale attempt reports nothing");
        t.report_now(&key(), Attempt(1));
        let s = rx.try_recv().expect("a status report");
        assert_eq!(s.state, pb::TaskState::Running as i32);
        assert_eq!(s.metrics.map(|m| m.watermark_ms), Some(i64::MAX));
    }

    #[test]
    fn insert_newer_attempt_cancels_older_and_ignores_its_updates() {
        let (t, _rx) = TaskTable::new();
        let old = CancellationToken::new();
        t.insert(key(), Attempt(0), 0, old.clone());
        t.insert(key(), Attempt(1), 0, CancellationToken::new());
        assert!(old.is_cancelled());
        t.transition(&key(), Attempt(0), pb::TaskState::Failed, None);
        assert_eq!(t.statuses()[0].state, pb::TaskState::Deploying as i32);
    }

    /// Late records dropped by a subtask's operators reach `/metrics` as a
    /// counter labelled with the job, vertex and subtask.
    #[test]
    fn sample_exports_late_records_dropped_per_subtask() {
        let (t, _rx) = TaskTable::new();
        let m = t.insert(key(), Attempt(0), 0, CancellationToken::new());
        let (metrics, registry) = Metrics::new();
        let keep = Duration::from_secs(60);
        m.late_records_dropped.store(5, Relaxed);
        t.sample(Duration::from_secs(1), keep, &metrics);
        m.late_records_dropped.store(7, Relaxed);
        t.sample(Duration::from_secs(1), keep, &metrics);
        let text = eddy_sdk::server::metrics::encode(&registry);
        assert!(
            text.contains(
                "eddy_taskmanager_late_records_dropped_total{job_id=\"j\",vertex=\"1\",subtask=\"0\"} 7"
            ),
            "{text}"
        );
    }

    #[test]
    fn failure_is_carried_in_status() {
        let (t, _rx) = TaskTable::new();
        t.insert(key(), Attempt(0), 0, CancellationToken::new());
        let err = std::io::Error::other("disk full");
        t.transition(
            &key(),
            Attempt(0),
            pb::TaskState::Failed,
            Some(Failure::from_error(&err, FailureClass::Resources)),
        );
        let s = &t.statuses()[0];
        assert_eq!(s.failure_chain, vec!["disk full".to_string()]);
        assert_eq!(s.failure_class, "resources");
    }
}
