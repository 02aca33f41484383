//! Exactly-once under failures: a keyed window job checkpoints into local
//! object storage while TaskManagers are SIGKILLed; every window of every key
//! must be in the committed output exactly once, with the count and sum an
//! uninterrupted run gives. Also: a damaged checkpoint is detected and the job
//! falls back to the one before.

use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use eddy_tests::windowed_job::{Job, check_exactly_once, committed, exceptions, expected};
use std::path::Path;
use std::time::Duration;

/// Rows the source generates in total.
const ROWS: i64 = 240_000;

fn spec(out: &Path, storage: &Path, backend: &str, rows_per_second: u32) -> String {
    Job {
        name: &format!("exactly-once-{backend}"),
        rows: ROWS,
        rows_per_second,
        parallelism: 2,
        backend,
        interval: "500ms",
        out,
        storage,
    }
    .spec()
}

/// A small deterministic generator for kill times (seed printed on failure).
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

async fn chaos(backend: &str) -> anyhow::Result<()> {
    let mut cluster = Cluster::builder()
        .taskmanagers(3)
        .slots(2)
        .heartbeat_timeout("2s")
        .start()
        .await?;
    let out = cluster.dir().join("out");
    let storage = cluster.dir().join("checkpoints");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}");
    let mut rng = Rng(seed);
    let job = cluster
        .client()
        .submit(&spec(&out, &storage, backend, 12_000))
        .await?
        .job_id;
    cluster
        .wait_for_job_state(&job, JobState::Running, Duration::from_secs(60))
        .await?;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_500 + rng.next(3_000))).await;
        // A TaskManager running some of the job's subtasks (after a
        // restart the job may sit on any of them).
        let detail = cluster.client().job(&job).await?;
        let hosts: Vec<usize> = cluster
            .tms
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let name = format!("taskmanager-{i}");
                detail
                    .vertices
                    .iter()
                    .any(|v| v.subtasks.iter().any(|s| s.taskmanager == name))
            })
            .map(|(i, _)| i)
            .collect();
        let victim = if hosts.is_empty() {
            rng.next(cluster.tms.len() as u64) as usize
        } else {
            hosts[rng.next(hosts.len() as u64) as usize]
        };
        eprintln!("round {round}: SIGKILL taskmanager {victim}");
        cluster.tms[victim].kill9()?;
        tokio::time::sleep(Duration::from_millis(500 + rng.next(1_500))).await;
        // The spare comes back, so the cluster keeps a free TaskManager.
        cluster.tms[victim].restart()?;
    }
    let state = cluster
        .wait_for_job_state(&job, JobState::Finished, Duration::from_secs(240))
        .await;
    if let Err(e) = state {
        anyhow::bail!("{e}\nlogs:\n{}", cluster.log_tails(40));
    }
    let detail = cluster.client().job(&job).await?;
    eprintln!("job finished after {} restarts", detail.attempt);
    // The test is about restores: at least one restart must have resumed
    // from a checkpoint rather than from the beginning.
    let restored = restores(&cluster, &job).await?;
    anyhow::ensure!(
        detail.attempt >= 1 && !restored.is_empty(),
        "seed {seed}: no restart restored a checkpoint (attempt {}, restores {restored:?})",
        detail.attempt
    );
    check_exactly_once(&out, ROWS).map_err(|e| anyhow::anyhow!("seed {seed}: {e}"))
}

/// The checkpoints the job's restarts restored from, oldest first.
async fn restores(cluster: &Cluster, job: &str) -> anyhow::Result<Vec<u64>> {
    let exceptions = exceptions(&cluster.rest_url(), job).await?;
    let mut ids: Vec<u64> = exceptions["exceptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["restore_checkpoint"].as_u64())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

#[tokio::test]
async fn taskmanagers_killed_repeatedly_memory_backend_counts_every_record_once()
-> anyhow::Result<()> {
    chaos("memory").await
}

#[tokio::test]
async fn taskmanagers_killed_repeatedly_rocksdb_backend_counts_every_record_once()
-> anyhow::Result<()> {
    chaos("rocksdb").await
}

/// The newest checkpoint the JobManager committed (its catalog, not the
/// files: a `_metadata` written for a checkpoint whose commit did not happen
/// is not a restore point), and its directory.
async fn newest_completed(
    cluster: &Cluster,
    storage: &Path,
    job: &str,
) -> anyhow::Result<(u64, std::path::PathBuf)> {
    let stats = cluster.client().checkpoints(job).await?;
    let id = stats
        .retained
        .iter()
        .filter(|c| !c.is_savepoint)
        .map(|c| c.id)
        .max()
        .ok_or_else(|| anyhow::anyhow!("no completed checkpoint in {stats:?}"))?;
    Ok((id, storage.join(job).join(format!("chk-{id}"))))
}

/// Flips one byte in the middle of every snapshot file of node `gen` in
/// `chk` (manifests stay intact: the data files are what is damaged).
fn corrupt(chk: &Path) -> anyhow::Result<usize> {
    let mut damaged = 0;
    for subtask in std::fs::read_dir(chk.join("gen"))? {
        for file in std::fs::read_dir(subtask?.path())? {
            let path = file?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('_'))
            {
                continue;
            }
            let mut bytes = std::fs::read(&path)?;
            if bytes.is_empty() {
                continue;
            }
            let i = bytes.len() / 2;
            bytes[i] ^= 0xff;
            std::fs::write(&path, bytes)?;
            damaged += 1;
        }
    }
    Ok(damaged)
}

#[tokio::test]
async fn damaged_checkpoint_is_detected_and_the_job_falls_back_to_the_previous_one()
-> anyhow::Result<()> {
    let mut cluster = Cluster::builder()
        .taskmanagers(3)
        .slots(2)
        .heartbeat_timeout("2s")
        .start()
        .await?;
    let out = cluster.dir().join("out");
    let storage = cluster.dir().join("checkpoints");
    let text = spec(&out, &storage, "memory", 12_000)
        .replace("initial_backoff: 200ms", "initial_backoff: 3s")
        .replace("max_backoff: 2s", "max_backoff: 6s");
    let job = cluster.client().submit(&text).await?.job_id;
    cluster
        .wait_for_job_state(&job, JobState::Running, Duration::from_secs(60))
        .await?;
    // At least two completed checkpoints: one to damage, one to fall back to.
    cluster
        .wait_until(Duration::from_secs(60), "two completed checkpoints", || {
            let storage = storage.clone();
            let job = job.clone();
            async move {
                Ok(std::fs::read_dir(storage.join(&job))
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .filter(|e| e.path().join("_metadata").exists())
                            .count()
                    })
                    .unwrap_or(0)
                    >= 2)
            }
        })
        .await?;
    // Two of the three TaskManagers hold at least one of the four subtasks.
    cluster.tms[0].kill9()?;
    cluster.tms[1].kill9()?;
    // A checkpoint acknowledged just before the kill may still commit until
    // the JobManager sees the loss: then it aborts whatever is pending and
    // waits out the restart backoff (3 s) before restoring.
    cluster
        .wait_for_job_state(&job, JobState::Restarting, Duration::from_secs(60))
        .await?;
    let (damaged_id, chk) = newest_completed(&cluster, &storage, &job).await?;
    anyhow::ensure!(corrupt(&chk)? > 0, "nothing to damage in {}", chk.display());
    cluster.tms[0].restart()?;
    cluster.tms[1].restart()?;
    cluster
        .wait_for_job_state(&job, JobState::Finished, Duration::from_secs(240))
        .await?;
    let exceptions = exceptions(&cluster.rest_url(), &job).await?;
    let recorded = exceptions["exceptions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["damaged_checkpoint"].as_u64() == Some(damaged_id));
    anyhow::ensure!(
        recorded,
        "no exception names damaged checkpoint {damaged_id}: {exceptions:#}"
    );
    // Falling back re-emits what the damaged checkpoint's successors
    // committed (as in Flink), but nothing is lost.
    let got = committed(&out)?;
    let missing: Vec<_> = expected(ROWS)
        .into_keys()
        .filter(|k| !got.contains_key(k))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "windows lost: {:?}",
        &missing[..missing.len().min(10)]
    );
    Ok(())
}
