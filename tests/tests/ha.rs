//! A JobManager leader can fail without stopping a single task (issue 7).
//!
//! Three JobManagers (one Raft group) and two TaskManagers run the keyed
//! window job of `windowed_job` (sequence-numbered rows into the
//! exactly-once file sink, checkpointing every 500 ms). The leader is
//! SIGKILLed, or SIGSTOPped for longer than the election timeout and then
//! resumed. Each time: a new leader is elected; the survivors answer REST;
//! the job stays RUNNING with every subtask on the same TaskManager in the
//! same deployment attempt, and no TaskManager deployed anything again;
//! checkpoints resume under the new leader; and the output ends up with
//! every window exactly once. The killed node restarts on its data dir and
//! catches up; the paused one steps down, and commands carrying its old
//! term are refused by the TaskManagers.

use eddy_sdk::client::Client;
use eddy_sdk::rest::{JobDetail, JobState, TaskState};
use eddy_tests::Cluster;
use eddy_tests::windowed_job::{Job, check_exactly_once};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tracing::info;

/// Rows the source generates in total, and how fast: long enough for a
/// failover and a few checkpoints after it, short enough for the test to
/// stay well under a minute.
const ROWS: i64 = 75_000;
const RATE: u32 = 2_500;
/// Bound on every wait (against hangs; no duration is asserted).
const WAIT: Duration = Duration::from_secs(60);
/// What the TaskManager logs when it starts a subtask.
const DEPLOY_LINE: &str = "subtask running";

/// A cluster running the job.
struct Running {
    cluster: Cluster,
    job: String,
    out: PathBuf,
}

/// What must not change across a failover.
#[derive(Debug)]
struct Before {
    attempt: u32,
    /// (vertex, subtask) -> (attempt, taskmanager).
    subtasks: BTreeMap<(u32, u32), (u32, String)>,
    /// Subtasks each TaskManager has started so far (its log lines).
    deploys: Vec<usize>,
    /// The newest completed checkpoint.
    checkpoint: u64,
}

fn subtasks(job: &JobDetail) -> BTreeMap<(u32, u32), (u32, String)> {
    job.vertices
        .iter()
        .flat_map(|v| {
            v.subtasks
                .iter()
                .map(move |s| ((v.id, s.index), (s.attempt, s.taskmanager.clone())))
        })
        .collect()
}

fn all_running(job: &JobDetail) -> bool {
    job.vertices
        .iter()
        .flat_map(|v| &v.subtasks)
        .all(|s| s.state == TaskState::Running)
}

fn deploys(cluster: &Cluster) -> Vec<usize> {
    cluster
        .tms
        .iter()
        .map(|tm| tm.log().matches(DEPLOY_LINE).count())
        .collect()
}

/// The newest completed checkpoint in the replicated catalog.
async fn newest_checkpoint(client: &Client, job: &str) -> anyhow::Result<Option<u64>> {
    let stats = client.checkpoints(job).await?;
    Ok(stats
        .retained
        .iter()
        .filter(|c| !c.is_savepoint)
        .map(|c| c.id)
        .max())
}

/// A check that may meet a node still settling (just resumed, restarted,
/// or between leaders): an error counts as "not yet".
fn not_yet_on_error(r: anyhow::Result<bool>) -> anyhow::Result<bool> {
    Ok(r.unwrap_or(false))
}

/// The sum of the samples of `metric` at `url` (Prometheus text).
async fn metric(url: &str, metric: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// JobManager `jms[i]`'s current Raft term.
async fn term(cluster: &Cluster, i: usize) -> anyhow::Result<u64> {
    let url = format!("{}/metrics", cluster.jms[i].rest_url());
    Ok(metric(&url, "eddy_jobmanager_raft_term").await? as u64)
}

/// Commands the TaskManagers refused for carrying an older leader term.
async fn stale_refusals(cluster: &Cluster) -> anyhow::Result<u64> {
    let mut total = 0.0;
    for tm in &cluster.tms {
        let url = format!("http://{}/metrics", tm.ready_str("metrics_addr"));
        total += metric(&url, "eddy_taskmanager_stale_leader_commands_total").await?;
    }
    Ok(total as u64)
}

/// Starts the group and the job, and waits until the leader sees every
/// subtask RUNNING and a checkpoint completed.
async fn start_job(name: &str) -> anyhow::Result<Running> {
    let cluster = Cluster::builder()
        .jobmanagers(3)
        .taskmanagers(2)
        .slots(1)
        .heartbeat_timeout("10s")
        .start()
        .await?;
    let out = cluster.dir().join("out");
    let storage = cluster.dir().join("checkpoints");
    let spec = Job {
        name,
        rows: ROWS,
        rows_per_second: RATE,
        parallelism: 2,
        backend: "memory",
        interval: "500ms",
        out: &out,
        storage: &storage,
    }
    .spec();
    let job = cluster.client().submit(&spec).await?.job_id;
    cluster
        .wait_for_job_state(&job, JobState::Running, WAIT)
        .await?;
    let leader = cluster.wait_for_leader(None).await?;
    let client = cluster.client_of(leader);
    cluster
        .wait_until(WAIT, "every subtask RUNNING and a checkpoint", || {
            let (client, job) = (client.clone(), job.clone());
            async move {
                let detail = client.job(&job).await?;
                anyhow::Ok(
                    all_running(&detail) && newest_checkpoint(&client, &job).await?.is_some(),
                )
            }
        })
        .await?;
    Ok(Running { cluster, job, out })
}

async fn before(cluster: &Cluster, leader: usize, job: &str) -> anyhow::Result<Before> {
    let client = cluster.client_of(leader);
    let detail = client.job(job).await?;
    anyhow::ensure!(all_running(&detail), "not every subtask runs: {detail:?}");
    Ok(Before {
        attempt: detail.attempt,
        subtasks: subtasks(&detail),
        deploys: deploys(cluster),
        checkpoint: newest_checkpoint(&client, job).await?.unwrap_or(0),
    })
}

/// Waits until the TaskManagers reattached to `leader` (it sees every
/// subtask RUNNING) and it completed a checkpoint newer than `since`, then
/// checks that nothing was redeployed. Returns that checkpoint.
async fn untouched(
    cluster: &Cluster,
    leader: usize,
    job: &str,
    before: &Before,
    since: u64,
) -> anyhow::Result<u64> {
    let client = cluster.client_of(leader);
    cluster
        .wait_until(WAIT, "the tasks reattached and a newer checkpoint", || {
            let (client, job) = (client.clone(), job.to_string());
            async move {
                not_yet_on_error(
                    async {
                        let detail = client.job(&job).await?;
                        let newest = newest_checkpoint(&client, &job).await?.unwrap_or(0);
                        let led = client.checkpoints(&job).await?.counts.completed > 0;
                        anyhow::Ok(all_running(&detail) && newest > since && led)
                    }
                    .await,
                )
            }
        })
        .await?;
    let detail = client.job(job).await?;
    assert_eq!(detail.state, JobState::Running);
    assert_eq!(detail.attempt, before.attempt, "the job was not restarted");
    assert_eq!(
        subtasks(&detail),
        before.subtasks,
        "every subtask kept its attempt and TaskManager"
    );
    assert_eq!(
        deploys(cluster),
        before.deploys,
        "no TaskManager started a subtask again"
    );
    let exceptions = client.exceptions(job).await?;
    assert!(
        exceptions.exceptions.is_empty(),
        "no failure was recorded: {exceptions:?}"
    );
    Ok(newest_checkpoint(&client, job).await?.unwrap_or(0))
}

/// Waits for the job to finish, checks that no subtask was ever started
/// again, and that every window is in the output exactly once.
async fn finish(running: &Running, before: &Before) -> anyhow::Result<()> {
    let Running { cluster, job, out } = running;
    cluster
        .wait_for_job_state(job, JobState::Finished, Duration::from_secs(120))
        .await?;
    assert_eq!(deploys(cluster), before.deploys, "no subtask started again");
    check_exactly_once(out, ROWS)
}

/// SIGKILL the leader: a survivor leads, both survivors answer, the tasks
/// run on untouched and checkpoints resume; the killed JobManager restarts
/// on its data dir and catches up; the output is exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_restarts_no_task_and_checkpoints_resume() -> anyhow::Result<()> {
    let mut running = start_job("ha-kill").await?;
    let job = running.job.clone();
    let cluster = &mut running.cluster;
    let old = cluster.wait_for_leader(None).await?;
    let before = before(cluster, old, &job).await?;

    info!(
        leader = old + 1,
        checkpoint = before.checkpoint,
        "--- SIGKILL the leader"
    );
    cluster.jms[old].kill9()?;
    let new = cluster.wait_for_leader(Some(old)).await?;
    info!(leader = new + 1, "--- a new leader; every survivor answers");
    for i in (0..cluster.jms.len()).filter(|i| *i != old) {
        let detail = cluster.client_of(i).job(&job).await?;
        assert_eq!(detail.state, JobState::Running, "jobmanager-{}", i + 1);
        assert_eq!(detail.attempt, before.attempt, "jobmanager-{}", i + 1);
    }
    let resumed = untouched(cluster, new, &job, &before, before.checkpoint).await?;
    info!(checkpoint = resumed, "--- checkpoints resumed");

    info!("--- restart the killed JobManager on its data dir");
    cluster.jms[old].restart()?;
    let (back, leader) = (cluster.client_of(old), cluster.client_of(new));
    cluster
        .wait_until(WAIT, "the restarted JobManager caught up", || {
            let (back, leader, job) = (back.clone(), leader.clone(), job.clone());
            async move {
                not_yet_on_error(
                    async {
                        let target = newest_checkpoint(&leader, &job).await?.unwrap_or(0);
                        let there = newest_checkpoint(&back, &job).await?.unwrap_or(0);
                        anyhow::Ok(there >= target && target > resumed)
                    }
                    .await,
                )
            }
        })
        .await?;
    let detail = cluster.client_of(old).job(&job).await?;
    assert_eq!(subtasks(&detail), before.subtasks);

    finish(&running, &before).await
}

/// SIGSTOP the leader past the election timeout: a survivor leads and the
/// tasks run on untouched. SIGCONT: the old leader steps down into the new
/// term, and a command in its old term is refused by every TaskManager
/// (and counted); the job is unaffected and its output exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_steps_down_and_its_stale_commands_are_refused() -> anyhow::Result<()> {
    let mut running = start_job("ha-pause").await?;
    let job = running.job.clone();
    let cluster = &mut running.cluster;
    let old = cluster.wait_for_leader(None).await?;
    let old_term = term(cluster, old).await?;
    let before = before(cluster, old, &job).await?;

    info!(leader = old + 1, term = old_term, "--- SIGSTOP the leader");
    cluster.jms[old].pause()?;
    let new = cluster.wait_for_leader(Some(old)).await?;
    let resumed = untouched(cluster, new, &job, &before, before.checkpoint).await?;
    let new_term = term(cluster, new).await?;
    assert!(new_term > old_term, "terms {old_term} -> {new_term}");
    info!(
        leader = new + 1,
        term = new_term,
        checkpoint = resumed,
        "--- a new leader; checkpoints resumed"
    );

    info!("--- SIGCONT: the old leader comes back and steps down");
    cluster.jms[old].resume()?;
    let back = cluster.client_of(old);
    let url = cluster.jms[old].rest_url();
    cluster
        .wait_until(WAIT, "the resumed leader stepped down", || {
            let (back, url) = (back.clone(), url.clone());
            async move {
                not_yet_on_error(
                    async {
                        let follower = !back.overview().await?.is_leader;
                        let term =
                            metric(&format!("{url}/metrics"), "eddy_jobmanager_raft_term").await?;
                        anyhow::Ok(follower && term as u64 >= new_term)
                    }
                    .await,
                )
            }
        })
        .await?;
    let sent_by_it = stale_refusals(cluster).await?;
    info!(
        refused = sent_by_it,
        "--- commands in the old term are refused"
    );
    for tm in &cluster.tms {
        let addr = format!("http://{}", tm.ready_str("rpc_addr"));
        let channel = tonic::transport::Endpoint::from_shared(addr)?
            .connect()
            .await?;
        let mut client =
            eddy_proto::v1::task_manager_service_client::TaskManagerServiceClient::new(channel);
        let stale = client
            .trigger_checkpoint(eddy_proto::v1::TriggerCheckpointRequest {
                job_id: job.clone(),
                attempt: before.attempt,
                checkpoint_id: 1_000_000,
                timestamp_ms: 0,
                kind: eddy_proto::v1::BarrierKind::Checkpoint as i32,
                leader_term: old_term,
            })
            .await;
        let code = stale.as_ref().err().map(tonic::Status::code);
        assert_eq!(
            code,
            Some(tonic::Code::FailedPrecondition),
            "{}: {stale:?}",
            tm.name
        );
    }
    // At least the probes; the resumed leader's own RPCs may still land.
    let refused = stale_refusals(cluster).await?;
    assert!(
        refused >= sent_by_it + cluster.tms.len() as u64,
        "{refused} refusals counted, {sent_by_it} before the probes"
    );

    info!("--- the job is unaffected");
    let leader = cluster.wait_for_leader(None).await?;
    untouched(cluster, leader, &job, &before, resumed).await?;
    finish(&running, &before).await
}
