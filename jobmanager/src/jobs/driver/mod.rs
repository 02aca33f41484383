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

mod states;

use super::taskmanager_calls::cancel_job;
use crate::checkpoint::service::{self, RunningJob, Service};
use crate::cluster_state::{
    Command, ExceptionRecord, Failure, FailureAction, FinalTask, JobRecord, Placement,
};
use crate::context::{Context, now_ms};
use crate::restart::Decision;
use crate::scheduler::Capacity;
use crate::taskmanagers::{TaskKey, TaskStatus};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{Attempt, JobId, TaskManagerId};
use eddy_sdk::rest::JobState;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Minimum pause between two steps: every committed write wakes the loop,
/// so this bounds its rate.
const MIN_STEP_GAP: Duration = Duration::from_millis(20);

/// Least time between two attempts to announce this node's REST URL.
const ANNOUNCE_GAP: Duration = Duration::from_secs(2);

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
    /// The checkpoint coordinators of running jobs (`None` when another
    /// driver of this process took the hub's events: tests only).
    checkpoints: Option<Service>,
    last_announce: Option<Instant>,
}

impl Driver {
    pub fn new(ctx: Arc<Context>) -> Self {
        Driver {
            checkpoints: Service::new(ctx.clone()),
            ctx,
            leadership: None,
            last_announce: None,
        }
    }

    /// Runs until `shutdown` changes or its sender is dropped.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let tick = self.ctx.config.heartbeat_interval.0;
        loop {
            let sleep = self.until_checkpoint_due().map_or(tick, |d| d.min(tick));
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = self.ctx.shared.changed.notified() => {}
                _ = self.ctx.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
            self.step().await;
            tokio::time::sleep(MIN_STEP_GAP).await;
        }
        info!("job driver stopped");
    }

    /// How long until a checkpoint coordinator next has work of its own
    /// (a trigger or an expiry), so a 10 s interval is not rounded up to
    /// the next heartbeat tick.
    fn until_checkpoint_due(&self) -> Option<Duration> {
        let due = self.checkpoints.as_ref()?.next_due_ms()?;
        let ms = due.saturating_sub(now_ms()).max(0);
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    fn timeout(&self) -> Duration {
        self.ctx.config.heartbeat_timeout.0
    }

    /// One pass over the cluster.
    pub async fn step(&mut self) {
        self.refresh_metrics().await;
        self.announce().await;
        if !self.ctx.is_leader() {
            if self.leadership.take().is_some() {
                info!("no longer the leader; job driver idle");
                if let Some(c) = self.checkpoints.as_mut() {
                    c.reset();
                }
            }
            return;
        }
        if !self.ctx.leadership_settled() {
            // The next applied entry (this leader's first) wakes the loop.
            return;
        }
        let term = self.ctx.term();
        if self.leadership.as_ref().map(|l| l.term) != Some(term) {
            info!(
                term,
                "leading: taskmanagers re-register with this jobmanager"
            );
            // Heartbeats went elsewhere while another node led: what this
            // node remembers about TaskManagers from then is stale.
            self.ctx.registry(|r| r.begin_term(term));
            self.leadership = Some(Leadership {
                term,
                since: Instant::now(),
                cancel_sent: HashMap::new(),
                stray_cancel_sent: HashMap::new(),
                missing_since: HashMap::new(),
            });
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
                JobState::Restarting => self.drive_restarting(job).await,
                _ => {}
            }
        }
        self.step_checkpoints().await;
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

    /// Makes sure the membership records this node's REST URL (at most
    /// every [`ANNOUNCE_GAP`] while it differs).
    async fn announce(&mut self) {
        if self
            .last_announce
            .is_some_and(|at| at.elapsed() < ANNOUNCE_GAP)
        {
            return;
        }
        match crate::cluster::announce_self(&self.ctx).await {
            Ok(false) => return,
            Ok(true) => {
                info!(rest_url = %self.ctx.rest_url, "announced this jobmanager's REST URL")
            }
            // No leader yet, or another membership change (often another
            // node's announcement) is in progress: the next attempt will do.
            Err(crate::cluster::AnnounceError::LeaderUnknown)
            | Err(crate::cluster::AnnounceError::Refused { status: 409, .. }) => {}
            Err(e) => {
                let chain = eddy_sdk::error::error_chain(&e);
                warn!(error = ?chain, "cannot announce this jobmanager's REST URL; retrying");
            }
        }
        self.last_announce = Some(Instant::now());
    }

    async fn refresh_metrics(&self) {
        let ctx = &self.ctx;
        let m = &ctx.metrics;
        m.set_raft(&crate::cluster::status(ctx).await);
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

    /// The last reported status of every subtask of the job's current
    /// attempt, to keep in its record when it ends.
    fn final_tasks(&self, job: &JobRecord) -> Vec<FinalTask> {
        self.presence(job)
            .into_iter()
            .filter_map(|(p, presence)| match presence {
                Presence::Reported(s) => Some(FinalTask {
                    vertex: p.vertex,
                    index: p.index,
                    state: s.state,
                    metrics: s.metrics,
                }),
                _ => None,
            })
            .collect()
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

    /// Records the job's failure and cancels its tasks on its live
    /// TaskManagers. A job with a restart strategy (jobs with checkpoints have
    /// one) RESTARTS from its latest checkpoint after the strategy's backoff,
    /// until it fails too often; any other job FAILS.
    async fn fail_job(&mut self, job: &JobRecord, failure: Failure) {
        self.fail_job_with(job, failure, None).await;
    }

    async fn fail_job_with(
        &mut self,
        job: &JobRecord,
        failure: Failure,
        damaged_checkpoint: Option<u64>,
    ) {
        let class = failure.class;
        let chain = failure.chain.clone();
        let now = now_ms();
        let restart = eddy_sdk::spec::parse_json(&job.spec_json)
            .ok()
            .and_then(|spec| service::restart_settings(&self.ctx.config, &spec).ok())
            .flatten();
        let mut tracker = job.restart.clone();
        let (action, restart_at_ms) = match restart.as_ref().map(|r| tracker.on_failure(r, now)) {
            Some(Decision::Restart { after }) => {
                let backoff_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                let restore_checkpoint = self.ctx.read(|s| {
                    s.checkpoint_catalog(&job.id).and_then(|c| {
                        c.completed
                            .iter()
                            .chain(&c.savepoints)
                            .filter(|c| Some(c.id.0) != damaged_checkpoint)
                            .map(|c| c.id.0)
                            .max()
                    })
                });
                (
                    FailureAction::Restart {
                        backoff_ms,
                        restore_checkpoint,
                    },
                    Some(now.saturating_add(i64::try_from(backoff_ms).unwrap_or(i64::MAX))),
                )
            }
            Some(Decision::Fail { reason }) => {
                warn!(job_id = %job.id, %reason, "restart strategy exhausted");
                (FailureAction::Fail, None)
            }
            None => (FailureAction::Fail, None),
        };
        let mut failure = failure;
        if let (FailureAction::Fail, Some(_)) = (&action, restart) {
            // Say why the job is not restarted again.
            failure.chain.push(
                "the restart strategy allows no more restarts (see the job's exceptions)".into(),
            );
        }
        let restarting = matches!(action, FailureAction::Restart { .. });
        let cmd = Command::JobFailure {
            id: job.id.clone(),
            attempt: job.attempt,
            record: ExceptionRecord {
                failure,
                attempt: job.attempt,
                action: action.clone(),
                damaged_checkpoint,
            },
            tracker,
            restart_at_ms,
            final_tasks: if restarting {
                Vec::new()
            } else {
                self.final_tasks(job)
            },
        };
        match self.ctx.write(cmd).await {
            Ok(()) => {
                if restarting {
                    let labels = vec![("job_id".to_string(), job.id.to_string())];
                    self.ctx.metrics.job_restarts.get_or_create(&labels).inc();
                    warn!(job_id = %job.id, class = class.as_str(), ?chain, ?action, "job attempt failed; restarting");
                } else {
                    error!(job_id = %job.id, class = class.as_str(), ?chain, "job failed");
                }
                let tms = self.alive_addresses(job);
                cancel_job(&self.ctx, &job.id, tms);
            }
            Err(e) => warn!(job_id = %job.id, error = %e, "cannot record the job's failure"),
        }
    }
}

impl Driver {
    /// Runs the checkpoint coordinators of the RUNNING jobs, and fails (or
    /// restarts) the jobs whose checkpoints keep failing.
    async fn step_checkpoints(&mut self) {
        let Some(mut service) = self.checkpoints.take() else {
            return;
        };
        let jobs: Vec<JobRecord> = self.ctx.read(|s| {
            s.jobs
                .values()
                .filter(|j| j.state == JobState::Running)
                .cloned()
                .collect()
        });
        let running: Vec<RunningJob<'_>> = jobs
            .iter()
            .map(|job| {
                let presence = self.presence(job);
                let sources = source_vertices(job);
                RunningJob {
                    record: job,
                    ready: presence.iter().all(|(_, p)| {
                        matches!(p, Presence::Reported(s) if s.state == eddy_sdk::rest::TaskState::Running)
                    }),
                    taskmanagers: self.alive_addresses(job),
                    sources_finished: !sources.is_empty()
                        && presence
                            .iter()
                            .filter(|(p, _)| sources.contains(&p.vertex))
                            .all(|(_, s)| {
                                matches!(s, Presence::Reported(st) if st.metrics.watermark_ms == Some(i64::MAX))
                            }),
                }
            })
            .collect();
        let failed = service.step(&running).await;
        self.checkpoints = Some(service);
        for (id, reason) in failed {
            if let Some(job) = jobs.iter().find(|j| j.id == id) {
                self.fail_job(job, infrastructure(reason, None)).await;
            }
        }
    }
}

/// The vertices of `job` that start with a source.
fn source_vertices(job: &JobRecord) -> BTreeSet<eddy_sdk::ids::VertexId> {
    let Ok(spec) = eddy_sdk::spec::parse_json(&job.spec_json) else {
        return BTreeSet::new();
    };
    let Ok(graph) = eddy_sdk::graph::build(&spec) else {
        return BTreeSet::new();
    };
    graph
        .vertices
        .iter()
        .filter(|v| {
            v.nodes
                .first()
                .and_then(|n| spec.node(n))
                .is_some_and(|n| n.kind.is_source())
        })
        .map(|v| v.id)
        .collect()
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
