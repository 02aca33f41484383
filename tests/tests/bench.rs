//! `eddy bench --quick`, as CI runs it: the six Nexmark queries of
//! `bench/nexmark` at parallelism 2 on a local cluster of real processes (one
//! JobManager, two TaskManagers), each result checked row for row against the
//! single-threaded reference of `eddy_tests::nexmark_reference`.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use eddy_sdk::spec::parse_yaml_or_json;
use eddy_tests::nexmark_reference::{Query, compare, expected, read_output};
use std::path::Path;
use tracing::info;

/// Runs `eddy bench --quick` into `out`; its output is in the test's log.
fn run_bench(out: &Path) {
    let bin = eddy_tests::bin_dir();
    let status = std::process::Command::new(bin.join("eddy"))
        .args(["bench", "--quick", "--out"])
        .arg(out)
        .arg("--bin-dir")
        .arg(&bin)
        .status()
        .unwrap();
    assert!(status.success(), "eddy bench --quick exited with {status}");
}

/// Every query runs at parallelism 2 across both TaskManagers, and its sink's
/// rows equal the reference computed from the same generated events (a
/// multiset: order across subtasks is free). Nothing is dropped as late: each
/// source subtask's event time is monotone and operators wait for the slower
/// input's watermark. Every latency run delivered markers to its sink.
#[test]
fn bench_quick_results_equal_the_single_threaded_reference() {
    eddy_tests::init_logging();
    let dir = tempfile::tempdir().unwrap();
    run_bench(dir.path());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), Query::ALL.len(), "one run per query");
    for run in runs {
        let name = run["query"].as_str().unwrap();
        assert_eq!(run["parallelism"], 2, "{name}");
        let spec = parse_yaml_or_json(&run["spec"].to_string()).unwrap();
        let want = expected(&spec).unwrap();
        assert!(!want.is_empty(), "{name}: the reference has rows");
        let got = read_output(Path::new(run["output_dir"].as_str().unwrap())).unwrap();
        info!("{name}: comparing {} rows with the reference", want.len());
        if let Err(diff) = compare(name, got, want) {
            panic!("{diff}");
        }
        assert_eq!(run["late_records_dropped"], 0, "{name}: late records");
        let rss = run["peak_rss_bytes"].as_array().unwrap();
        assert_eq!(rss.len(), 2, "{name}: a peak RSS per TaskManager");
        if !matches!(name, "q0" | "q1" | "q2") {
            // The keyed queries shuffle between the two TaskManagers.
            assert!(
                run["bytes_between_taskmanagers"].as_u64().unwrap() > 0,
                "{name}: no bytes crossed TaskManagers"
            );
        }
    }
    for l in report["latency"].as_array().unwrap() {
        assert!(l["samples"].as_u64().unwrap() > 0, "{l}");
        assert!(l["p99_ms"].as_f64().unwrap() >= l["p50_ms"].as_f64().unwrap());
    }
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    let rows = md
        .lines()
        .filter(|l| l.starts_with("| q") && !l.starts_with("| query"));
    assert_eq!(rows.count(), 6, "one table row per query");
}
