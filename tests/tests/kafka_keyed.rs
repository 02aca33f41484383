//! A keyed event-time window job between two Kafka topics, exactly once,
//! against the patched tansu broker (memory engine), with the TaskManagers
//! running it SIGKILLed three times: every window result reaches a
//! `read_committed` consumer exactly once, and every restore resumed each
//! partition at the offset the restored checkpoint had snapshotted.

use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use eddy_tests::kafka::{Engine, KafkaBroker, produce, read_all};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::info;

const LONG: Duration = Duration::from_secs(90);
/// Input records: 60 chunks of 100, one chunk every 200 ms (~12 s).
const CHUNKS: i64 = 60;
const CHUNK: i64 = 100;
const ROWS: i64 = CHUNKS * CHUNK;
const INPUT_PARTITIONS: i32 = 4;
/// Keys `seq % KEYS` (not the partition: every key spans partitions).
const KEYS: i64 = 5;
/// Event time advances 10 ms per record: 100 records per 1 s window.
const STEP_MS: i64 = 10;
const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// A record this far after the last one, in every partition, moves the
/// watermark past every window of the real records.
const END_MS: i64 = START_MS + ROWS * STEP_MS + 60_000;

/// The JSON value of input record `seq`.
fn record(seq: i64) -> String {
    format!(
        r#"{{"seq": {seq}, "k": {}, "ts": {}}}"#,
        seq % KEYS,
        START_MS + seq * STEP_MS
    )
}

/// (window start ms, key) -> (count, sum of seq).
fn expected() -> BTreeMap<(i64, i64), (i64, i64)> {
    let mut m = BTreeMap::new();
    for seq in 0..ROWS {
        let ts = START_MS + seq * STEP_MS;
        let e = m
            .entry((ts - ts.rem_euclid(1_000), seq % KEYS))
            .or_insert((0, 0));
        e.0 += 1;
        e.1 += seq;
    }
    m
}

/// (window start ms, key) -> every (count, sum) read.
type Windows = BTreeMap<(i64, i64), Vec<(i64, i64)>>;

fn windows(values: &[String]) -> anyhow::Result<Windows> {
    let mut m = Windows::new();
    for v in values {
        let v: serde_json::Value = serde_json::from_str(v)?;
        let start = v["window_start"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no window_start in {v}"))?;
        let start = chrono::DateTime::parse_from_rfc3339(start)?.timestamp_millis();
        let field = |name: &str| {
            v[name]
                .as_i64()
                .ok_or_else(|| anyhow::anyhow!("no {name} in {v}"))
        };
        m.entry((start, field("k")?))
            .or_default()
            .push((field("n")?, field("s")?));
    }
    Ok(m)
}

/// The value of `name=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    // The last match: span fields, if any, come before the event's.
    let at = line.rfind(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()
}

/// (checkpoint, topic, partition, offset) of every log line with `message`.
fn offset_lines(log: &str, message: &str) -> Vec<(u64, String, i32, i64)> {
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            Some((
                field(l, "checkpoint_id")?.parse().ok()?,
                field(l, "topic")?.to_string(),
                field(l, "partition")?.parse().ok()?,
                field(l, "offset")?.parse().ok()?,
            ))
        })
        .collect()
}

/// Every offset the sources restored equals the one the restored checkpoint
/// snapshotted for that partition, every restart the job's exceptions
/// report restored all input partitions, and at least one restart did.
fn check_restored_offsets(cluster: &Cluster, exceptions: &serde_json::Value) -> anyhow::Result<()> {
    let logs: String = cluster.tms.iter().map(|n| n.log()).collect();
    let mut snapshotted: BTreeMap<(u64, String, i32), BTreeSet<i64>> = BTreeMap::new();
    for (cp, topic, partition, offset) in offset_lines(&logs, "kafka source snapshotted an offset")
    {
        snapshotted
            .entry((cp, topic, partition))
            .or_default()
            .insert(offset);
    }
    anyhow::ensure!(
        !snapshotted.is_empty(),
        "no snapshot offsets logged (debug level)"
    );
    let restored = offset_lines(&logs, "kafka source restored an offset");
    let reported: BTreeSet<u64> = exceptions["exceptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["restore_checkpoint"].as_u64())
        .collect();
    anyhow::ensure!(
        !reported.is_empty(),
        "no restart restored a checkpoint: {exceptions:#}"
    );
    let mut partitions: BTreeMap<u64, BTreeSet<i32>> = BTreeMap::new();
    for (cp, topic, partition, offset) in &restored {
        anyhow::ensure!(
            reported.contains(cp),
            "a source restored checkpoint {cp}, which no exception reports ({reported:?})"
        );
        let key = (*cp, topic.clone(), *partition);
        let at_snapshot = snapshotted.get(&key);
        anyhow::ensure!(
            at_snapshot == Some(&BTreeSet::from([*offset])),
            "{topic}/{partition} restored offset {offset} from checkpoint {cp}, which snapshotted {at_snapshot:?}"
        );
        partitions.entry(*cp).or_default().insert(*partition);
    }
    for cp in &reported {
        let got = partitions.get(cp).map_or(0, BTreeSet::len);
        anyhow::ensure!(
            got == INPUT_PARTITIONS as usize,
            "the restore of checkpoint {cp} restored {got} input partitions"
        );
    }
    info!(
        restores = reported.len(),
        offsets = restored.len(),
        "restored offsets match their checkpoints"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keyed_windows_exactly_once_with_taskmanagers_killed() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let Some(broker) = KafkaBroker::start(Engine::Memory)? else {
        return Ok(());
    };
    broker.create_topic("events", INPUT_PARTITIONS).await?;
    broker.create_topic("windows", 2).await?;
    let servers = broker.bootstrap();
    let mut cluster = Cluster::builder()
        .taskmanagers(3)
        .slots(2)
        .heartbeat_timeout("2s")
        .node_log("eddy_taskmanager::operators::kafka::source=debug")
        .start()
        .await?;
    let storage = cluster.dir().join("checkpoints");
    let spec = format!(
        r#"
name: keyed-windows
parallelism: 2
checkpoint: {{interval: 500ms, storage: "{storage}"}}
restart: {{initial_backoff: 200ms, max_backoff: 2s, max_failures_per_interval: 30, interval: 10m}}
nodes:
  - {{id: src, kind: kafka, bootstrap_servers: "{servers}", topics: [events], group_id: keyed,
     schema: [{{name: seq, type: int64}}, {{name: k, type: int64}}, {{name: ts, type: timestamp_ms}}],
     event_time: {{column: ts, max_out_of_orderness: 0ms}}}}
  - {{id: win, kind: window, input: src, key_by: [k], event_time: {{column: ts, max_out_of_orderness: 0ms}},
     window: {{type: tumbling, size: 1s}},
     aggregates: [{{fn: count, as: n}}, {{fn: sum, column: seq, as: s}}]}}
  - {{id: out, kind: kafka, input: win, bootstrap_servers: "{servers}", topic: windows,
     key: [k], delivery: exactly_once}}
"#,
        storage = storage.display()
    );
    let job = cluster.client().submit(&spec).await?.job_id;
    cluster
        .wait_for_job_state(&job, JobState::Running, LONG)
        .await?;
    let producer_servers = servers.clone();
    let producing = std::thread::spawn(move || -> anyhow::Result<()> {
        for chunk in 0..CHUNKS {
            let values: Vec<(i32, String)> = (chunk * CHUNK..(chunk + 1) * CHUNK)
                .map(|seq| ((seq % i64::from(INPUT_PARTITIONS)) as i32, record(seq)))
                .collect();
            let refs: Vec<(i32, &str)> = values.iter().map(|(p, v)| (*p, v.as_str())).collect();
            produce(&producer_servers, "events", &refs)?;
            std::thread::sleep(Duration::from_millis(200));
        }
        // Closes every real window: its own (key -1) never fires.
        let end = format!(r#"{{"seq": -1, "k": -1, "ts": {END_MS}}}"#);
        let ends: Vec<(i32, &str)> = (0..INPUT_PARTITIONS).map(|p| (p, end.as_str())).collect();
        produce(&producer_servers, "events", &ends)
    });
    eddy_tests::kafka::kill_job_taskmanagers(&mut cluster, &job, 3).await?;
    producing
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let want = expected();
    info!(windows = want.len(), "--- reading the output");
    let got = read_all(&servers, "windows", want.len(), Duration::from_secs(10)).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nbroker log:\n{}\nlogs:\n{}",
            broker.log_tail(),
            cluster.log_tails(40)
        )
    })?;
    let got = windows(&got)?;
    let mut problems = Vec::new();
    for (key, w) in &want {
        match got.get(key).map(Vec::as_slice) {
            None => problems.push(format!("window {key:?} is missing")),
            Some([v]) if v == w => {}
            Some(vs) => problems.push(format!("window {key:?} is {vs:?}, want once {w:?}")),
        }
    }
    for (key, vs) in &got {
        if !want.contains_key(key) {
            problems.push(format!("unexpected window {key:?}: {vs:?}"));
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} of {} windows wrong; first: {:?}\nbroker log:\n{}",
        problems.len(),
        want.len(),
        &problems[..problems.len().min(10)],
        broker.log_tail()
    );
    let detail = cluster.client().job(&job).await?;
    anyhow::ensure!(detail.attempt >= 1, "the job never restarted");
    let exceptions = eddy_tests::windowed_job::exceptions(&cluster.rest_url(), &job).await?;
    check_restored_offsets(&cluster, &exceptions)
}
