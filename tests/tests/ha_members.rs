//! The JobManager group changes while a job runs (issue 7): it grows
//! 1 -> 3 -> 5 and shrinks back to 3, as an operator does it over REST.
//!
//! The group starts as one JobManager that snapshots its state and purges
//! its log every few entries, so every JobManager added later can only
//! catch up from a snapshot. The shrink removes the two original members,
//! the leader among them: the TaskManagers, started knowing only the first
//! JobManager, must find the new leader among the members the leaders
//! announced. Throughout, the job keeps running with no task restarted or
//! redeployed, its checkpoints go on, and its output is exactly-once.

use eddy_sdk::client::Client;
use eddy_tests::Cluster;
use eddy_tests::ha::{before, finish, start_job, untouched, wait_settled};
use eddy_tests::members::voters;
use tracing::info;

const ROWS: i64 = 150_000;
const RATE: u32 = 2_500;
/// What a JobManager logs when it installs a snapshot sent by the leader.
const INSTALLED: &str = "installed a snapshot from the leader";

/// The index up to which `client`'s JobManager purged its log (0: none).
async fn purged(client: &Client) -> anyhow::Result<u64> {
    let status = client.cluster().await?;
    Ok(status
        .snapshot
        .and_then(|s| s.purged_index)
        .unwrap_or_default())
}

/// Adds `jms[i]` (started with `--join`) and checks that it caught up from
/// a snapshot covering the leader's purged log.
async fn grow(cluster: &mut Cluster, want_voters: &[u64]) -> anyhow::Result<()> {
    let leader = cluster.wait_for_leader(None).await?;
    let purged_before = purged(&cluster.client_of(leader)).await?;
    anyhow::ensure!(purged_before > 0, "the leader purged no log yet");
    let i = cluster.start_joining_jobmanager()?;
    info!(
        member = i + 1,
        purged = purged_before,
        "--- add a JobManager"
    );
    let status = cluster.add_member(i).await?;
    let added = cluster.client_of(i).cluster().await?;
    let snapshot = added
        .snapshot
        .as_ref()
        .map(|s| s.last_log_index)
        .unwrap_or_default();
    assert!(
        snapshot >= purged_before,
        "jobmanager-{}: snapshot at {snapshot}, the leader's log was purged up to {purged_before}",
        i + 1
    );
    assert!(
        cluster.jms[i].log().contains(INSTALLED),
        "jobmanager-{} did not install a snapshot",
        i + 1
    );
    if voters(&status) != want_voters {
        // The answer may predate the promotion on a forwarding follower.
        let client = cluster.client();
        let want = want_voters.to_vec();
        wait_settled(cluster, "the new voter in the membership", || {
            let (client, want) = (client.clone(), want.clone());
            async move { anyhow::Ok(voters(&client.cluster().await?) == want) }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_grows_to_five_and_shrinks_to_three_while_a_job_runs() -> anyhow::Result<()> {
    let builder = Cluster::builder()
        .jobmanagers(1)
        .taskmanagers(2)
        .slots(1)
        .heartbeat_timeout("10s")
        .jobmanager_env("EDDY_RAFT__SNAPSHOT_LOGS", "20")
        .jobmanager_env("EDDY_RAFT__KEEP_LOGS", "2");
    let mut running = start_job(builder, "ha-members", ROWS, RATE).await?;
    let job = running.job.clone();
    let cluster = &mut running.cluster;
    let first = cluster.client_of(0);
    wait_settled(cluster, "a snapshot and a purged log", || {
        let first = first.clone();
        async move { anyhow::Ok(purged(&first).await? > 0) }
    })
    .await?;
    let before = before(cluster, 0, &job).await?;

    info!("--- grow 1 -> 3");
    grow(cluster, &[1, 2]).await?;
    grow(cluster, &[1, 2, 3]).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let checkpoint = untouched(cluster, leader, &job, &before, before.checkpoint).await?;

    info!("--- grow 3 -> 5");
    grow(cluster, &[1, 2, 3, 4]).await?;
    grow(cluster, &[1, 2, 3, 4, 5]).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let checkpoint = untouched(cluster, leader, &job, &before, checkpoint).await?;

    info!("--- shrink 5 -> 3: remove the two first JobManagers, the leader among them");
    for i in [0, 1] {
        let status = cluster.remove_member(i).await?;
        info!(member = i + 1, voters = ?voters(&status), "removed");
        cluster.jms[i].kill9()?;
    }
    let leader = cluster.wait_for_leader(None).await?;
    assert!(leader >= 2, "jobmanager-{} leads", leader + 1);
    for i in 2..5 {
        let client = cluster.client_of(i);
        wait_settled(cluster, "every member sees the group of three", || {
            let client = client.clone();
            async move { anyhow::Ok(voters(&client.cluster().await?) == [3, 4, 5]) }
        })
        .await?;
    }
    // The TaskManagers were started knowing only jobmanager-1: they found
    // the new leader among the members announced to them.
    untouched(cluster, leader, &job, &before, checkpoint).await?;
    finish(&running, &before).await
}
