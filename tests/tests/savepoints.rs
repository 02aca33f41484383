//! Savepoints: a keyed window job at parallelism 2 is stopped with a
//! savepoint; its checkpoints are deleted; the savepoint then restores the
//! job at parallelism 1 and, separately, at 4. Each resumed run's output,
//! together with what the stopped job committed, holds every window exactly
//! once with the values of an uninterrupted run.

use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use eddy_tests::windowed_job::{Job, check_exactly_once};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const ROWS: i64 = 120_000;

fn job<'a>(out: &'a Path, storage: &'a Path, parallelism: u32, rate: u32) -> Job<'a> {
    Job {
        name: "savepointed",
        rows: ROWS,
        rows_per_second: rate,
        parallelism,
        backend: "rocksdb",
        interval: "1s",
        out,
        storage,
    }
}

/// POSTs `body` to `path`, expecting 202 and a request id.
async fn start_operation(
    cluster: &Cluster,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<String> {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", cluster.rest_url()))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == 202,
        "{path}: {} {}",
        resp.status(),
        resp.text().await?
    );
    let v: serde_json::Value = resp.json().await?;
    v["request_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no request_id in {v}"))
}

/// Waits for savepoint operation `request` of `job`; returns its location.
async fn savepoint_location(cluster: &Cluster, job: &str, request: &str) -> anyhow::Result<String> {
    let url = format!("{}/v1/jobs/{job}/savepoints/{request}", cluster.rest_url());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v: serde_json::Value = reqwest::get(&url).await?.error_for_status()?.json().await?;
        match v["status"].as_str() {
            Some("COMPLETED") => {
                return v["location"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow::anyhow!("completed without a location: {v}"));
            }
            Some("FAILED") => anyhow::bail!("savepoint failed: {v}"),
            _ if std::time::Instant::now() > deadline => anyhow::bail!("savepoint still {v}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

#[tokio::test]
async fn stop_with_savepoint_then_restore_at_lower_and_higher_parallelism_is_exactly_once()
-> anyhow::Result<()> {
    let cluster = Cluster::builder().taskmanagers(2).slots(2).start().await?;
    let storage = cluster.dir().join("checkpoints");
    let savepoints = cluster.dir().join("savepoints");
    let out_low = cluster.dir().join("out-p1");
    let first = cluster
        .client()
        .submit(&job(&out_low, &storage, 2, 12_000).spec())
        .await?
        .job_id;
    cluster
        .wait_for_job_state(&first, JobState::Running, Duration::from_secs(60))
        .await?;
    // Let some windows commit, then stop in the middle of the input.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let request = start_operation(
        &cluster,
        &format!("/v1/jobs/{first}/stop"),
        json!({"savepoint": true, "target_directory": savepoints.display().to_string()}),
    )
    .await?;
    let location = savepoint_location(&cluster, &first, &request).await?;
    cluster
        .wait_for_job_state(&first, JobState::Finished, Duration::from_secs(60))
        .await?;
    let partial = eddy_tests::windowed_job::committed(&out_low)?;
    anyhow::ensure!(
        !partial.is_empty(),
        "the first run committed nothing before the stop"
    );
    anyhow::ensure!(
        partial.len() < eddy_tests::windowed_job::expected(ROWS).len(),
        "the first run finished before the stop"
    );
    // The savepoint is self-contained: the job's checkpoints may go.
    std::fs::remove_dir_all(storage.join(&first))?;
    let out_high = cluster.dir().join("out-p4");
    copy_dir(&out_low, &out_high)?;

    for (parallelism, out) in [(1, &out_low), (4, &out_high)] {
        let spec = job(out, &storage, parallelism, 50_000).spec();
        let resp = reqwest::Client::new()
            .post(reqwest::Url::parse_with_params(
                &format!("{}/v1/jobs", cluster.rest_url()),
                &[("restore_from", location.as_str())],
            )?)
            .header("content-type", "application/yaml")
            .body(spec)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "submit at p={parallelism}: {}",
            resp.text().await?
        );
        let id = resp.json::<serde_json::Value>().await?["job_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        cluster
            .wait_for_job_state(&id, JobState::Finished, Duration::from_secs(180))
            .await?;
        check_exactly_once(out, ROWS)
            .map_err(|e| anyhow::anyhow!("restored at parallelism {parallelism}: {e}"))?;
    }
    Ok(())
}
