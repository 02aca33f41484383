//! Nexmark on a real cluster: the q12 spec of `bench/nexmark` at parallelism
//! 2 over two TaskManagers, checked against a reference computed here from
//! the same generator (`eddy_sdk::nexmark`), single-threaded.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use eddy_sdk::nexmark::{EventType, Generator, GeneratorConfig};
use eddy_sdk::rest::JobState;
use eddy_sdk::spec::{FileFormat, FileSinkSpec, NodeKind, parse_yaml_or_json};
use eddy_tests::Cluster;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use tracing::info;

const EVENTS: u64 = 200_000;
const WINDOW_MS: i64 = 10_000;

type Key = (i64, i64); // (bidder, window_start_ms)

/// Bids per (bidder, 10 s window) of events `0..EVENTS`.
fn reference_q12() -> HashMap<Key, i64> {
    let mut g = Generator::new(GeneratorConfig::default());
    let mut out = HashMap::new();
    for n in (0..EVENTS).filter(|n| EventType::of(*n) == EventType::Bid) {
        let b = g.bid(n);
        let start = b.date_time - b.date_time.rem_euclid(WINDOW_MS);
        *out.entry((b.bidder, start)).or_insert(0) += 1;
    }
    out
}

fn ts_ms(v: &serde_json::Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad timestamp {s:?}: {e}"))
        .timestamp_millis()
}

fn read_output(dir: &Path) -> HashMap<Key, i64> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let start = ts_ms(&v["window_start"]);
            assert_eq!(ts_ms(&v["window_end"]) - start, WINDOW_MS, "{line}");
            let key = (v["bidder"].as_i64().unwrap(), start);
            let prev = out.insert(key, v["bid_count"].as_i64().unwrap());
            assert!(prev.is_none(), "window {key:?} emitted twice");
        }
    }
    out
}

/// Nexmark q12 (bids per bidder in 10 s tumbling event-time windows) over
/// 200 000 events at parallelism 2 on two TaskManagers FINISHES, and every
/// (bidder, window) count equals the single-threaded reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q12_on_two_taskmanagers_matches_reference() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let cluster = Cluster::builder().taskmanagers(2).slots(1).start().await?;
    let out = cluster.dir().join("q12-out");

    info!("--- the bench spec, bounded, at parallelism 2, into files");
    let mut spec = parse_yaml_or_json(include_str!("../../bench/nexmark/q12.yaml"))?;
    spec.parallelism = 2;
    let NodeKind::Nexmark(source) = &mut spec.nodes[0].kind else {
        panic!("q12 starts with its nexmark source")
    };
    source.count = Some(EVENTS);
    let sink = spec.nodes.last_mut().unwrap();
    sink.kind = NodeKind::File(FileSinkSpec {
        path: out.to_string_lossy().into_owned(),
        format: FileFormat::Jsonl,
    });

    info!("--- submit and wait for the job to finish");
    let job = cluster.client().submit(&spec.to_json()).await?;
    let detail = cluster
        .wait_for_job_state(&job.job_id, JobState::Finished, Duration::from_secs(180))
        .await?;
    let tms: HashSet<_> = detail
        .vertices
        .iter()
        .flat_map(|v| v.subtasks.iter().map(|s| s.taskmanager.clone()))
        .collect();
    assert_eq!(tms.len(), 2, "subtasks on both TaskManagers: {tms:?}");
    assert_eq!(
        detail.vertices[0].records_out,
        EVENTS * 46 / 50,
        "the source emits every bid once"
    );

    info!("--- compare with the reference");
    let got = read_output(&out);
    let want = reference_q12();
    assert_eq!(got.len(), want.len(), "number of (bidder, window) rows");
    assert_eq!(
        want.keys().map(|k| k.1).collect::<HashSet<_>>().len(),
        2,
        "200 000 events span two 10 s windows"
    );
    for (key, n) in &want {
        assert_eq!(got.get(key), Some(n), "count of {key:?}");
    }
    Ok(())
}
