//! The deploy path end to end inside one test process, without a JobManager:
//! real slots, real operators, real gRPC exchanges on 127.0.0.1:0.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic
use eddy_proto::v1 as pb;
use eddy_proto::v1::task_manager_service_client::TaskManagerServiceClient;
use eddy_taskmanager::config::{Config, Overrides};
use eddy_taskmanager::metrics::Metrics;
use eddy_taskmanager::node::{Node, Timeouts};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Tm {
    node: Arc<Node>,
    addr: String,
    stop: CancellationToken,
}

impl Drop for Tm {
    fn drop(&mut self) {
        self.node.shutdown.cancel();
        self.stop.cancel();
    }
}

async fn start_tm(id: &str, slots: u32) -> Tm {
    let overrides = Overrides {
        id: Some(id.into()),
        slots: Some(slots),
        ..Default::default()
    };
    let config = Config::load(None, &HashMap::new(), overrides).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (metrics, _registry) = Metrics::new();
    let timeouts = Timeouts {
        claim_wait: Duration::from_secs(10),
        ..Default::default()
    };
    let (node, _reports) = Node::new(Arc::new(config), addr.clone(), metrics, timeouts).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(eddy_taskmanager::serve_grpc(
        node.clone(),
        listener,
        stop.clone(),
    ));
    Tm { node, addr, stop }
}

fn spec_json(out: &Path, rows: u64) -> String {
    let yaml = format!(
        r#"
name: count-per-key
parallelism: 2
nodes:
  - {{id: gen, kind: datagen, count: {rows}, batch_size: 500, fields: [
      {{name: id, type: int64, gen: sequence}},
      {{name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}}]}}
  - {{id: keyed, kind: project, input: gen, exprs: ["id", "ts", "id % 10 AS k"]}}
  - {{id: per_key, kind: window, input: keyed, key_by: [k],
     event_time: {{column: ts, max_out_of_orderness: 100ms}},
     window: {{type: tumbling, size: 1s}}, aggregates: [{{fn: count, as: n}}]}}
  - {{id: out, kind: file, input: per_key, path: "{}"}}
"#,
        out.display()
    );
    eddy_sdk::spec::parse_yaml_or_json(&yaml).unwrap().to_json()
}

fn placement(vertex: u32, index: u32, tm: &Tm, slot: u32) -> pb::SubtaskPlacement {
    pb::SubtaskPlacement {
        vertex,
        index,
        tm_id: tm.node.tm_id.0.clone(),
        rpc_addr: tm.addr.clone(),
        slot,
    }
}

/// Waits until every subtask known to `tms` has ended; returns their statuses.
async fn wait_ended(tms: &[&Tm], expected: usize) -> Vec<pb::TaskStatus> {
    let terminal = [
        pb::TaskState::Finished,
        pb::TaskState::Failed,
        pb::TaskState::Canceled,
    ]
    .map(|s| s as i32);
    for _ in 0..600 {
        let all: Vec<pb::TaskStatus> = tms.iter().flat_map(|t| t.node.tasks.statuses()).collect();
        if all.len() == expected && all.iter().all(|s| terminal.contains(&s.state)) {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "subtasks did not end: {:?}",
        tms.iter()
            .flat_map(|t| t.node.tasks.statuses())
            .collect::<Vec<_>>()
    );
}

/// Sums the `n` column of every JSON line the file sink wrote.
fn counted(out: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(out).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            total += row["n"].as_u64().unwrap();
        }
    }
    total
}

fn assert_all_finished(statuses: &[pb::TaskStatus]) {
    for s in statuses {
        assert_eq!(s.state, pb::TaskState::Finished as i32, "{s:?}");
    }
}

/// datagen -> project -> (hash) window -> file, parallelism 2, all four
/// subtasks on one TaskManager: every generated row is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_two_vertex_job_on_one_taskmanager_counts_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let tm = start_tm("tm-a", 2).await;
    let all: Vec<_> = (0..2)
        .flat_map(|v| (0..2).map(move |i| (v, i)))
        .map(|(v, i)| placement(v, i, &tm, i))
        .collect();
    let req = pb::DeployTasksRequest {
        job_id: "job-1".into(),
        spec_json: spec_json(&out, 10_000),
        attempt: 0,
        placements: all.clone(),
        deploy: all,
        leader_term: 1,
        checkpointing: None,
        restore: None,
    };
    assert_eq!(tm.node.deploy(req).unwrap(), 4);
    let statuses = wait_ended(&[&tm], 4).await;
    assert_all_finished(&statuses);
    assert_eq!(counted(&out), 10_000);
    let sources_out: u64 = statuses
        .iter()
        .filter(|s| s.subtask.as_ref().unwrap().vertex == 0)
        .map(|s| s.metrics.as_ref().unwrap().records_out)
        .sum();
    assert_eq!(sources_out, 10_000);
}

/// The same job split over two TaskManagers (sources on one, windows on the
/// other), deployed through the gRPC service: every row crosses a remote
/// exchange and is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_over_two_taskmanagers_exchanges_remotely() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (a, b) = (start_tm("tm-a", 2).await, start_tm("tm-b", 2).await);
    let placements = vec![
        placement(0, 0, &a, 0),
        placement(0, 1, &a, 1),
        placement(1, 0, &b, 0),
        placement(1, 1, &b, 1),
    ];
    let spec = spec_json(&out, 20_000);
    // Deploy the producers first: they must wait for their consumers.
    for (tm, deploy) in [
        (&a, placements[..2].to_vec()),
        (&b, placements[2..].to_vec()),
    ] {
        let mut client = TaskManagerServiceClient::connect(format!("http://{}", tm.addr))
            .await
            .unwrap();
        let req = pb::DeployTasksRequest {
            job_id: "job-2".into(),
            spec_json: spec.clone(),
            attempt: 0,
            placements: placements.clone(),
            deploy,
            leader_term: 1,
            checkpointing: None,
            restore: None,
        };
        client.deploy_tasks(req).await.unwrap();
    }
    let statuses = wait_ended(&[&a, &b], 4).await;
    assert_all_finished(&statuses);
    assert_eq!(counted(&out), 20_000);
    let bytes_in: u64 = b
        .node
        .tasks
        .statuses()
        .iter()
        .map(|s| s.metrics.as_ref().unwrap().bytes_in)
        .sum();
    assert!(
        bytes_in > 0,
        "the windows received their input over the network"
    );
}

/// A request from an older leader is refused; a spec that does not compile
/// fails its subtasks with the reason instead of panicking.
#[tokio::test]
async fn deploy_stale_term_refused_and_bad_spec_fails_subtasks() {
    let tm = start_tm("tm-a", 1).await;
    let p = vec![placement(0, 0, &tm, 0)];
    let req = |term, spec: &str| pb::DeployTasksRequest {
        job_id: "job-3".into(),
        spec_json: spec.into(),
        attempt: 0,
        placements: p.clone(),
        deploy: p.clone(),
        leader_term: term,
        checkpointing: None,
        restore: None,
    };
    assert_eq!(tm.node.deploy(req(5, "{not json")).unwrap(), 0);
    let s = &tm.node.tasks.statuses()[0];
    assert_eq!(s.state, pb::TaskState::Failed as i32);
    assert_eq!(s.failure_class, "user_code");
    assert!(!s.failure_chain.is_empty());
    let mut client = TaskManagerServiceClient::connect(format!("http://{}", tm.addr))
        .await
        .unwrap();
    let err = client.deploy_tasks(req(4, "{}")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}

/// Cancel stops an unbounded job's subtasks, which report CANCELED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_job_stops_unbounded_subtasks() {
    let dir = tempfile::tempdir().unwrap();
    let tm = start_tm("tm-a", 1).await;
    let yaml = format!(
        "name: forever\nparallelism: 1\nnodes:\n  - {{id: gen, kind: datagen, fields: [{{name: id, type: int64, gen: sequence}}]}}\n  - {{id: out, kind: file, input: gen, path: \"{}\"}}\n",
        dir.path().join("out").display()
    );
    let spec = eddy_sdk::spec::parse_yaml_or_json(&yaml).unwrap().to_json();
    let p = vec![placement(0, 0, &tm, 0)];
    let req = pb::DeployTasksRequest {
        job_id: "job-4".into(),
        spec_json: spec,
        attempt: 0,
        placements: p.clone(),
        deploy: p,
        leader_term: 1,
        checkpointing: None,
        restore: None,
    };
    tm.node.deploy(req).unwrap();
    for _ in 0..200 {
        if tm.node.tasks.statuses()[0].state == pb::TaskState::Running as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tm.node
        .cancel_job(&eddy_sdk::ids::JobId("job-4".into()), 1)
        .unwrap();
    let statuses = wait_ended(&[&tm], 1).await;
    assert_eq!(
        statuses[0].state,
        pb::TaskState::Canceled as i32,
        "{statuses:?}"
    );
}
