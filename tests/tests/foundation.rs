//! Foundation scenarios on a real cluster: separate JobManager and
//! TaskManager processes on loopback ports.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use eddy_sdk::ErrorCode;
use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use tracing::info;

const LONG: Duration = Duration::from_secs(180);

fn clicks_spec(out: &Path, count: u64) -> String {
    format!(
        r#"
name: clicks
parallelism: 2
nodes:
  - {{id: gen, kind: datagen, count: {count}, fields: [
      {{name: id, type: int64, gen: sequence, start: 0}},
      {{name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}}]}}
  - {{id: enrich, kind: project, input: gen,
     exprs: ["id", "ts", "id % 1000 AS user_id", "CAST(id % 100 AS DOUBLE) AS amount"]}}
  - {{id: big, kind: filter, input: enrich, predicate: "amount >= 50"}}
  - {{id: per_user, kind: window, input: big, key_by: [user_id],
     event_time: {{column: ts, max_out_of_orderness: 200ms}},
     window: {{type: tumbling, size: 1s}},
     aggregates: [{{fn: count, as: n}}, {{fn: sum, column: amount, as: total}}]}}
  - {{id: out, kind: file, input: per_user, path: "{}", format: jsonl}}
"#,
        out.display()
    )
}

/// Event time as ms since the epoch: the file sink writes RFC 3339 strings.
fn ts_ms(v: &serde_json::Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad timestamp {s:?}: {e}"))
        .timestamp_millis()
}

type WindowKey = (i64, i64); // (user_id, window_start_ms)

fn expected_clicks(count: u64) -> HashMap<WindowKey, (i64, f64)> {
    let base = ts_ms(&serde_json::json!("2026-01-01T00:00:00Z"));
    let mut out: HashMap<WindowKey, (i64, f64)> = HashMap::new();
    for id in 0..count as i64 {
        let amount = (id % 100) as f64;
        if amount < 50.0 {
            continue;
        }
        let ts = base + id;
        let start = ts - ts.rem_euclid(1000);
        let e = out.entry((id % 1000, start)).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    out
}

fn read_window_output(dir: &Path) -> HashMap<WindowKey, (i64, f64)> {
    let mut out = HashMap::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("no output dir {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
            let start = ts_ms(&v["window_start"]);
            let end = ts_ms(&v["window_end"]);
            assert_eq!(end - start, 1000, "window bounds in {line}");
            let key = (v["user_id"].as_i64().unwrap(), start);
            let prev = out.insert(
                key,
                (v["n"].as_i64().unwrap(), v["total"].as_f64().unwrap()),
            );
            assert!(prev.is_none(), "window {key:?} emitted twice");
        }
    }
    out
}

/// A bounded job of parallelism 2 over 2 TaskManagers (datagen -> project ->
/// filter -> keyed tumbling window -> file) FINISHES, and its output equals the
/// exactly computed answer: every window, every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_clicks_job_on_two_taskmanagers_matches_exact_answer() -> anyhow::Result<()> {
    let cluster = Cluster::builder().taskmanagers(2).slots(1).start().await?;
    let out = cluster.dir().join("clicks-out");
    let count = 1_000_000;
    info!("--- submit the clicks job");
    let job = cluster.client().submit(&clicks_spec(&out, count)).await?;
    let detail = cluster
        .wait_for_job_state(&job.job_id, JobState::Finished, LONG)
        .await?;

    info!("--- the two subtasks ran on two TaskManagers");
    let tms: HashSet<_> = detail
        .vertices
        .iter()
        .flat_map(|v| v.subtasks.iter().map(|s| s.taskmanager.clone()))
        .collect();
    assert_eq!(
        tms.len(),
        2,
        "subtasks should spread over both TaskManagers: {tms:?}"
    );
    assert!(detail.end_time.is_some());
    let source = &detail.vertices[0];
    assert_eq!(
        source.records_out,
        count / 2,
        "the filter keeps half of the rows"
    );

    info!("--- compare the output with the exact answer");
    let got = read_window_output(&out);
    let want = expected_clicks(count);
    assert_eq!(got.len(), want.len(), "number of (user, window) rows");
    for (key, (n, total)) in &want {
        let (gn, gt) = got
            .get(key)
            .unwrap_or_else(|| panic!("missing window {key:?}"));
        assert_eq!(gn, n, "count of {key:?}");
        assert!((gt - total).abs() < 1e-6, "sum of {key:?}: {gt} vs {total}");
    }
    Ok(())
}

/// Killing a TaskManager with SIGKILL marks it lost within the heartbeat
/// timeout, and its job FAILS with an infrastructure failure naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taskmanager_sigkill_marks_it_lost_and_fails_the_job() -> anyhow::Result<()> {
    let mut cluster = Cluster::builder()
        .taskmanagers(2)
        .slots(1)
        .heartbeat_timeout("3s")
        .start()
        .await?;
    let spec = r#"{"name": "endless", "parallelism": 2, "nodes": [
        {"id": "gen", "kind": "datagen", "rows_per_second": 10000,
         "fields": [{"name": "id", "type": "int64", "gen": "sequence"}]},
        {"id": "out", "kind": "blackhole", "input": "gen"}]}"#;
    let job = cluster.client().submit(spec).await?;
    cluster
        .wait_for_job_state(&job.job_id, JobState::Running, LONG)
        .await?;
    let victim = cluster.tms[1].name.clone();
    info!(%victim, "--- SIGKILL a TaskManager");
    cluster.tms[1].kill9()?;

    let client = cluster.client();
    cluster
        .wait_until(LONG, "the TaskManager is marked LOST", || {
            let client = client.clone();
            let victim = victim.clone();
            async move {
                let tms = client.taskmanagers().await?;
                Ok(tms
                    .taskmanagers
                    .iter()
                    .any(|t| t.id == victim && t.state == "LOST"))
            }
        })
        .await?;
    let detail = match cluster
        .wait_for_job_state(&job.job_id, JobState::Failed, LONG)
        .await
    {
        Ok(d) => d,
        Err(e) => return Err(e),
    };
    let failure = detail.failure.expect("a failed job says why");
    assert_eq!(failure.class, eddy_sdk::FailureClass::Infrastructure);
    assert!(
        failure.message.contains(&victim),
        "failure names the lost TaskManager: {}",
        failure.message
    );
    Ok(())
}

/// Killing and restarting the JobManager keeps the job list: the Raft log is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobmanager_restart_keeps_the_job_list() -> anyhow::Result<()> {
    let mut cluster = Cluster::builder().taskmanagers(1).slots(1).start().await?;
    let out = cluster.dir().join("small-out");
    let job = cluster
        .client()
        .submit(&clicks_spec(&out, 10_000).replace("parallelism: 2", "parallelism: 1"))
        .await?;
    cluster
        .wait_for_job_state(&job.job_id, JobState::Finished, LONG)
        .await?;
    let before = cluster.client().jobs().await?;

    info!("--- SIGKILL and restart the JobManager");
    cluster.jms[0].kill9()?;
    // Keep the same REST port so the client URL stays valid.
    cluster.jms[0].restart()?;
    let after = cluster.client().jobs().await?;
    assert_eq!(after.jobs.len(), before.jobs.len());
    let j = after
        .jobs
        .iter()
        .find(|j| j.id == job.job_id)
        .expect("the job survives the restart");
    assert_eq!(j.state, JobState::Finished);
    assert_eq!(j.name, "clicks");
    Ok(())
}

/// A deliberately slow sink backpressures its producers: the upstream vertex
/// reports backpressure, and the producer TaskManager's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sink_backpressures_producer_with_bounded_memory() -> anyhow::Result<()> {
    let cluster = Cluster::builder().taskmanagers(2).slots(1).start().await?;
    // Two fast sources, one sink that accepts 2000 rows/s: the rebalance edge
    // crosses TaskManagers for one of the sources.
    let spec = r#"{"name": "slow-sink", "parallelism": 2, "nodes": [
        {"id": "gen", "kind": "datagen",
         "fields": [{"name": "id", "type": "int64", "gen": "sequence"},
                    {"name": "pad", "type": "utf8", "gen": "sequence", "start": 1000000000000}]},
        {"id": "slow", "kind": "blackhole", "input": "gen", "parallelism": 1, "rows_per_second": 2000}]}"#;
    let client = cluster.client();
    let job = client.submit(spec).await?;
    cluster
        .wait_for_job_state(&job.job_id, JobState::Running, LONG)
        .await?;

    info!("--- wait until the source vertex reports backpressure");
    let job_id = job.job_id.clone();
    cluster
        .wait_until(LONG, "backpressure on the source vertex", || {
            let client = client.clone();
            let job_id = job_id.clone();
            async move {
                let d = client.job(&job_id).await?;
                Ok(d.vertices[0].backpressure > 0.5 && d.vertices[0].records_out > 0)
            }
        })
        .await?;

    info!("--- memory of the producer TaskManagers stays bounded while the sink lags");
    let rss = |tms: &eddy_sdk::rest::TaskManagerList| {
        tms.taskmanagers
            .iter()
            .map(|t| t.rss_bytes)
            .max()
            .unwrap_or(0)
    };
    let first = rss(&client.taskmanagers().await?);
    let sent_first = client.job(&job_id).await?.vertices[0].records_out;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = rss(&client.taskmanagers().await?);
    let detail = client.job(&job_id).await?;
    let sent_second = detail.vertices[0].records_out;
    info!(
        first,
        second, sent_first, sent_second, "rss and records out"
    );
    // An unbounded buffer would hold everything the fast sources made; with
    // credits, what the sources emit is tied to what the sink accepts.
    assert!(
        sent_second - sent_first < 200_000,
        "sources emitted {} rows in 5 s against a 2000 rows/s sink",
        sent_second - sent_first
    );
    assert!(
        second < 256 << 20,
        "producer TaskManager RSS {second} bytes"
    );
    assert!(
        second < first + (64 << 20),
        "RSS grew from {first} to {second} bytes"
    );
    assert!(
        detail.vertices[0].backpressure > 0.5,
        "source backpressure {}",
        detail.vertices[0].backpressure
    );
    Ok(())
}

/// Malformed specs get a 400 with a code and a message naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_specs_get_400_naming_the_node() -> anyhow::Result<()> {
    let cluster = Cluster::builder().taskmanagers(1).slots(2).start().await?;
    let client = cluster.client();
    let source = r#"{"id": "gen", "kind": "datagen", "count": 10, "fields": [{"name": "id", "type": "int64", "gen": "sequence"}]}"#;
    let cases: Vec<(&str, String, ErrorCode, Option<&str>)> = vec![
        (
            "unknown kind",
            format!(
                r#"{{"name": "x", "nodes": [{source}, {{"id": "t", "kind": "teleport", "input": "gen"}}]}}"#
            ),
            ErrorCode::InvalidSpec,
            Some("t"),
        ),
        (
            "missing input",
            format!(
                r#"{{"name": "x", "nodes": [{source}, {{"id": "p", "kind": "print", "input": "nowhere"}}]}}"#
            ),
            ErrorCode::InvalidSpec,
            Some("p"),
        ),
        (
            "cycle",
            format!(
                r#"{{"name": "x", "nodes": [{source}, {{"id": "a", "kind": "filter", "input": "b", "predicate": "true"}}, {{"id": "b", "kind": "filter", "input": "a", "predicate": "true"}}]}}"#
            ),
            ErrorCode::InvalidSpec,
            None,
        ),
        (
            "bad SQL",
            format!(
                r#"{{"name": "x", "nodes": [{source}, {{"id": "f", "kind": "filter", "input": "gen", "predicate": "id >>> 3 AND"}}]}}"#
            ),
            ErrorCode::InvalidSpec,
            Some("f"),
        ),
        (
            "unknown column",
            format!(
                r#"{{"name": "x", "nodes": [{source}, {{"id": "pr", "kind": "project", "input": "gen", "exprs": ["nope + 1 AS y"]}}]}}"#
            ),
            ErrorCode::InvalidSpec,
            Some("pr"),
        ),
        (
            "parallelism 0",
            format!(r#"{{"name": "x", "parallelism": 0, "nodes": [{source}]}}"#),
            ErrorCode::InvalidSpec,
            None,
        ),
        (
            "parallelism over slots",
            format!(r#"{{"name": "x", "parallelism": 3, "nodes": [{source}]}}"#),
            ErrorCode::InsufficientSlots,
            None,
        ),
        (
            "not JSON",
            "{\"name\": ".to_string(),
            ErrorCode::BadRequest,
            None,
        ),
    ];
    for (what, body, code, node) in cases {
        let err = match client.submit(&body).await {
            Err(eddy_sdk::client::Error::Api(e)) => e,
            other => panic!("{what}: expected an API error, got {other:?}"),
        };
        assert_eq!(err.code, code, "{what}: {err:?}");
        assert_eq!(code.http_status(), 400);
        assert!(!err.message.is_empty(), "{what}");
        if let Some(node) = node {
            assert_eq!(err.node.as_deref(), Some(node), "{what}: {err:?}");
        }
        if what == "cycle" {
            assert!(
                matches!(err.node.as_deref(), Some("a") | Some("b")),
                "cycle names a node: {err:?}"
            );
        }
    }
    // Nothing was created by the bad requests.
    assert!(client.jobs().await?.jobs.is_empty());
    Ok(())
}

/// A running job survives a JobManager SIGKILL and restart: the TaskManagers
/// keep processing, re-register with their running tasks, and the job stays
/// RUNNING on its first attempt with records still flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobmanager_restart_keeps_running_tasks_running() -> anyhow::Result<()> {
    let mut cluster = Cluster::builder().taskmanagers(2).slots(1).start().await?;
    let spec = r#"{"name": "endless", "parallelism": 2, "nodes": [
        {"id": "gen", "kind": "datagen", "rows_per_second": 20000,
         "fields": [{"name": "id", "type": "int64", "gen": "sequence"}]},
        {"id": "out", "kind": "blackhole", "input": "gen", "parallelism": 1}]}"#;
    let job = cluster.client().submit(spec).await?;
    cluster
        .wait_for_job_state(&job.job_id, JobState::Running, LONG)
        .await?;
    let before = cluster.client().job(&job.job_id).await?;

    info!("--- SIGKILL and restart the JobManager while the job runs");
    cluster.jms[0].kill9()?;
    cluster.jms[0].restart()?;
    cluster.wait_for_taskmanagers(2).await?;
    let client = cluster.client();
    let job_id = job.job_id.clone();
    let sink_in = |d: &eddy_sdk::rest::JobDetail| d.vertices[1].records_in;
    info!("--- the new JobManager hears of the running tasks, and their counts keep growing");
    let deadline = std::time::Instant::now() + LONG;
    let mut first_seen = None;
    loop {
        let d = client.job(&job_id).await?;
        assert!(
            !d.state.is_terminal(),
            "job ended after the JobManager restart: {d:?}"
        );
        let n = sink_in(&d);
        match first_seen {
            None if n > 0 => first_seen = Some(n),
            Some(first) if n > first => break,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "records stopped after the restart\n{}",
            cluster.log_tails(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        before.vertices[0].records_out <= client.job(&job.job_id).await?.vertices[0].records_out
    );
    let after = client.job(&job.job_id).await?;
    assert_eq!(after.attempt, 0, "no redeploy");
    for v in &after.vertices {
        for s in &v.subtasks {
            assert_eq!(s.attempt, 0, "subtask {}/{} was restarted", v.id, s.index);
            assert_eq!(s.state, eddy_sdk::rest::TaskState::Running);
        }
    }
    // The TaskManagers never restarted a task: each logged one deployment.
    for tm in &cluster.tms {
        let deploys = tm.log().matches("deployed subtasks").count();
        assert_eq!(
            deploys,
            1,
            "{} deployed {deploys} times:\n{}",
            tm.name,
            tm.log_tail(40)
        );
    }
    Ok(())
}
