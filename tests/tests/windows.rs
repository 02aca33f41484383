//! Window operators across processes: a sliding-window count feeding `top_n`
//! (the shape of Nexmark q5) at parallelism 2 on two TaskManagers, so both
//! the window and the top_n receive rows and watermarks over hash exchanges.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use tracing::info;

const LONG: Duration = Duration::from_secs(180);
const COUNT: i64 = 200_000;
const SIZE_MS: i64 = 2_000;
const SLIDE_MS: i64 = 500;
const BASE: &str = "2026-01-01T00:00:00Z";

/// How far ahead the second datagen subtask's event time runs in the skewed
/// variant: it owns splits 64..128 of 128, so rows with `id % 128 >= 64`.
const SKEW_MS: i64 = 30_000;

/// The job; `skewed` puts the second source subtask [`SKEW_MS`] ahead and
/// turns on the window's watermark alignment with a 1 s drift.
fn spec(out: &Path, skewed: bool) -> String {
    let (ts, alignment) = if skewed {
        (
            format!(
                "CASE WHEN id % 128 >= 64 THEN ts + INTERVAL '{}' SECOND ELSE ts END AS ts",
                SKEW_MS / 1000
            ),
            "watermark_alignment: {max_drift: 1s},",
        )
    } else {
        ("ts".to_string(), "")
    };
    format!(
        r#"
name: hottest
parallelism: 2
max_parallelism: 128
nodes:
  - {{id: gen, kind: datagen, count: {COUNT}, fields: [
      {{name: id, type: int64, gen: sequence}},
      {{name: ts, type: timestamp_ms, gen: timestamp, start: "{BASE}", step: 1ms}}]}}
  - {{id: bids, kind: project, input: gen, exprs: ["(id * id + id / 7) % 11 AS auction", "{ts}"]}}
  - {{id: counts, kind: window, input: bids, key_by: [auction], {alignment}
     event_time: {{column: ts, max_out_of_orderness: 100ms}},
     window: {{type: sliding, size: {SIZE_MS}ms, slide: {SLIDE_MS}ms}},
     aggregates: [{{fn: count, as: n}}]}}
  - {{id: hottest, kind: top_n, input: counts, partition_by: [window_start, window_end],
     order_by: n, n: 1, event_time: {{column: window_end}}}}
  - {{id: out, kind: file, input: hottest, path: "{}", format: jsonl}}
"#,
        out.display()
    )
}

fn ts_ms(v: &serde_json::Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad timestamp {s:?}: {e}"))
        .timestamp_millis()
}

/// Per window start: the auctions with the most rows, and that count.
type Winners = BTreeMap<i64, (BTreeSet<i64>, i64)>;

fn reference(skewed: bool) -> Winners {
    let base = ts_ms(&serde_json::json!(BASE));
    let mut counts: BTreeMap<i64, BTreeMap<i64, i64>> = BTreeMap::new();
    for id in 0..COUNT {
        let auction = (id * id + id / 7) % 11;
        let skew = if skewed && id % 128 >= 64 { SKEW_MS } else { 0 };
        let ts = base + id + skew;
        let mut start = ts - ts.rem_euclid(SLIDE_MS);
        while start > ts - SIZE_MS {
            *counts.entry(start).or_default().entry(auction).or_default() += 1;
            start -= SLIDE_MS;
        }
    }
    counts
        .into_iter()
        .map(|(start, per_auction)| {
            let max = *per_auction.values().max().unwrap();
            let winners = per_auction
                .into_iter()
                .filter(|&(_, n)| n == max)
                .map(|(a, _)| a)
                .collect();
            (start, (winners, max))
        })
        .collect()
}

fn read_output(dir: &Path) -> Winners {
    let mut out: Winners = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let start = ts_ms(&v["window_start"]);
            assert_eq!(ts_ms(&v["window_end"]) - start, SIZE_MS, "{line}");
            let (auctions, n) = out.entry(start).or_default();
            let count = v["n"].as_i64().unwrap();
            assert!(*n == 0 || *n == count, "one count per window: {line}");
            *n = count;
            assert!(
                auctions.insert(v["auction"].as_i64().unwrap()),
                "auction emitted twice: {line}"
            );
        }
    }
    out
}

/// A bounded datagen -> sliding count -> top_n (n 1, with ties) -> file job
/// at parallelism 2 on two TaskManagers FINISHES, and every window's winners
/// (all auctions tied for the most rows) equal the single-threaded reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_count_then_top_n_on_two_taskmanagers_matches_reference() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let cluster = Cluster::builder().taskmanagers(2).slots(1).start().await?;
    run_and_compare(&cluster, false).await
}

/// With one source subtask 30 s of event time ahead of the other and the
/// window's `watermark_alignment: {max_drift: 1s}`, the window holds the
/// fast subtask back (its hold counter on `/metrics` moves), the job still
/// FINISHES (the slow input is always read, so nothing deadlocks) and the
/// results equal the reference: holding changes when rows arrive, not
/// which windows they count in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_alignment_holds_the_fast_source_and_keeps_results() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let cluster = Cluster::builder().taskmanagers(2).slots(1).start().await?;
    run_and_compare(&cluster, true).await?;
    info!("--- the windows counted their holds");
    let urls: Vec<String> = cluster
        .tms
        .iter()
        .map(|tm| format!("http://{}/metrics", tm.ready_str("metrics_addr")))
        .collect();
    // The counters reach `/metrics` at the TaskManagers' next sample.
    cluster
        .wait_until(LONG, "a watermark alignment hold on /metrics", || {
            let urls = urls.clone();
            async move {
                let mut holds = 0.0;
                for url in &urls {
                    holds += eddy_tests::ha::metric(
                        url,
                        "eddy_taskmanager_watermark_alignment_holds_total",
                    )
                    .await?;
                }
                Ok(holds >= 1.0)
            }
        })
        .await
}

async fn run_and_compare(cluster: &Cluster, skewed: bool) -> anyhow::Result<()> {
    let out = cluster.dir().join("hottest-out");
    info!(skewed, "--- submit the sliding count -> top_n job");
    let job = cluster.client().submit(&spec(&out, skewed)).await?;
    let detail = cluster
        .wait_for_job_state(&job.job_id, JobState::Finished, LONG)
        .await?;
    assert_eq!(detail.vertices.len(), 3, "source, window, top_n + sink");

    info!("--- compare every window's winners with the reference");
    let want = reference(skewed);
    let got = read_output(&out);
    assert!(
        want.values().any(|(w, _)| w.len() > 1),
        "the data should produce ties"
    );
    assert_eq!(got.len(), want.len(), "number of windows");
    for (start, w) in &want {
        assert_eq!(got.get(start), Some(w), "window starting at {start}");
    }
    Ok(())
}
