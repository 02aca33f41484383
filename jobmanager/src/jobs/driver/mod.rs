//! The leader's control loop: moves every live job through its lifecycle.
//!
//! Each step compares the replicated job records with what TaskManagers
//! report (the soft registry) and commits the resulting decisions through
//! Raft: schedule and deploy CREATED jobs, finish or fail RUNNING ones,
//! complete cancellations, fail jobs whose TaskManagers are lost or never
//! came back after a leader change, and cancel tasks of jobs that are not
//! running. A step is idempotent: it only acts on differences, so running it
//! again (on every wake-up, on every tick) is safe.
//!
//! Timers that only matter while this node leads (since when a subtask is
//! missing, when a cancel was sent) live in [`Leadership`] and start afresh
//! when leadership does.

use super::taskmanager_calls::{self, cancel_job};
use crate::cluster_state::{Command, Failure, JobRecord, Placement};
use crate::context::{Context, now_ms};
use crate::scheduler::{self, Capacity};
use crate::taskmanagers::{Registry, TaskKey, TaskStatus};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{Attempt, JobId, TaskManagerId};
use eddy_sdk::rest::{JobState, TaskState};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Minimum pause between two steps: every committed write wakes the loop,
/// so this bounds its rate.
const MIN_STEP_GAP: Duration = Duration::from_millis(20);

/// What the leader knows about one placement's subtask.
#[derive(Clone, Debug)]
enum Presence {
    /// Its TaskManager has not registered with this leader.
    Unregistered,
    /// Its TaskManager was declared lost.
    Lost,
    /// Its TaskManager is alive but reports no status for this attempt.
    Missing,
    Reported(TaskStatus),
}

/// Soft timers of one leadership term.
struct Leadership {
    term: u64,
    since: Instant,
    cancel_sent: HashMap<JobId, Instant>,
    stray_cancel_sent: HashMap<(TaskManagerId, JobId), Instant>,
    missing_since: HashMap<JobId, Instant>,
}

pub struct Driver {
    ctx: Arc<Context>,
    leadership: Option<Leadership>,
}

impl Driver {
    pub fn new(ctx: Arc<Context>) -> Self {
        Driver {
            ctx,
            leadership: None,
        }
    }

    /// Runs until `shutdown` changes or its sender is dropped.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let tick = self.ctx.config.heartbeat_interval.0;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = self.ctx.shared.changed.notified() => {}
                _ = self.ctx.wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
            self.step().await;
            tokio::time::sleep(MIN_STEP_GAP).await;
        }
        info!("job driver stopped");
    }

    fn timeout(&self) -> Duration {
        self.ctx.config.heartbeat_timeout.0
    }

    /// One pass over the cluster.
    pub async fn step(&mut self) {
        self.refresh_metrics();
        if !self.ctx.is_leader() {
            if self.leadership.take().is_some() {
                info!("no longer the leader; job driver idle");
            }
            return;
        }
        let term = self.ctx.term();
        if self.leadership.as_ref().map(|l| l.term) != Some(term) {
            info!(
                term,
                "leading: taskmanagers re-register with this jobmanager"
            );
            // Heartbeats went elsewhere while another node led: what this
            // node remembers about TaskManagers is stale.
            self.ctx.registry(|r| *r = Registry::default());
            self.leadership = Some(Leadership {
                term,
                since: Instant::now(),
                cancel_sent: HashMap::new(),
                stray_cancel_sent: HashMap::new(),
                missing_since: HashMap::new(),
            });
            self.announce_rest_url().await;
        }
        self.expire_taskmanagers().await;
        self.cancel_stray_tasks();
        let mut jobs: Vec<JobRecord> = self.ctx.read(|s| {
            s.jobs
                .values()
                .filter(|j| !j.state.is_terminal())
                .cloned()
                .collect()
        });
        jobs.sort_by(|a, b| {
            a.submitted_at_ms
                .cmp(&b.submitted_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut capacity: Option<Vec<Capacity>> = None;
        for job in &jobs {
            match job.state {
                JobState::Created => self.drive_created(job, &mut capacity).await,
                JobState::Running => self.drive_running(job).await,
                JobState::Cancelling => self.drive_cancelling(job).await,
                _ => {}
            }
        }
        let live: BTreeSet<&JobId> = jobs.iter().map(|j| &j.id).collect();
        if let Some(l) = self.leadership.as_mut() {
            l.cancel_sent.retain(|id, _| live.contains(id));
            l.missing_since.retain(|id, _| live.contains(id));
            let timeout = self.ctx.config.heartbeat_timeout.0;
            l.stray_cancel_sent.retain(|_, at| at.elapsed() <= timeout);
        }
    }

    fn leadership_since(&self) -> Instant {
        self.leadership
            .as_ref()
            .map_or_else(Instant::now, |l| l.since)
    }

    async fn announce_rest_url(&self) {
        let known = self
            .ctx
            .read(|s| s.jobmanager_rest_urls.get(&self.ctx.id).cloned());
        if known.as_deref() != Some(self.ctx.rest_url.as_str()) {
            let cmd = Command::SetJobManagerRestUrl {
                node: self.ctx.id,
                url: self.ctx.rest_url.clone(),
            };
            if let Err(e) = self.ctx.write(cmd).await {
                warn!(error = %e, "cannot announce this jobmanager's REST URL");
            }
        }
    }

    fn refresh_metrics(&self) {
        let ctx = &self.ctx;
        let m = &ctx.metrics;
        {
            let raft = ctx.raft.metrics();
            let raft = raft.borrow();
            m.raft_term
                .set(i64::try_from(raft.current_term).unwrap_or(i64::MAX));
            m.raft_is_leader
                .set(i64::from(raft.current_leader == Some(ctx.id)));
            m.raft_leader_id.set(
                raft.current_leader
                    .and_then(|id| i64::try_from(id).ok())
                    .unwrap_or(0),
            );
            let applied = raft.last_applied.map_or(0, |l| l.index);
            m.raft_applied_index
                .set(i64::try_from(applied).unwrap_or(i64::MAX));
        }
        let (counts, used) = ctx.read(|s| (s.count_by_state(), s.slots_in_use()));
        m.set_jobs(&counts);
        ctx.registry(|r| {
            let alive = r.alive().count() as i64;
            m.taskmanagers_registered.set(alive);
            m.taskmanagers_lost.set(r.all().count() as i64 - alive);
            let total = i64::from(r.total_slots());
            let busy: i64 = r
                .alive()
                .map(|tm| used.get(&tm.id).map_or(0, |s| s.len() as i64))
                .sum();
            m.slots_total.set(total);
            m.slots_free.set((total - busy).max(0));
        });
    }

    /// Declares silent TaskManagers lost and fails the jobs running on them.
    async fn expire_taskmanagers(&mut self) {
        let timeout = self.timeout();
        let lost = self.ctx.registry(|r| r.expire(Instant::now(), timeout));
        for tm in lost {
            let secs = tm.silent_for.as_secs();
            warn!(tm_id = %tm.id, silent_for_s = secs, "taskmanager lost: no heartbeat");
            let jobs: Vec<JobRecord> = self
                .ctx
                .read(|s| s.active_jobs_on(&tm.id).into_iter().cloned().collect());
            for job in jobs.iter().filter(|j| j.state != JobState::Cancelling) {
                let message = format!("taskmanager {} lost: no heartbeat for {secs}s", tm.id);
                self.fail_job(job, infrastructure(message, Some(tm.id.clone())))
                    .await;
            }
        }
    }

    /// Prunes statuses of ended attempts and cancels tasks that run for a job
    /// that is unknown, terminal or at a newer attempt.
    fn cancel_stray_tasks(&mut self) {
        let jobs: HashMap<JobId, (JobState, Attempt)> = self.ctx.read(|s| {
            s.jobs
                .values()
                .map(|j| (j.id.clone(), (j.state, j.attempt)))
                .collect()
        });
        let mut strays: BTreeSet<(TaskManagerId, String, JobId)> = BTreeSet::new();
        self.ctx.registry(|r| {
            r.retain_tasks(|_, key, status| match jobs.get(&key.job_id) {
                Some((state, attempt)) => {
                    !status.is_terminal() || (!state.is_terminal() && status.attempt == *attempt)
                }
                None => !status.is_terminal(),
            });
            for tm in r.alive() {
                for (key, status) in tm.tasks.iter().filter(|(_, s)| !s.is_terminal()) {
                    let stray = match jobs.get(&key.job_id) {
                        None => true,
                        Some((state, attempt)) => state.is_terminal() || status.attempt < *attempt,
                    };
                    if stray {
                        strays.insert((tm.id.clone(), tm.rpc_addr.clone(), key.job_id.clone()));
                    }
                }
            }
        });
        let Some(l) = self.leadership.as_mut() else {
            return;
        };
        for (tm_id, addr, job_id) in strays {
            let key = (tm_id.clone(), job_id.clone());
            if l.stray_cancel_sent.contains_key(&key) {
                continue;
            }
            info!(%tm_id, %job_id, "cancelling tasks of a job that is not running there");
            l.stray_cancel_sent.insert(key, Instant::now());
            cancel_job(&self.ctx, &job_id, vec![(tm_id, addr)]);
        }
    }

    fn presence(&self, job: &JobRecord) -> Vec<(Placement, Presence)> {
        self.ctx.registry(|r| {
            job.placements
                .iter()
                .map(|p| {
                    let presence = match r.get(&p.tm_id) {
                        None => Presence::Unregistered,
                        Some(tm) if tm.lost => Presence::Lost,
                        Some(tm) => {
                            let key = TaskKey {
                                job_id: job.id.clone(),
                                vertex: p.vertex,
                                index: p.index,
                            };
                            match tm.tasks.get(&key) {
                                Some(status) if status.attempt == job.attempt => {
                                    Presence::Reported(status.clone())
                                }
                                _ => Presence::Missing,
                            }
                        }
                    };
                    (p.clone(), presence)
                })
                .collect()
        })
    }

    async fn drive_created(&mut self, job: &JobRecord, capacity: &mut Option<Vec<Capacity>>) {
        if !job.placements.is_empty() {
            self.recover_interrupted_deploy(job).await;
            return;
        }
        let vertices = match scheduler::vertices(&job.spec_json) {
            Ok(v) => v,
            Err(e) => {
                let failure = Failure {
                    class: FailureClass::UserCode,
                    message: format!("the stored job spec is invalid: {}", e.message),
                    chain: vec![e.message.clone()],
                    taskmanager: None,
                    vertex: None,
                    time_ms: now_ms(),
                };
                self.fail_job(job, failure).await;
                return;
            }
        };
        let ctx = &self.ctx;
        let cap = capacity
            .get_or_insert_with(|| ctx.read(|s| ctx.registry(|r| scheduler::capacity(s, r))));
        match scheduler::solve(cap, &vertices) {
            Ok(placements) => {
                for p in &placements {
                    if let Some(c) = cap.iter_mut().find(|c| c.tm_id == p.tm_id) {
                        c.used.insert(p.slot);
                    }
                }
                let attempt = job.attempt;
                let cmd = Command::JobScheduled {
                    id: job.id.clone(),
                    attempt,
                    placements: placements.clone(),
                    time_ms: now_ms(),
                };
                if let Err(e) = self.ctx.write(cmd).await {
                    warn!(job_id = %job.id, error = %e, "cannot commit the job's placements");
                    return;
                }
                let tms: Vec<String> = placements
                    .iter()
                    .map(|p| p.tm_id.to_string())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                info!(job_id = %job.id, attempt = attempt.0, ?tms, "job scheduled");
                self.deploy(job, attempt, &placements).await;
            }
            Err(shortage) => {
                let message = shortage.to_string();
                if job.status_message.as_deref() != Some(message.as_str()) {
                    info!(job_id = %job.id, needed = shortage.needed, free = shortage.free, "job waiting for slots");
                    let cmd = Command::SetStatusMessage {
                        id: job.id.clone(),
                        message: Some(message),
                    };
                    if let Err(e) = self.ctx.write(cmd).await {
                        warn!(job_id = %job.id, error = %e, "cannot record why the job waits");
                    }
                }
            }
        }
    }

    async fn deploy(&mut self, job: &JobRecord, attempt: Attempt, placements: &[Placement]) {
        match taskmanager_calls::deploy(&self.ctx, &job.id, attempt, &job.spec_json, placements)
            .await
        {
            Ok(()) => {
                let cmd = Command::JobStateChanged {
                    id: job.id.clone(),
                    attempt: Some(attempt),
                    state: JobState::Running,
                    time_ms: now_ms(),
                    message: None,
                    failure: None,
                };
                match self.ctx.write(cmd).await {
                    Ok(()) => info!(job_id = %job.id, attempt = attempt.0, "job running"),
                    Err(e) => {
                        warn!(job_id = %job.id, error = %e, "cannot record the job as running")
                    }
                }
            }
            Err(e) => {
                let chain = eddy_sdk::error::error_chain(&e);
                let tm = match &e {
                    taskmanager_calls::Error::Gone { tm_id }
                    | taskmanager_calls::Error::Address { tm_id, .. }
                    | taskmanager_calls::Error::Rpc { tm_id, .. }
                    | taskmanager_calls::Error::Timeout { tm_id, .. } => tm_id.clone(),
                };
                let mut job = job.clone();
                job.attempt = attempt;
                job.placements = placements.to_vec();
                let failure = Failure {
                    class: FailureClass::Infrastructure,
                    message: chain.join(": "),
                    chain,
                    taskmanager: Some(tm),
                    vertex: None,
                    time_ms: now_ms(),
                };
                self.fail_job(&job, failure).await;
            }
        }
    }

    /// A CREATED job with placements was scheduled by an earlier leader that
    /// stopped before recording the deploy's outcome. If its tasks are
    /// running, the deploy happened; if they do not show up within the
    /// heartbeat timeout, the job fails.
    async fn recover_interrupted_deploy(&mut self, job: &JobRecord) {
        let presence = self.presence(job);
        let all_up = presence.iter().all(|(_, p)| {
            matches!(p, Presence::Reported(s) if matches!(s.state, TaskState::Deploying | TaskState::Running | TaskState::Finished))
        });
        if all_up {
            let cmd = Command::JobStateChanged {
                id: job.id.clone(),
                attempt: Some(job.attempt),
                state: JobState::Running,
                time_ms: now_ms(),
                message: None,
                failure: None,
            };
            match self.ctx.write(cmd).await {
                Ok(()) => {
                    info!(job_id = %job.id, "job's tasks found running after a leader change")
                }
                Err(e) => warn!(job_id = %job.id, error = %e, "cannot record the job as running"),
            }
        } else if self.leadership_since().elapsed() > self.timeout() {
            let message = format!(
                "deployment of attempt {} was interrupted by a jobmanager leader change and its tasks did not come up",
                job.attempt.0
            );
            self.fail_job(job, infrastructure(message, None)).await;
        }
    }

    async fn drive_running(&mut self, job: &JobRecord) {
        let presence = self.presence(job);
        if let Some((p, status)) = presence.iter().find_map(|(p, s)| match s {
            Presence::Reported(st) if st.state == TaskState::Failed => Some((p, st)),
            _ => None,
        }) {
            let chain = if status.failure_chain.is_empty() {
                vec![format!(
                    "subtask {}/{} failed on taskmanager {}",
                    p.vertex, p.index, p.tm_id
                )]
            } else {
                status.failure_chain.clone()
            };
            let failure = Failure {
                class: status.failure_class.unwrap_or(FailureClass::UserCode),
                message: chain[0].clone(),
                chain,
                taskmanager: Some(p.tm_id.clone()),
                vertex: Some(p.vertex),
                time_ms: now_ms(),
            };
            self.fail_job(job, failure).await;
            return;
        }
        let all_finished = presence
            .iter()
            .all(|(_, s)| matches!(s, Presence::Reported(st) if st.state == TaskState::Finished));
        if all_finished {
            let cmd = Command::JobStateChanged {
                id: job.id.clone(),
                attempt: Some(job.attempt),
                state: JobState::Finished,
                time_ms: now_ms(),
                message: None,
                failure: None,
            };
            match self.ctx.write(cmd).await {
                Ok(()) => info!(job_id = %job.id, "job finished"),
                Err(e) => warn!(job_id = %job.id, error = %e, "cannot record the job as finished"),
            }
            return;
        }
        let grace_over = self.leadership_since().elapsed() > self.timeout();
        for (p, s) in &presence {
            let message = match s {
                Presence::Unregistered if grace_over => {
                    format!("taskmanager {} did not re-register", p.tm_id)
                }
                Presence::Lost => format!("taskmanager {} lost: no heartbeat", p.tm_id),
                Presence::Reported(st) if st.state == TaskState::Canceled => {
                    format!(
                        "subtask {}/{} was canceled on taskmanager {} while the job was running",
                        p.vertex, p.index, p.tm_id
                    )
                }
                _ => continue,
            };
            self.fail_job(job, infrastructure(message, Some(p.tm_id.clone())))
                .await;
            return;
        }
        let missing = presence
            .iter()
            .find(|(_, s)| matches!(s, Presence::Missing));
        let timeout = self.timeout();
        let Some(l) = self.leadership.as_mut() else {
            return;
        };
        match missing {
            None => {
                l.missing_since.remove(&job.id);
            }
            Some((p, _)) => {
                let since = *l
                    .missing_since
                    .entry(job.id.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() > timeout {
                    let message = format!(
                        "subtask {}/{} of attempt {} is not running on taskmanager {}",
                        p.vertex, p.index, job.attempt.0, p.tm_id
                    );
                    let tm = p.tm_id.clone();
                    self.fail_job(job, infrastructure(message, Some(tm))).await;
                }
            }
        }
    }

    async fn drive_cancelling(&mut self, job: &JobRecord) {
        let Some(l) = self.leadership.as_mut() else {
            return;
        };
        let sent = match l.cancel_sent.get(&job.id) {
            Some(at) => *at,
            None => {
                let now = Instant::now();
                l.cancel_sent.insert(job.id.clone(), now);
                let tms = self.alive_addresses(job);
                info!(job_id = %job.id, tms = tms.len(), "cancelling job's tasks");
                cancel_job(&self.ctx, &job.id, tms);
                now
            }
        };
        let presence = self.presence(job);
        let stopped = presence.iter().all(|(_, s)| match s {
            Presence::Unregistered | Presence::Lost | Presence::Missing => true,
            Presence::Reported(st) => st.is_terminal(),
        });
        let timed_out = sent.elapsed() > self.timeout();
        if !stopped && !timed_out {
            return;
        }
        if !stopped {
            warn!(job_id = %job.id, "tasks did not confirm the cancel within the heartbeat timeout; marking the job canceled");
        }
        let cmd = Command::JobStateChanged {
            id: job.id.clone(),
            attempt: None,
            state: JobState::Canceled,
            time_ms: now_ms(),
            message: None,
            failure: None,
        };
        match self.ctx.write(cmd).await {
            Ok(()) => info!(job_id = %job.id, "job canceled"),
            Err(e) => warn!(job_id = %job.id, error = %e, "cannot record the job as canceled"),
        }
    }

    /// The rpc addresses of the job's live TaskManagers.
    fn alive_addresses(&self, job: &JobRecord) -> Vec<(TaskManagerId, String)> {
        let tms = job.taskmanagers();
        self.ctx.registry(|r| {
            tms.iter()
                .filter_map(|id| r.alive_tm(id).map(|tm| (id.clone(), tm.rpc_addr.clone())))
                .collect()
        })
    }

    /// Commits the job's failure and cancels its tasks on its live TaskManagers.
    async fn fail_job(&mut self, job: &JobRecord, failure: Failure) {
        let class = failure.class;
        let chain = failure.chain.clone();
        let cmd = Command::JobStateChanged {
            id: job.id.clone(),
            attempt: Some(job.attempt),
            state: JobState::Failed,
            time_ms: failure.time_ms,
            message: None,
            failure: Some(failure),
        };
        match self.ctx.write(cmd).await {
            Ok(()) => {
                error!(job_id = %job.id, class = class.as_str(), ?chain, "job failed");
                let tms = self.alive_addresses(job);
                cancel_job(&self.ctx, &job.id, tms);
            }
            Err(e) => warn!(job_id = %job.id, error = %e, "cannot record the job's failure"),
        }
    }
}

fn infrastructure(message: String, taskmanager: Option<TaskManagerId>) -> Failure {
    Failure {
        class: FailureClass::Infrastructure,
        chain: vec![message.clone()],
        message,
        taskmanager,
        vertex: None,
        time_ms: now_ms(),
    }
}
