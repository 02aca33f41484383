//! What the JobManager failover scenarios (`ha`, `ha_partition`,
//! `ha_chaos`) share: a three-JobManager group running the keyed window job
//! of [`crate::windowed_job`], and the checks that a failover restarted
//! nothing: every subtask keeps its attempt and TaskManager, no TaskManager
//! logs a deployment again, no failure is recorded, checkpoints resume, and
//! a deposed leader's term is refused by the TaskManagers.

use crate::windowed_job::{Job, check_exactly_once};
use crate::{Cluster, ClusterBuilder};
use eddy_sdk::client::Client;
use eddy_sdk::rest::{JobDetail, JobState, TaskState};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Bound on every wait (against hangs; no duration is asserted).
pub const WAIT: Duration = Duration::from_secs(60);
/// What the TaskManager logs when it starts a subtask.
pub const DEPLOY_LINE: &str = "subtask running";

/// Three JobManagers (one Raft group) and two TaskManagers of one slot; a
/// TaskManager is declared lost after 10 s without heartbeats, longer than
/// any failover takes.
pub fn group() -> ClusterBuilder {
    Cluster::builder()
        .jobmanagers(3)
        .taskmanagers(2)
        .slots(1)
        .heartbeat_timeout("10s")
}

/// A cluster running the job.
pub struct Running {
    pub cluster: Cluster,
    pub job: String,
    /// The file sink's directory.
    pub out: PathBuf,
    /// Rows the source generates in total.
    pub rows: i64,
}

/// What must not change across a failover.
#[derive(Debug)]
pub struct Before {
    pub attempt: u32,
    /// (vertex, subtask) -> (attempt, taskmanager).
    pub subtasks: BTreeMap<(u32, u32), (u32, String)>,
    /// Subtasks each TaskManager has started so far (its log lines).
    pub deploys: Vec<usize>,
    /// The newest completed checkpoint.
    pub checkpoint: u64,
}

pub fn subtasks(job: &JobDetail) -> BTreeMap<(u32, u32), (u32, String)> {
    job.vertices
        .iter()
        .flat_map(|v| {
            v.subtasks
                .iter()
                .map(move |s| ((v.id, s.index), (s.attempt, s.taskmanager.clone())))
        })
        .collect()
}

pub fn all_running(job: &JobDetail) -> bool {
    job.vertices
        .iter()
        .flat_map(|v| &v.subtasks)
        .all(|s| s.state == TaskState::Running)
}

/// Subtasks each TaskManager has started so far (its log lines).
pub fn deploys(cluster: &Cluster) -> Vec<usize> {
    cluster
        .tms
        .iter()
        .map(|tm| tm.log().matches(DEPLOY_LINE).count())
        .collect()
}

/// The newest completed checkpoint in the replicated catalog.
pub async fn newest_checkpoint(client: &Client, job: &str) -> anyhow::Result<Option<u64>> {
    let stats = client.checkpoints(job).await?;
    Ok(stats
        .retained
        .iter()
        .filter(|c| !c.is_savepoint)
        .map(|c| c.id)
        .max())
}

/// Waits until JobManager `jms[back]`, restarted on its data dir, holds the
/// newest checkpoint of `job` that `leader` holds, and that one is past
/// `after` (so checkpoints went on while it was away).
pub async fn wait_caught_up(
    cluster: &Cluster,
    back: usize,
    leader: &Client,
    job: &str,
    after: u64,
) -> anyhow::Result<()> {
    let back = cluster.client_of(back);
    wait_settled(cluster, "the restarted JobManager caught up", || {
        let (back, leader) = (back.clone(), leader.clone());
        async move {
            let target = newest_checkpoint(&leader, job).await?.unwrap_or(0);
            let there = newest_checkpoint(&back, job).await?.unwrap_or(0);
            anyhow::Ok(there >= target && target > after)
        }
    })
    .await
}

/// [`Cluster::wait_until`] (bounded by [`WAIT`]) for a check that may meet
/// a node still settling (just resumed, restarted, or between leaders): an
/// error counts as "not yet".
pub async fn wait_settled<F, Fut>(cluster: &Cluster, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    cluster
        .wait_until(WAIT, what, || {
            let outcome = check();
            async move { Ok(outcome.await.unwrap_or(false)) }
        })
        .await
}

/// The sum of the samples of `metric` at `url` (Prometheus text).
pub async fn metric(url: &str, metric: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    Ok(crate::metric_sum(&text, metric, &[]))
}

/// JobManager `jms[i]`'s current Raft term.
pub async fn term(cluster: &Cluster, i: usize) -> anyhow::Result<u64> {
    let url = format!("{}/metrics", cluster.jms[i].rest_url());
    Ok(metric(&url, "eddy_jobmanager_raft_term").await? as u64)
}

/// Commands the TaskManagers refused for carrying an older leader term.
pub async fn stale_refusals(cluster: &Cluster) -> anyhow::Result<u64> {
    let mut total = 0.0;
    for tm in &cluster.tms {
        let url = format!("http://{}/metrics", tm.ready_str("metrics_addr"));
        total += metric(&url, "eddy_taskmanager_stale_leader_commands_total").await?;
    }
    Ok(total as u64)
}

/// Starts the job of `rows` rows at `rate` rows/s on a cluster started
/// from `builder` (see [`group`]), checkpointing every 500 ms into the
/// exactly-once file sink, and waits until the leader sees every subtask
/// RUNNING and a checkpoint completed.
pub async fn start_job(
    builder: ClusterBuilder,
    name: &str,
    rows: i64,
    rate: u32,
) -> anyhow::Result<Running> {
    let cluster = builder.start().await?;
    let out = cluster.dir().join("out");
    let storage = cluster.dir().join("checkpoints");
    let spec = Job {
        name,
        rows,
        rows_per_second: rate,
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
    Ok(Running {
        cluster,
        job,
        out,
        rows,
    })
}

/// What `jms[leader]` says about the job now, to compare after a failover.
pub async fn before(cluster: &Cluster, leader: usize, job: &str) -> anyhow::Result<Before> {
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

/// Fails unless the job runs with every subtask in the attempt and on the
/// TaskManager it had `before`, no TaskManager started a subtask again and
/// no failure was recorded, as `client` sees it.
async fn assert_untouched(
    cluster: &Cluster,
    client: &Client,
    job: &str,
    before: &Before,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Waits until the TaskManagers reattached to `leader` (it sees every
/// subtask RUNNING) and it completed a checkpoint newer than `since`, then
/// checks that nothing was redeployed. Returns that checkpoint.
pub async fn untouched(
    cluster: &Cluster,
    leader: usize,
    job: &str,
    before: &Before,
    since: u64,
) -> anyhow::Result<u64> {
    let client = cluster.client_of(leader);
    wait_settled(
        cluster,
        "the tasks reattached and a newer checkpoint",
        || {
            let (client, job) = (client.clone(), job.to_string());
            async move {
                let detail = client.job(&job).await?;
                let newest = newest_checkpoint(&client, &job).await?.unwrap_or(0);
                let led = client.checkpoints(&job).await?.counts.completed > 0;
                anyhow::Ok(all_running(&detail) && newest > since && led)
            }
        },
    )
    .await?;
    assert_untouched(cluster, &client, job, before).await?;
    Ok(newest_checkpoint(&client, job).await?.unwrap_or(0))
}

/// Waits until `jms[i]` (a deposed leader back on the network) follows, in
/// a term at least `term`.
pub async fn wait_stepped_down(cluster: &Cluster, i: usize, term: u64) -> anyhow::Result<()> {
    let back = cluster.client_of(i);
    let url = cluster.jms[i].rest_url();
    wait_settled(cluster, "the old leader stepped down", || {
        let (back, url) = (back.clone(), url.clone());
        async move {
            let follower = !back.overview().await?.is_leader;
            let now = metric(&format!("{url}/metrics"), "eddy_jobmanager_raft_term").await?;
            anyhow::Ok(follower && now as u64 >= term)
        }
    })
    .await
}

/// Sends every TaskManager a checkpoint trigger in leader term `old_term`
/// (what a deposed leader would send) and fails unless each refuses it as
/// stale and counts the refusal.
pub async fn assert_stale_term_refused(
    cluster: &Cluster,
    job: &str,
    attempt: u32,
    old_term: u64,
) -> anyhow::Result<()> {
    let counted = stale_refusals(cluster).await?;
    for tm in &cluster.tms {
        let addr = format!("http://{}", tm.ready_str("rpc_addr"));
        let channel = tonic::transport::Endpoint::from_shared(addr)?
            .connect()
            .await?;
        let mut client =
            eddy_proto::v1::task_manager_service_client::TaskManagerServiceClient::new(channel);
        let stale = client
            .trigger_checkpoint(eddy_proto::v1::TriggerCheckpointRequest {
                job_id: job.to_string(),
                attempt,
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
    // At least the probes; the deposed leader's own RPCs may still land.
    let refused = stale_refusals(cluster).await?;
    assert!(
        refused >= counted + cluster.tms.len() as u64,
        "{refused} refusals counted, {counted} before the probes"
    );
    Ok(())
}

/// Waits for the job to finish, checks that no subtask was ever started
/// again, and that every window is in the output exactly once.
pub async fn finish(running: &Running, before: &Before) -> anyhow::Result<()> {
    let Running {
        cluster,
        job,
        out,
        rows,
    } = running;
    cluster
        .wait_for_job_state(job, JobState::Finished, Duration::from_secs(120))
        .await?;
    assert_eq!(deploys(cluster), before.deploys, "no subtask started again");
    check_exactly_once(out, *rows)
}
