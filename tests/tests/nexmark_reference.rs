//! The six Nexmark queries of `bench/nexmark` on a real cluster, each checked
//! row for row against `eddy_tests::nexmark_reference`: the bench specs at
//! parallelism 2 over two TaskManagers, bounded, with a file sink instead of
//! the blackhole.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use eddy_sdk::rest::JobState;
use eddy_sdk::spec::{FileFormat, FileSinkSpec, JobSpec, NodeKind, parse_yaml_or_json};
use eddy_tests::Cluster;
use eddy_tests::nexmark_reference::{Query, compare, expected, read_output};
use std::collections::HashSet;
use std::time::Duration;
use tracing::info;

/// Events per query: 30 s of event time at the default rate, so the windowed
/// queries fire many windows, some while the other source subtask lags.
const EVENTS: u64 = 300_000;

fn bench_spec(query: Query) -> JobSpec {
    let text = match query {
        Query::Q0 => include_str!("../../bench/nexmark/q0.yaml"),
        Query::Q1 => include_str!("../../bench/nexmark/q1.yaml"),
        Query::Q2 => include_str!("../../bench/nexmark/q2.yaml"),
        Query::Q5 => include_str!("../../bench/nexmark/q5.yaml"),
        Query::Q11 => include_str!("../../bench/nexmark/q11.yaml"),
        Query::Q12 => include_str!("../../bench/nexmark/q12.yaml"),
    };
    parse_yaml_or_json(text).unwrap()
}

/// Each of q0, q1, q2, q5, q11 and q12 over 300 000 events at parallelism 2
/// on two TaskManagers FINISHES, with subtasks on both, and its sink's rows
/// equal the single-threaded reference as a multiset. q11 runs at 1 000
/// events/s of event time, where bidders pause longer than the session gap
/// and so have several sessions (at the default rate none does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_queries_on_two_taskmanagers_match_reference() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let cluster = Cluster::builder().taskmanagers(2).slots(1).start().await?;
    for query in Query::ALL {
        info!("--- {query}: the bench spec, bounded, at parallelism 2, into files");
        let out = cluster.dir().join(format!("{query}-out"));
        let mut spec = bench_spec(query);
        spec.parallelism = 2;
        let NodeKind::Nexmark(source) = &mut spec.nodes[0].kind else {
            panic!("{query} starts with its nexmark source")
        };
        source.count = Some(EVENTS);
        if query == Query::Q11 {
            source.events_per_second = Some(1_000.0);
        }
        let sink = spec.nodes.last_mut().unwrap();
        sink.kind = NodeKind::File(FileSinkSpec {
            path: out.to_string_lossy().into_owned(),
            format: FileFormat::Jsonl,
        });
        let want = expected(&spec)?;
        assert!(!want.is_empty(), "{query}: the reference has rows");

        info!("--- {query}: submit and wait for the job to finish");
        let job = cluster.client().submit(&spec.to_json()).await?;
        let detail = cluster
            .wait_for_job_state(&job.job_id, JobState::Finished, Duration::from_secs(180))
            .await?;
        let tms: HashSet<_> = detail
            .vertices
            .iter()
            .flat_map(|v| v.subtasks.iter().map(|s| s.taskmanager.clone()))
            .collect();
        assert_eq!(tms.len(), 2, "{query}: subtasks on both TaskManagers");

        // Each source subtask's event time is monotone and every operator
        // waits for the slower input's watermark: nothing may be late.
        let late: u64 = detail
            .vertices
            .iter()
            .flat_map(|v| &v.subtasks)
            .map(|s| s.metrics.late_records_dropped)
            .sum();

        info!(
            "--- {query}: compare {} rows with the reference",
            want.len()
        );
        let got = read_output(&out)?;
        if let Err(diff) = compare(query.name(), got, want) {
            panic!("{diff}\n(late records dropped: {late})");
        }
        assert_eq!(late, 0, "{query}: late records dropped");
    }
    Ok(())
}
