//! Exactly-once under failures: a keyed window job checkpoints into local
//! object storage while TaskManagers are SIGKILLed; every window of every key
//! must be in the committed output exactly once, with the count and sum an
//! uninterrupted run gives. Also: a damaged checkpoint is detected and the job
//! falls back to the one before.

use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Rows the source generates in total.
const ROWS: i64 = 240_000;
/// Keys: `seq % KEYS`.
const KEYS: i64 = 16;
/// Event time advances 1 ms per row; windows are 1 s.
const WINDOW_MS: i64 = 1_000;
const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn spec(out: &Path, storage: &Path, backend: &str, rows_per_second: u32) -> String {
    format!(
        r#"
name: exactly-once-{backend}
parallelism: 2
checkpoint:
  interval: 500ms
  timeout: 30s
  backend: {backend}
  storage: "{storage}"
  retained: 2
restart:
  initial_backoff: 200ms
  max_backoff: 2s
  max_failures_per_interval: 30
  interval: 10m
nodes:
  - id: gen
    kind: datagen
    count: {ROWS}
    rows_per_second: {rows_per_second}
    fields:
      - {{name: seq, type: int64, gen: sequence, start: 0}}
      - {{name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}}
  - {{id: keyed, kind: project, input: gen, exprs: ["seq", "ts", "seq % {KEYS} AS k"]}}
  - id: win
    kind: window
    input: keyed
    key_by: [k]
    event_time: {{column: ts, max_out_of_orderness: 0ms}}
    window: {{type: tumbling, size: 1s}}
    aggregates:
      - {{fn: count, as: n}}
      - {{fn: sum, column: seq, as: s}}
  - {{id: out, kind: file, input: win, path: "{out}", format: jsonl}}
"#,
        storage = storage.display(),
        out = out.display(),
    )
}

/// (window start ms, key) -> (count, sum of seq) of an uninterrupted run.
fn expected() -> BTreeMap<(i64, i64), (i64, i64)> {
    let mut m = BTreeMap::new();
    for seq in 0..ROWS {
        let ts = START_MS + seq;
        let start = ts - ts.rem_euclid(WINDOW_MS);
        let e = m.entry((start, seq % KEYS)).or_insert((0, 0));
        e.0 += 1;
        e.1 += seq;
    }
    m
}

fn ts_ms(v: &serde_json::Value) -> i64 {
    let s = v.as_str().expect("timestamps are RFC 3339 strings");
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("a valid timestamp")
        .timestamp_millis()
}

/// Every committed row of the sink, as (window start, key) -> every
/// (count, sum) seen for it (more than one means a duplicate).
/// `(window_start, key)` -> every `(count, sum)` committed for it.
type Committed = BTreeMap<(i64, i64), Vec<(i64, i64)>>;

fn committed(out: &Path) -> anyhow::Result<Committed> {
    let mut m = Committed::new();
    for entry in std::fs::read_dir(out)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        // Hidden files are in-progress or pending: not visible output.
        if name.starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let key = (ts_ms(&v["window_start"]), v["k"].as_i64().unwrap_or(-1));
            let val = (v["n"].as_i64().unwrap_or(-1), v["s"].as_i64().unwrap_or(-1));
            m.entry(key).or_default().push(val);
        }
    }
    Ok(m)
}

fn check_exactly_once(out: &Path) -> anyhow::Result<()> {
    let want = expected();
    let got = committed(out)?;
    let mut problems = Vec::new();
    for (key, values) in &got {
        match want.get(key) {
            None => problems.push(format!("unexpected window {key:?}: {values:?}")),
            Some(w) if values.len() > 1 => problems.push(format!(
                "window {key:?} committed {} times: {values:?} (want {w:?})",
                values.len()
            )),
            Some(w) if values[0] != *w => {
                problems.push(format!("window {key:?} is {:?}, want {w:?}", values[0]))
            }
            Some(_) => {}
        }
    }
    for key in want.keys() {
        if !got.contains_key(key) {
            problems.push(format!("window {key:?} is missing"));
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} of {} windows wrong; first: {:?}",
        problems.len(),
        want.len(),
        &problems[..problems.len().min(10)]
    );
    Ok(())
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
        let victim = rng.next(cluster.tms.len() as u64) as usize;
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
    check_exactly_once(&out).map_err(|e| anyhow::anyhow!("seed {seed}: {e}"))
}

/// The checkpoints the job's restarts restored from, oldest first.
async fn restores(cluster: &Cluster, job: &str) -> anyhow::Result<Vec<u64>> {
    let exceptions = exceptions(cluster, job).await?;
    let mut ids: Vec<u64> = exceptions["exceptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["restore_checkpoint"].as_u64())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

async fn exceptions(cluster: &Cluster, job: &str) -> anyhow::Result<serde_json::Value> {
    Ok(
        reqwest::get(format!("{}/v1/jobs/{job}/exceptions", cluster.rest_url()))
            .await?
            .error_for_status()?
            .json()
            .await?,
    )
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

/// The newest checkpoint directory of `job` that has its `_metadata`.
fn newest_completed(storage: &Path, job: &str) -> Option<(u64, std::path::PathBuf)> {
    std::fs::read_dir(storage.join(job))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n: u64 = name.strip_prefix("chk-")?.parse().ok()?;
            e.path().join("_metadata").exists().then(|| (n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
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
    let (damaged_id, chk) =
        newest_completed(&storage, &job).ok_or_else(|| anyhow::anyhow!("no checkpoint"))?;
    anyhow::ensure!(corrupt(&chk)? > 0, "nothing to damage in {}", chk.display());
    cluster.tms[0].restart()?;
    cluster.tms[1].restart()?;
    cluster
        .wait_for_job_state(&job, JobState::Finished, Duration::from_secs(240))
        .await?;
    let exceptions: serde_json::Value =
        reqwest::get(format!("{}/v1/jobs/{job}/exceptions", cluster.rest_url()))
            .await?
            .json()
            .await?;
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
    let missing: Vec<_> = expected()
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
